"""The fitting toolkit of :mod:`servesim.calibrate`: one bounds table, bounded least squares, the
bootstrap over runs, standard errors, and the :class:`Coefficient` a fit hands to a profile.

Every fit in calibrate/ (kernel tables, KV capacity, end to end on ML.ENERGY rows, Lambda
deployments, aiconfigurator silicon rows, the power split) is least squares on residuals of
measured quantities; what differs is the residual, the parameterisation and how uncertainty is
estimated.  What they share lives here:

* :data:`BOUNDS`: the physical range of every coefficient a simulation-in-the-loop fit moves,
  with its unit and the reason for it (``name -> Bound(low, high, unit, why)``); a fit whose
  optimiser searches a narrower window names it in the bound (:meth:`Bound.window`), so the
  numbers are still in one place;
* :func:`bounded_least_squares` (``scipy.optimize.least_squares``, trust region reflective) and
  :class:`CachedResiduals` (a simulation is evaluated once per point however often the optimiser
  asks), :func:`bounded_linear_step` (``scipy.optimize.lsq_linear``);
* :func:`covariance` / :func:`jacobian_stderr`: ``s^2 (J^T J)^-1`` at the optimum;
* :func:`bootstrap`: resample whole groups (runs, rows, shapes) with replacement, one seeded
  stream, one refit per replicate; :func:`gauss_newton_step` is the linearised refit most
  simulation fits use (a full refit costs a whole fit per replicate);
* :class:`Coefficient`: value, stderr and where it came from (:class:`Source` and a provenance
  text), written to a profile as ``{"value", "stderr", "source"}`` (docs/profile-schema.md).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from scipy.optimize import OptimizeResult, least_squares, lsq_linear


class Source(str, Enum):
    """Where a coefficient's value comes from."""

    FITTED = "fitted"              # least squares on measurements (the provenance names them)
    KERNEL_TABLE = "kernel table"  # fitted on kernel latency tables, not end to end
    DERIVED = "derived"            # arithmetic on other coefficients
    PRIOR = "prior"                # an assumed value with an assumed spread; no data moved it
    BOUND = "bound"                # the fit left it at a bound of its range: not identified
    FIXED = "fixed"                # set from the code or physics it models, not fitted


@dataclass(frozen=True)
class Coefficient:
    """One coefficient of a profile: ``value`` (in the unit its name says), ``stderr`` (same unit;
    None where nothing estimates it) and its ``source`` with the ``provenance`` text a profile
    stores (data file, method, date).  Invariant: value finite; stderr None (nothing estimates it),
    NaN (an estimate that failed, e.g. one bootstrap replicate) or >= 0."""

    value: float
    stderr: float | None
    source: Source
    provenance: str

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError(f"coefficient value must be finite, got {self.value} ({self.provenance})")
        if self.stderr is not None and self.stderr < 0:
            raise ValueError(f"coefficient stderr must be >= 0, NaN or None, got {self.stderr} ({self.provenance})")

    def entry(self, value_digits: int | None = None, stderr_digits: int | None = None,
              **extra: Any) -> dict[str, Any]:
        """The profile JSON entry, the value and stderr rounded to that many significant digits;
        ``extra`` keys (a fit's report of the term) go between ``stderr`` and ``source``."""
        return {"value": _round(self.value, value_digits),
                "stderr": None if self.stderr is None else _round(self.stderr, stderr_digits),
                **extra, "source": self.provenance}


def _round(x: float, digits: int | None) -> float:
    return float(x) if digits is None else float(f"{x:.{digits}g}")


