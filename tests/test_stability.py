"""The stability rule and the run-length (convergence) rule (servesim.scenarios.stability) on
queues whose answers are known: D/D/1 and M/M/1 (FIFO, one server) built with Lindley's
recursion, and one engine check that an overloaded replica is flagged and a lightly loaded one
is not."""
from __future__ import annotations

import math

import numpy as np
import pytest

from servesim.scenarios.stability import (
    ConvergenceRule,
    StabilityRule,
    converged,
    sectioned_percentile,
    stability_columns,
)


def fifo_queue(arrivals: np.ndarray, service: np.ndarray, initial_wait_s: float = 0.0) -> np.ndarray:
    """Finish times of a single FIFO server (Lindley: W_{n+1} = max(0, W_n + S_n - A_{n+1}),
    vectorised as C_n - min(0, min_{k<=n} C_k) with C the running sum of S_n - A_{n+1})."""
    gaps = np.diff(arrivals)
    c = np.concatenate(([initial_wait_s], initial_wait_s + np.cumsum(service[:-1] - gaps)))
    wait = c - np.minimum(np.minimum.accumulate(c), 0.0)
    return arrivals + wait + service


def mm1(n: int, lam: float, mu: float, rng: np.random.Generator, stationary: bool = False):
    arrivals = np.cumsum(rng.exponential(1 / lam, n))
    service = rng.exponential(1 / mu, n)
    w0 = 0.0
    if stationary and lam < mu:  # the first customer finds the stationary waiting time
        rho = lam / mu
        w0 = rng.exponential(1 / (mu - lam)) if rng.random() < rho else 0.0
    return arrivals, fifo_queue(arrivals, service, w0)


# ------------------------------------------------------------------------------- stability


def test_dd1_overload_shortfall_is_exact() -> None:
    lam, mu = 10.0, 8.0
    arrivals = np.arange(2000) / lam
    finish = fifo_queue(arrivals, np.full(2000, 1 / mu))
    s = stability_columns(arrivals, finish)
    assert s["rate_shortfall"] == pytest.approx(1 - mu / lam, abs=0.005)
    assert s["queue_growth"] == pytest.approx(1 - mu / lam, abs=0.005)
    assert s["achieved_rps"] == pytest.approx(mu, rel=0.01) and s["offered_rps"] == pytest.approx(lam, rel=0.01)
    assert not s["stable"] and s["stability_judged"]


def test_dd1_under_capacity_is_stable() -> None:
    arrivals = np.arange(2000) / 10.0
    s = stability_columns(arrivals, fifo_queue(arrivals, np.full(2000, 0.09)))
    assert s["stable"] and abs(s["rate_shortfall"]) < 0.005 and abs(s["queue_growth"]) < 0.005


@pytest.mark.parametrize("rho,stable", [(0.5, True), (0.8, True), (0.95, True), (1.2, False), (1.4, False)])
def test_mm1_stability_follows_rho(rho: float, stable: bool) -> None:
    """M/M/1 keeps up iff rho < 1; beyond, it achieves mu, i.e. falls short by 1 - 1/rho."""
    rng = np.random.default_rng(int(rho * 100))
    for _ in range(5):
        arrivals, finish = mm1(4000, rho, 1.0, rng)
        s = stability_columns(arrivals, finish)
        assert s["stable"] is stable, (rho, s)
        expected = max(0.0, 1 - 1 / rho)
        assert s["rate_shortfall"] == pytest.approx(expected, abs=0.05)


def test_unfinished_requests_count_as_not_served() -> None:
    arrivals = np.arange(400) / 10.0
    finish = arrivals + 0.05
    finish[200:] = np.nan  # the second half never finishes (rejected)
    assert not stability_columns(arrivals, finish)["stable"]


def test_too_few_requests_are_not_judged() -> None:
    arrivals = np.arange(40) / 10.0
    finish = fifo_queue(arrivals, np.full(40, 0.5))  # overloaded 5x
    s = stability_columns(arrivals, finish, StabilityRule(min_window_requests=50))
    assert s["stable"] and not s["stability_judged"]
    burst = stability_columns(np.zeros(100), np.linspace(1, 10, 100))
    assert burst["stable"] and not burst["stability_judged"]


