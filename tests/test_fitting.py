"""Tests for the fitting toolkit (servesim.calibrate.fitting): the bounds table, least-squares
helpers, the bootstrap over groups and the Coefficient a fit writes into a profile."""
from __future__ import annotations

import math

import numpy as np
import pytest

from servesim.calibrate import deployment_fit, e2e_fit, kv_capacity, probe_fit, silicon_fit
from servesim.calibrate.fitting import (
    BOUNDS,
    Bound,
    CachedResiduals,
    Coefficient,
    Source,
    bootstrap,
    bounded_least_squares,
    bounded_linear_step,
    bounds_arrays,
    covariance,
    gauss_newton_step,
    group_weights,
    jacobian_stderr,
    residual_rows,
)
from servesim.sim.profile import MemoryCoefficients, StepCoefficients


def test_every_coefficient_a_simulation_fit_moves_has_one_bound_with_unit_and_reason():
    fitted = set(deployment_fit.FIT_PARAMS) | set(e2e_fit.FITTABLE) | set(silicon_fit.FITTABLE)
    assert fitted <= set(BOUNDS)
    fields = set(StepCoefficients.__dataclass_fields__) | set(MemoryCoefficients.__dataclass_fields__)
    assert set(kv_capacity.SHARED) | set(kv_capacity.PER_ERA) <= set(BOUNDS)
    for name, b in BOUNDS.items():
        assert b.low < b.high and b.unit and b.why, name
        assert name in fields or name in silicon_fit.CLIENT_TERMS or name in probe_fit.REPORTED_ONLY, name
        for fit, (lo, hi, why) in b.windows.items():
            assert lo < hi and why and fit == silicon_fit.BOUNDS_FIT, (name, fit)


def test_bounds_arrays_uses_a_fits_window_and_names_unknown_coefficients():
    lo, hi = bounds_arrays(["step_overhead_s", "eff_bw"])
    assert lo.tolist() == [0.0, 0.05] and hi.tolist() == [0.1, 1.0]
    lo, hi = bounds_arrays(["step_overhead_s", "eff_bw"], "silicon")
    assert hi.tolist() == [0.05, 1.0]  # eff_bw has no silicon window: the common range
    with pytest.raises(ValueError, match="no_such_term"):
        bounds_arrays(["step_overhead_s", "no_such_term"])
    with pytest.raises(ValueError, match="below high"):
        Bound(1.0, 1.0, "s", "empty")


def test_coefficient_entry_rounds_and_keeps_the_profile_key_order():
    c = Coefficient(1.23456789e-3, 4.5678e-5, Source.FITTED, "fit: somewhere")
    e = c.entry(4, 2, identifiability="identified")
    assert list(e) == ["value", "stderr", "identifiability", "source"]
    assert e["value"] == 1.235e-3 and e["stderr"] == 4.6e-5 and e["source"] == "fit: somewhere"
    assert Coefficient(2.0, None, Source.PRIOR, "prior").entry() == {"value": 2.0, "stderr": None, "source": "prior"}
    assert math.isnan(Coefficient(1.0, math.nan, Source.FITTED, "one replicate").entry()["stderr"])
    with pytest.raises(ValueError, match="stderr"):
        Coefficient(1.0, -1.0, Source.FITTED, "x")
    with pytest.raises(ValueError, match="finite"):
        Coefficient(math.inf, 0.0, Source.FITTED, "x")


def _line(seed: int = 0, n: int = 200, sigma: float = 0.1):
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, n)
    return t, 2.0 + 3.0 * t + sigma * rng.standard_normal(n)