@dataclass(frozen=True)
class Bound:
    """The range a fit may move a coefficient in: ``low <= value <= high`` in ``unit``, for the
    reason ``why``.  ``windows``: fits (by name) whose optimiser searches a narrower or otherwise
    different range, with why; the range is part of that fit's parameterisation (its optimiser
    variables are fractions of it), so it is kept rather than widened to the common one."""

    low: float
    high: float
    unit: str
    why: str
    windows: Mapping[str, tuple[float, float, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"bound: low {self.low} must be below high {self.high}")

    def window(self, fit: str | None = None) -> tuple[float, float]:
        """``(low, high)`` as the fit ``fit`` searches it."""
        if fit is not None and fit in self.windows:
            lo, hi, _ = self.windows[fit]
            return lo, hi
        return self.low, self.high


_CPU = "a CPU-side time cannot be negative"
_SILICON = ("the v1 silicon fit's search window (its optimiser works in fractions of it), set for vLLM 0.12's "
            "CUDA-graph steps; the shipped h100-sxm_vllm-v1 profile was fitted in it")
_EFF = "a fraction of the GPU's peak bandwidth or FLOPS; below 5% the roofline form is not what limits the kernel"
BOUNDS: dict[str, Bound] = {
    "eff_bw": Bound(0.05, 1.0, "fraction of peak HBM bandwidth", _EFF),
    "eff_mm": Bound(0.05, 1.0, "fraction of peak dense FLOPS", _EFF),
    "eff_attn_prefill": Bound(0.05, 1.0, "fraction of peak dense FLOPS", _EFF),
    "eff_attn_decode": Bound(0.05, 1.0, "fraction of peak HBM bandwidth", _EFF),
    "step_overhead_s": Bound(0.0, 0.1, "s per scheduling pass", f"{_CPU}; 100 ms per step is ten times v0's worst",
                             {"silicon": (0.0, 0.05, _SILICON)}),
    "tp_step_overhead_s": Bound(0.0, 0.05, "s per step and extra TP rank", _CPU,
                                {"silicon": (0.0, 0.02, _SILICON)}),
    "per_seq_overhead_s": Bound(0.0, 2e-3, "s per scheduled sequence and step", _CPU,
                                {"silicon": (0.0, 5e-4, _SILICON)}),
    "per_token_overhead_s": Bound(0.0, 1e-4, "s per scheduled token", _CPU,
                                  {"silicon": (0.0, 2e-4, _SILICON + "; wider: it is the per-prefill-token cost there")}),
    "per_prefill_token_overhead_s": Bound(0.0, 5e-5, "s per scheduled prefill token", _CPU),
    "layer_overhead_s": Bound(0.0, 1e-3, "s per layer and step (kernel launches)", _CPU),
    "prefill_layer_overhead_s": Bound(0.0, 5e-3, "s per layer of a step holding a prefill (eager)", _CPU),
    "api_server_request_s": Bound(0.0, 0.02, "s per request in the API server", _CPU),
    "api_overhead_s": Bound(0.0, 1.0, "s of TTFT beyond the engine's steps (HTTP, tokenisation, scheduling wait)",
                            f"{_CPU}; probe_fit reports it, no profile holds it"),
    "request_overhead_s": Bound(0.0, 0.3, "s per request on the client's path", "client time; >= 0"),
    "jitter_s": Bound(0.0, 0.2, "s, spread of the client's per-request time", "a spread; >= 0"),
    # KV-capacity memory terms (calibrate/kv_capacity.py; MemoryCoefficients' invariant).
    "activation_tensors_hidden": Bound(0.0, math.inf, "hidden-width tensors live at the forward peak", "a count"),
    "weight_overhead_bytes": Bound(-math.inf, math.inf, "bytes per GPU beyond the parameter count",
                                   "may be negative: the parameter count can over-count a little"),
    "sampler_bytes_per_logit": Bound(0.0, math.inf, "bytes per logit at the sampler's peak", "memory; >= 0"),
    "non_torch_bytes": Bound(0.0, math.inf, "bytes per GPU outside torch's allocator", "memory; >= 0"),
    "non_torch_tp_bytes": Bound(0.0, math.inf, "bytes per GPU of the TP communicator (TP > 1)", "memory; >= 0"),
    "non_torch_per_rank_bytes": Bound(0.0, math.inf, "bytes per GPU and TP rank beyond 2", "memory; >= 0"),
}


def bounds_arrays(names: Iterable[str], fit: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of ``names`` (as ``fit`` searches them); ValueError naming any name
    :data:`BOUNDS` lacks."""
    names = list(names)
    unknown = [n for n in names if n not in BOUNDS]
    if unknown:
        raise ValueError(f"no bounds for {unknown}; bounded coefficients: {sorted(BOUNDS)}")
    pairs = [BOUNDS[n].window(fit) for n in names]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def bounded_least_squares(fun: Callable[[np.ndarray], np.ndarray], x0: np.ndarray,
                          bounds: tuple[Any, Any] = (-np.inf, np.inf), **options: Any) -> OptimizeResult:
    """``scipy.optimize.least_squares`` (trust region reflective) of ``fun`` from ``x0`` within
    ``bounds``; ``options`` pass through (``diff_step``, ``max_nfev``, ``x_scale``, ``loss``...)."""
    return least_squares(fun, x0, bounds=bounds, **options)


class CachedResiduals:
    """``evaluate(x) -> residuals`` memoised on ``x`` rounded to ``digits`` decimals, keeping what
    produced them (``payload``: the simulations).  Finite differences and the optimiser's final
    point then cost no extra simulation.  ``on_new(x, residuals)`` is called once per new point."""

    def __init__(self, evaluate: Callable[[np.ndarray], tuple[np.ndarray, Any]], digits: int,
                 on_new: Callable[[np.ndarray, np.ndarray], None] | None = None) -> None:
        self._evaluate = evaluate
        self._digits = digits
        self._on_new = on_new
        self.cache: dict[tuple, tuple[np.ndarray, Any]] = {}

    def key(self, x: np.ndarray) -> tuple:
        return tuple(np.round(x, self._digits))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.at(x)[0]

    def at(self, x: np.ndarray) -> tuple[np.ndarray, Any]:
        """Residuals and payload at ``x`` (evaluated when new)."""
        key = self.key(x)
        if key not in self.cache:
            self.cache[key] = self._evaluate(x)
            if self._on_new is not None:
                self._on_new(x, self.cache[key][0])
        return self.cache[key]


def bounded_linear_step(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``argmin |a x - b|`` with ``lo <= x <= hi`` (``scipy.optimize.lsq_linear``)."""
    return np.asarray(lsq_linear(a, b, bounds=(lo, hi)).x)


def gauss_newton_step(jac: np.ndarray, residuals: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """The unbounded Gauss-Newton step ``-J^+ r`` on ``rows`` of the residuals (all when None):
    a linearised refit from the point ``jac`` and ``residuals`` were taken at."""
    j, r = (jac, residuals) if rows is None else (jac[rows], residuals[rows])
    step, *_ = np.linalg.lstsq(j, -r, rcond=None)
    return np.asarray(step)


def residual_rows(groups: np.ndarray, per_group: int) -> np.ndarray:
    """Indices of the residuals of ``groups`` when each group owns ``per_group`` consecutive ones
    (row ``i``'s metrics are residuals ``i * per_group ...``)."""
    groups = np.asarray(groups, dtype=np.int64)
    return (groups[:, None] * per_group + np.arange(per_group)).ravel()


def covariance(jac: np.ndarray, residuals: np.ndarray, pinv: bool = True,
               sum_of_squares: float | None = None) -> np.ndarray:
    """``s^2 (J^T J)^-1`` with ``s^2`` the residual variance (``sum_of_squares`` or ``r.r``, over
    ``m - n`` degrees of freedom, at least 1).  ``pinv``: the pseudo-inverse (a direction the
    data do not constrain gets variance 0 rather than an error); otherwise the inverse, NaN where
    ``J^T J`` is singular."""
    m, n = jac.shape
    ss = float(residuals @ residuals) if sum_of_squares is None else sum_of_squares
    s2 = ss / max(m - n, 1)
    info = jac.T @ jac
    if pinv:
        return np.linalg.pinv(info) * s2
    try:
        return np.linalg.inv(info) * s2
    except np.linalg.LinAlgError:
        return np.full((n, n), np.nan)


def jacobian_stderr(jac: np.ndarray, residuals: np.ndarray, pinv: bool = True,
                    sum_of_squares: float | None = None) -> np.ndarray:
    """Standard errors (optimiser units) from :func:`covariance`; negative variances clipped to 0."""
    return np.sqrt(np.clip(np.diag(covariance(jac, residuals, pinv, sum_of_squares)), 0.0, None))


def bootstrap(num_groups: int, num_replicates: int, seed: int,
              refit: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Replicates of a fit on resampled groups: ``num_replicates`` times, ``num_groups`` group
    indices drawn with replacement (one ``numpy.random.default_rng(seed)`` stream) are handed to
    ``refit``, which returns the replicate's parameter vector.  Rows ``(num_replicates, n)``.

    A group is what shares its error (a run, a silicon row, a GEMM shape), so whole groups are
    resampled: resampling the residuals of one group separately would be falsely precise."""
    rng = np.random.default_rng(seed)
    draws = [np.asarray(refit(rng.integers(0, num_groups, num_groups))) for _ in range(num_replicates)]
    return np.array(draws) if draws else np.empty((0, 0))


def group_weights(pick: np.ndarray, num_groups: int) -> np.ndarray:
    """How many times each group was drawn in ``pick`` (bootstrap weights), as floats."""
    return np.bincount(pick, minlength=num_groups).astype(np.float64)