def test_tolerance_is_validated() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        StabilityRule(tolerance=0)


# ------------------------------------------------------------------------------- run length


def _converge(rho: float, rule: ConvergenceRule, seed: int) -> tuple[int, float, bool]:
    """Double the M/M/1 run until the rule holds for the p99 sojourn time (the plan's loop)."""
    n = rule.min_requests
    while True:
        arrivals, finish = mm1(n, rho, 1.0, np.random.default_rng(seed))
        sojourn_ms = (finish - arrivals) * 1e3
        ok, widths, _ = converged({"e2el": sojourn_ms}, {"e2el": 99.0}, float(arrivals[-1] - arrivals[0]),
                                  float(np.max(finish - arrivals)), rule)
        if ok or n >= rule.max_requests:
            return n, float(np.percentile(sojourn_ms, 99)), ok
        n *= 2


RULE = ConvergenceRule(min_requests=500, max_requests=2_048_000, service_multiple=5)


@pytest.mark.parametrize("rho", [0.5, 0.7])
def test_converged_p99_matches_mm1_answer(rho: float) -> None:
    """M/M/1 sojourn time is exponential with rate mu - lambda: p99 = ln(100) / (mu - lambda).
    The run the rule stops at estimates it within twice the rule's half width (10%), every seed.
    (At rho 0.8 a tail percentile needs 10^5-10^6 requests: busy periods make it that noisy.)"""
    rule = RULE
    truth_ms = math.log(100) / (1 - rho) * 1e3
    for seed in range(4):
        n, p99, ok = _converge(rho, rule, seed)
        assert ok, (rho, seed, n)
        assert p99 == pytest.approx(truth_ms, rel=2 * rule.relative_half_width), (rho, seed, n)


def test_heavier_traffic_needs_longer_runs() -> None:
    light = np.median([_converge(0.5, RULE, s)[0] for s in range(4)])
    heavy = np.median([_converge(0.7, RULE, s)[0] for s in range(4)])
    assert heavy > light


def test_span_must_cover_the_longest_service_time() -> None:
    values = {"ttft": np.random.default_rng(0).exponential(100.0, 5000)}
    ok, _, lacking = converged(values, {"ttft": 99.0}, 100.0, 10.0, ConvergenceRule(service_multiple=20))
    assert not ok and "longest service" in lacking
    ok, _, _ = converged(values, {"ttft": 99.0}, 300.0, 10.0, ConvergenceRule(service_multiple=20))
    assert ok


def test_sectioned_interval_shrinks_like_one_over_root_n() -> None:
    rng = np.random.default_rng(1)
    halves = [np.mean([sectioned_percentile(rng.exponential(1.0, n), 90)[1] for _ in range(20)])
              for n in (2000, 32000)]
    assert halves[0] / halves[1] == pytest.approx(4.0, rel=0.3)
    est, half = sectioned_percentile(np.ones(5), 99)
    assert est == 1.0 and math.isinf(half)  # too few values to section


# --------------------------------------------------------------------------- the engine


def test_engine_overload_is_flagged_and_light_load_is_not() -> None:
    from servesim.scenarios.points import PointTask, run_point
    from servesim.scenarios.schema import Axis, Deployment, Scenario, Sweep, WorkloadSection
    sc = Scenario("s", Deployment(model="llama-3.1-8b"), WorkloadSection(kind="poisson", input_len=512,
                                                                          output_len=128, num_requests=600),
                  Sweep(Axis.RATE, (1.0,)))
    light, heavy = run_point(PointTask(sc, 2.0, 0)).row, run_point(PointTask(sc, 400.0, 0)).row
    assert light["stable"] and light["stability_judged"] and abs(light["rate_shortfall"]) < 0.05
    assert not heavy["stable"] and heavy["rate_shortfall"] > 0.3
    assert heavy["achieved_rps"] < heavy["offered_rps"]
