"""Coverage of the intervals servesim reports (servesim.sim.uncertainty), on synthetic cases whose
true value is known: the true value must lie inside the 95% interval in about 95% of seeded trials.

Tolerance: with T trials, the count of covering trials is Binomial(T, 0.95); its standard
deviation is sqrt(0.95 * 0.05 / T) = 1.09 percentage points at T = 400, so the observed coverage
must lie within 3 sd (91.7% .. 98.3%).  That band is wide enough that a correct interval fails
about 3 times in 1,000 (the trials are seeded, so the test is deterministic) and narrow enough
that a normal quantile in place of Student's t (89% coverage with 4 seeds) is caught.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from test_stability import mm1

from servesim.sim.profile import Profile, StepCoefficients
from servesim.sim.uncertainty import combine, perturb_profile, profile_rng, replicate_summary, t_interval

TRIALS = 400
LOW, HIGH = 0.95 - 3 * math.sqrt(0.95 * 0.05 / TRIALS), 0.95 + 3 * math.sqrt(0.95 * 0.05 / TRIALS)


def _mm1_replication(rng: np.random.Generator, n: int = 2000, rho: float = 0.6) -> tuple[float, float]:
    """(mean, p90) sojourn time of one M/M/1 run started in its stationary state."""
    arrivals, finish = mm1(n, rho, 1.0, rng, stationary=True)
    sojourn = finish - arrivals
    return float(sojourn.mean()), float(np.percentile(sojourn, 90))


def test_seed_interval_covers_the_mm1_truth() -> None:
    """Independent replications (seeds) of an M/M/1 queue: the t interval of the seed mean covers
    the true mean sojourn time 1/(mu - lambda) and the true p90, ln(10)/(mu - lambda)."""
    rho, seeds = 0.6, 4
    truth_mean, truth_p90 = 1 / (1 - rho), math.log(10) / (1 - rho)
    hits_mean = hits_p90 = 0
    for trial in range(TRIALS):
        reps = [_mm1_replication(np.random.default_rng([trial, s]), rho=rho) for s in range(seeds)]
        _, lo, hi = t_interval([r[0] for r in reps])
        hits_mean += lo <= truth_mean <= hi
        _, lo, hi = t_interval([r[1] for r in reps])
        hits_p90 += lo <= truth_p90 <= hi
    assert LOW <= hits_mean / TRIALS <= HIGH, hits_mean / TRIALS
    assert LOW <= hits_p90 / TRIALS <= HIGH, hits_p90 / TRIALS


def test_combined_interval_covers_truth_under_profile_uncertainty() -> None:
    """A synthetic simulator y = g(theta) + workload noise, with theta known only through a fit
    theta_hat ~ N(theta_true, se): seeds run at theta_hat, the bootstrap draws theta* ~ N(theta_hat, se)
    at one seed.  The combined interval must cover g(theta_true) (profile and workload both matter:
    se and the noise are of the same size)."""
    theta_true, se, noise, seeds, draws = 2.0, 0.1, 0.2, 4, 4

    def g(theta: float) -> float:
        return 10.0 + 3.0 * theta

    hits = 0
    for trial in range(TRIALS):
        rng = np.random.default_rng([trial, 99])
        theta_hat = theta_true + se * rng.standard_normal()
        seed_values = [g(theta_hat) + noise * rng.standard_normal() for _ in range(seeds)]
        workload_at_seed0 = noise * rng.standard_normal()
        draw_values = [g(theta_hat + se * rng.standard_normal()) + workload_at_seed0 for _ in range(draws)]
        iv = combine(seed_values, draw_values)
        hits += iv.lo <= g(theta_true) <= iv.hi
    assert LOW <= hits / TRIALS <= HIGH, hits / TRIALS


def test_interval_shares_and_edge_cases() -> None:
    iv = combine([1.0, 1.0, 1.0], [0.0, 2.0, 4.0])
    assert iv.workload_share == 0.0 and iv.profile_share == 1.0
    iv = combine([1.0, 2.0, 3.0])
    assert iv.workload_share == 1.0 and iv.lo < 2.0 < iv.hi
    assert t_interval([5.0]) == (5.0, 5.0, 5.0)
    assert combine([1.0, 3.0], floor=0.0).lo == 0.0


def test_profile_draws_are_reproducible_and_within_bounds() -> None:
    prof = Profile("p", "vllm-v1", "0", "h100-sxm", step=StepCoefficients(eff_bw=1.45, step_overhead_s=1e-4),
                   uncertainty={"eff_bw": 0.5, "step_overhead_s": 1e-3})
    a = perturb_profile(prof, profile_rng(0, 1))
    assert a == perturb_profile(prof, profile_rng(0, 1))
    assert a.step != perturb_profile(prof, profile_rng(0, 2)).step
    draws = [perturb_profile(prof, profile_rng(0, j)).step for j in range(200)]
    assert all(0.01 <= d.eff_bw <= 1.5 and d.step_overhead_s >= 0 for d in draws)
    assert a.step.eff_mm == prof.step.eff_mm  # no stderr: unchanged


def test_replicate_summary_carries_ci_fields() -> None:
    seeds = [{"p99_ttft_ms": v, "completed": 100, "seed": s} for s, v in enumerate((10.0, 12.0, 14.0))]
    out = replicate_summary(seeds, draws=[{"p99_ttft_ms": 11.0, "completed": 100, "seed": 0},
                                          {"p99_ttft_ms": 13.0, "completed": 100, "seed": 0}])
    assert out["p99_ttft_ms"] == pytest.approx(12.0)
    lo, hi = out["p99_ttft_ms_ci"]
    assert lo < 12.0 < hi
    assert out["seeds"] == [0, 1, 2] and out["num_profile_draws"] == 2
    share = out["p99_ttft_ms_uncertainty_share"]
    assert share["workload"] + share["profile"] == pytest.approx(1.0)


def test_simulate_seeds_writes_ci_fields(capsys) -> None:
    import json

    from servesim.cli import main
    assert main(["simulate", "--rate", "5", "--num-requests", "200", "--input-len", "256", "--output-len", "32",
                 "--seeds", "3", "--profile-draws", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    lo, hi = summary["p99_ttft_ms_ci"]
    assert lo <= summary["p99_ttft_ms"] <= hi and hi > lo
    assert summary["seeds"] == [0, 1, 2] and "request_throughput_ci" in summary
