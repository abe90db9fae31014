"""Region rules (servesim.scenarios.regions) on synthetic curves with known answers, with noise.

Curves are piecewise linear in demand: slope ``s0`` up to the equilibrium ``De`` (no queue, KV
below the pressure threshold), a smaller slope up to the saturation knee ``Ds`` (queue and KV
pressure), then flat or falling.  Noise is multiplicative and independent per seed; every
assertion states the tolerance in grid steps.  Also: measured sweeps (curve.csv and run folders
with requests.jsonl) read into the same curve.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from servesim.scenarios.measured import load_measured
from servesim.scenarios.regions import (
    break_even,
    find_regions,
    forward_slopes,
    max_profit_index,
    saturation_index,
    smooth,
)
from servesim.scenarios.schema import SLO, RegionRules

STEP = 5.0
DEMANDS = np.arange(5.0, 205.0, STEP)


def piecewise(d: np.ndarray, de: float, ds: float, s0: float = 100.0, s1: float = 30.0, s2: float = 0.0) -> np.ndarray:
    knee = s0 * de + s1 * (ds - de)
    return np.where(d <= de, s0 * d, np.where(d <= ds, s0 * de + s1 * (d - de), knee + s2 * (d - ds)))


def make_curve(de: float = 60.0, ds: float = 140.0, noise: float = 0.015, seeds: int = 3, pressure: bool = True,
               s2: float = 0.0, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(seeds):
        y = piecewise(DEMANDS, de, ds, s2=s2) * (1 + noise * rng.standard_normal(DEMANDS.size))
        for d, v in zip(DEMANDS, y):
            over = max(d - de, 0.0)
            rows.append({"demand": d, "seed": s, "output_throughput": v,
                         "mean_num_waiting": 0.2 * over if pressure else 0.0,
                         "peak_kv_usage": min(1.0, 0.9 * d / de) if pressure else 0.3,
                         "num_preemptions": int(over > 40) * 5 if pressure else 0,
                         "p99_ttft_ms": 100 + 10 * over ** 1.5, "p99_tpot_ms": 20 + 0.5 * d, "error": ""})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------- building blocks


def test_smooth_and_forward_slopes_on_a_line() -> None:
    d = np.arange(1.0, 8.0)
    y = 3 * d + 1
    assert np.allclose(smooth(y), y)          # a line is its own moving average, ends included
    assert np.allclose(forward_slopes(d, y), 3.0)


def test_saturation_index_on_a_noiseless_plateau_is_one_step_before_the_knee() -> None:
    # documented behaviour: the smoothed curve is within 3% of its peak one step before the knee
    y = piecewise(DEMANDS, 60, 140)
    assert DEMANDS[saturation_index(y, 0.03)] == 135.0
    assert DEMANDS[saturation_index(y, 0.0)] == 145.0  # zero tolerance: the smoothed maximum itself


def test_break_even_interpolates_between_grid_points() -> None:
    d = np.array([10.0, 20.0, 30.0, 40.0])
    lower, upper = break_even(d, 2 * d - 30)
    assert lower == pytest.approx(15.0) and upper is None
    lower, upper = break_even(d, np.array([-5.0, 5.0, 15.0, -15.0]))
    assert lower == pytest.approx(15.0) and upper == pytest.approx(35.0)
    assert break_even(d, -np.ones(4)) == (None, None)
    assert break_even(d, np.ones(4))[0] == 10.0  # profitable from the first point


def test_max_profit_on_a_parabola() -> None:
    profit = 900 - (DEMANDS - 50) ** 2
    assert abs(DEMANDS[max_profit_index(profit, 0.03)] - 50) <= STEP
    assert DEMANDS[max_profit_index(profit, 0.0)] == 50


# ------------------------------------------------------------------------------ full rules, noise


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_regions_of_a_noisy_piecewise_curve(seed: int) -> None:
    r = find_regions(make_curve(seed=seed), RegionRules(), variant="synthetic")
    assert r.equilibrium.value is not None and abs(r.equilibrium.value - 60) <= STEP
    assert r.saturation.value is not None and 140 - 2 * STEP <= r.saturation.value <= 140 + STEP
    assert r.initial_slope == pytest.approx(100, rel=0.03)
    for b in (r.equilibrium, r.saturation):
        assert b.n_seeds == 3 and b.n_found == 3
        assert b.seed_lo <= b.seed_hi and b.grid_lo == b.value - STEP
    assert r.equilibrium.value < r.saturation.value


def test_region_c_falling_after_a_sharp_peak() -> None:
    # a steep region B (80/unit) into a steep fall (-200/unit): the peak is unambiguous
    curve = make_curve(de=40, ds=100, s2=-200.0, noise=0.01)
    curve["output_throughput"] += np.where(curve["demand"] > 40, 50.0 * (curve["demand"].clip(upper=100) - 40), 0)
    r = find_regions(curve, RegionRules())
    assert abs(r.saturation.value - 100) <= STEP
    assert r.peak_demand == 100.0


def test_no_equilibrium_without_queue_or_kv_pressure() -> None:
    r = find_regions(make_curve(pressure=False), RegionRules())
    assert r.equilibrium.value is None and "region A extends" in r.equilibrium.note
    assert r.saturation.value is not None


def test_slope_alone_when_the_curve_has_no_pressure_columns() -> None:
    curve = make_curve()[["demand", "seed", "output_throughput"]]
    r = find_regions(curve, RegionRules())
    assert abs(r.equilibrium.value - 60) <= STEP
    assert any("slope condition alone" in n for n in r.notes)


def test_economic_points_and_their_seed_band() -> None:
    curve = make_curve()
    rng = np.random.default_rng(7)
    # profit: revenue proportional to throughput minus a fixed cost; zero at a throughput of 2,000
    curve["profit_per_h"] = curve["output_throughput"] * 0.01 - 20 + rng.normal(0, 0.1, len(curve))
    r = find_regions(curve, RegionRules())
    assert r.break_even.value == pytest.approx(20, abs=1.0)    # s0 * d = 2000 -> d = 20
    assert r.break_even.seed_lo <= r.break_even.value <= r.break_even.seed_hi
    assert 140 - 2 * STEP <= r.max_profit.value <= 140 + STEP  # profit follows throughput
    assert r.break_even_upper.value is None


def test_slo_limit_and_the_binding_slo() -> None:
    curve = make_curve()
    slos = (SLO("ttft", 1000.0, 99), SLO("tpot", 95.0, 99))
    r = find_regions(curve, RegionRules(), slos)
    # ttft: 100 + 10 * (d - 60)^1.5 <= 1000  ->  d <= 60 + 90^(2/3) = 80.08; tpot: 20 + d/2 <= 95 -> d <= 150
    assert r.slo_limit.value == 80.0
    assert r.binding_slo == "p99_ttft_ms <= 1000"
    r = find_regions(curve, RegionRules(), (SLO("tpot", 10.0, 99),))
    assert r.slo_limit.value is None and "lowest demand" in r.slo_limit.note
    with pytest.raises(ValueError, match="p90_e2el_ms"):
        find_regions(curve, RegionRules(), (SLO("e2el", 10.0, 90),))


def test_failed_points_are_left_out_and_reported() -> None:
    curve = make_curve(seeds=1)
    curve.loc[curve["demand"] > 180, ["output_throughput", "error"]] = [math.nan, "does not fit"]
    r = find_regions(curve, RegionRules())
    assert r.saturation.value is not None
    assert "does not fit" in r.notes[0]
    all_bad = curve.assign(error="does not fit")
    r = find_regions(all_bad, RegionRules())
    assert r.saturation.value is None and r.saturation.note == "no successful points"


# ---------------------------------------------------------------------------------- measured


def test_measured_curve_csv_gives_the_same_regions(tmp_path) -> None:
    curve = make_curve()
    curve.drop(columns=["error"]).to_csv(tmp_path / "curve.csv", index=False)
    measured = load_measured(tmp_path)
    a = find_regions(measured, RegionRules())
    b = find_regions(curve, RegionRules())
    assert (a.equilibrium.value, a.saturation.value) == (b.equilibrium.value, b.saturation.value)


def test_measured_run_folders_with_requests_jsonl(tmp_path) -> None:
    # two points of a closed loop: 4 and 8 users, each request 100 in / 10 out, 1 s long
    for users, seed in ((4, 0), (8, 0), (8, 1)):
        folder = tmp_path / "tp1" / f"demand={users}_seed={seed}"
        folder.mkdir(parents=True)
        lines = [json.dumps({"arrival_s": 0.0, "first_token_s": 0.1 * (i + 1), "finish_s": 1.0 + 0.1 * i,
                             "input_tokens": 100, "output_tokens": 10}) for i in range(users)]
        (folder / "requests.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "tp1" / "demand=4_seed=0" / "metrics.csv").write_text(
        "time_s,vllm:num_requests_running,vllm:num_requests_waiting,vllm:kv_cache_usage_perc,"
        "vllm:num_preemptions_total\n0,4,0,0.1,0\n0.5,4,0,0.2,0\n1.0,0,0,0.0,0\n")
    curve = load_measured(tmp_path)
    assert sorted(curve["demand"]) == [4.0, 8.0, 8.0] and set(curve["variant"]) == {"tp1"}
    row = curve[(curve["demand"] == 4.0)].iloc[0]
    assert row["completed"] == 4 and row["duration_s"] == pytest.approx(1.3)
    assert row["output_throughput"] == pytest.approx(40 / 1.3)
    assert row["p99_ttft_ms"] == pytest.approx(np.percentile([100, 200, 300, 400], 99))
    assert row["peak_kv_usage"] == pytest.approx(0.2) and row["num_preemptions"] == 0


def test_measured_folder_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(ValueError, match="neither a curve.csv nor run folders"):
        load_measured(tmp_path)
    (tmp_path / "curve.csv").write_text("users,tput\n1,2\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['demand', 'output_throughput'\]"):
        load_measured(tmp_path)
    (tmp_path / "curve.csv").unlink()
    (tmp_path / "run7").mkdir()
    (tmp_path / "run7" / "requests.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="demand=<value>"):
        load_measured(tmp_path)


# ------------------------------------------------------------------------------- stability


def test_unstable_points_end_region_b_and_fail_the_slos() -> None:
    """On a rate axis an M/M/1-like replica keeps up to mu and falls behind beyond it; throughput
    keeps creeping up past mu (the backlog drains after the arrivals), so the throughput rule alone
    would put saturation later.  The first unstable demand ends region B and the SLO limit."""
    curve = make_curve(de=60.0, ds=180.0, noise=0.0, seeds=2)
    mu = 120.0
    curve["stable"] = curve["demand"] < mu
    curve.loc[(curve["demand"] == mu - STEP) & (curve["seed"] == 1), "stable"] = False  # one seed falls behind earlier
    curve["p99_ttft_ms"] = 100.0  # the short runs' percentiles look fine everywhere
    r = find_regions(curve, RegionRules(), (SLO("ttft", 1000.0, 99),), demand_axis=True)
    assert r.saturation.value == mu - STEP          # any seed unstable marks the demand
    assert r.saturation.seed_lo == mu - STEP and r.saturation.seed_hi == mu
    assert r.slo_limit.value == mu - 2 * STEP
    assert r.binding_slo.startswith("stability")
    assert any("unstable" in n for n in r.notes)
    assert r.equilibrium.value is not None and r.equilibrium.value <= r.saturation.value
    stable_only = find_regions(curve.drop(columns=["stable"]), RegionRules(), (SLO("ttft", 1000.0, 99),))
    assert stable_only.saturation.value > mu        # without the rule region B runs on


def test_break_even_below_the_sweep_is_not_called_the_first_point() -> None:
    curve = make_curve(noise=0.0, seeds=1)
    curve["profit_per_h"] = curve["output_throughput"] / 100.0  # profitable everywhere
    r = find_regions(curve, RegionRules())
    assert r.break_even.value == DEMANDS[0]
    assert "already profitable at the lowest demand" in r.break_even.describe()
    assert "up to the last point" in r.break_even_upper.describe()