def test_covariance_is_the_ordinary_least_squares_one():
    t, y = _line()
    a = np.column_stack([np.ones_like(t), t])
    x, *_ = np.linalg.lstsq(a, y, rcond=None)
    r = a @ x - y
    s2 = float(r @ r) / (len(y) - 2)
    expected = np.sqrt(np.diag(s2 * np.linalg.inv(a.T @ a)))
    assert np.allclose(jacobian_stderr(a, r), expected, rtol=1e-10)
    assert np.allclose(jacobian_stderr(a, r, pinv=False), expected, rtol=1e-10)
    singular = np.column_stack([np.ones_like(t), np.ones_like(t)])
    assert np.isnan(covariance(singular, r, pinv=False)).all()  # inverse: NaN, not a made-up number
    assert np.isfinite(covariance(singular, r)).all()  # the pseudo-inverse never fails


def test_gauss_newton_step_solves_a_linear_problem_in_one_step_on_the_chosen_rows():
    t, y = _line()
    a = np.column_stack([np.ones_like(t), t])
    x0 = np.array([0.0, 0.0])
    step = gauss_newton_step(a, a @ x0 - y)
    assert np.allclose(x0 + step, np.linalg.lstsq(a, y, rcond=None)[0])
    rows = np.arange(0, 100)
    assert np.allclose(x0 + gauss_newton_step(a, a @ x0 - y, rows), np.linalg.lstsq(a[rows], y[rows], rcond=None)[0])
    assert residual_rows(np.array([2, 0]), 3).tolist() == [6, 7, 8, 0, 1, 2]


def test_bounded_least_squares_and_linear_step_respect_their_bounds():
    t, y = _line()
    res = bounded_least_squares(lambda x: x[0] + x[1] * t - y, np.array([0.5, 0.5]), bounds=([0.0, 0.0], [10.0, 2.5]))
    assert res.x[1] == pytest.approx(2.5) and 0.0 <= res.x[0] <= 10.0
    a = np.column_stack([np.ones_like(t), t])
    x = bounded_linear_step(a, y, np.array([0.0, 0.0]), np.array([10.0, 2.5]))
    assert x[1] == pytest.approx(2.5) and x[0] > 2.0


def test_cached_residuals_simulate_each_point_once():
    calls, seen = [], []

    def simulate(x: np.ndarray):
        calls.append(x.copy())
        return x ** 2, {"x": float(x[0])}

    f = CachedResiduals(simulate, 6, lambda x, r: seen.append(float(r[0])))
    assert f(np.array([2.0])).tolist() == [4.0]
    assert f(np.array([2.0 + 1e-9])).tolist() == [4.0]  # the same point at 6 decimals
    assert f.at(np.array([3.0]))[1] == {"x": 3.0}
    assert len(calls) == 2 and seen == [4.0, 9.0]


def test_bootstrap_is_seeded_and_its_spread_is_the_standard_error_of_a_mean():
    rng = np.random.default_rng(7)
    y = rng.normal(5.0, 2.0, 400)
    draws = bootstrap(len(y), 300, 0, lambda pick: np.array([y[pick].mean()]))
    assert draws.shape == (300, 1)
    assert np.array_equal(draws, bootstrap(len(y), 300, 0, lambda pick: np.array([y[pick].mean()])))
    assert not np.array_equal(draws, bootstrap(len(y), 300, 1, lambda pick: np.array([y[pick].mean()])))
    assert float(draws.std(ddof=1)) == pytest.approx(2.0 / math.sqrt(400), rel=0.15)
    assert bootstrap(5, 0, 0, lambda pick: pick).shape == (0, 0)
    assert group_weights(np.array([0, 0, 2]), 4).tolist() == [2.0, 0.0, 1.0, 0.0]


def test_deployment_bounds_come_from_the_one_table():
    para = deployment_fit.Parameterisation(("eff_bw", "step_overhead_s"), {"eff_bw": 0.5, "step_overhead_s": 1e-3})
    lo, hi = para.bounds()
    assert lo == pytest.approx([math.log(BOUNDS["eff_bw"].low / 0.5), 0.0])
    assert hi == pytest.approx([math.log(1.0 / 0.5), BOUNDS["step_overhead_s"].high / deployment_fit.CPU_SCALE["step_overhead_s"]])
