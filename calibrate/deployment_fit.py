"""Fit a deployment's step-cost coefficients from its own bench runs, with bootstrap uncertainties.

Every run (:class:`~servesim.calibrate.bench_runs.BenchRun`) is replayed as what it was: a burst of
its exact requests on the deployment's engine, TP and ``max_model_len``.  Residuals are log ratios
simulated / measured of the run's metrics (duration, output throughput, TTFT and TPOT means and
medians, median ITL).  The coefficients:

* kernel efficiencies (``eff_bw``, ``eff_mm``, ``eff_attn_prefill``, ``eff_attn_decode``): the base
  profile's kernel-table values are a *prior*, not a pin: a log-normal prior of ``PRIOR_REL_SD``
  relative spread enters as extra residuals ``log(eff / prior) / sd`` (a maximum-a-posteriori fit);
* CPU-side terms (``step_overhead_s`` per scheduling pass, ``layer_overhead_s`` per layer and step
  (launches), ``prefill_layer_overhead_s`` per layer of a step holding a prefill (eager, no CUDA
  graph), ``tp_step_overhead_s`` per step and extra rank, ``per_seq_overhead_s``, ``per_token_overhead_s``, ``per_prefill_token_overhead_s``):
  bounded below by 0, no prior.

``scipy.optimize.least_squares`` (trust region reflective) with finite differences on whole
simulations.  Uncertainty: a bootstrap over runs (resampled with replacement), each replicate
refitted by Gauss-Newton steps from the optimum on the Jacobian rows of the resampled runs (a
linearised bootstrap: exact for a locally linear model, and a full refit of B replicates would
cost B whole fits).  Identifiability is reported per term: a term the data cannot tell apart from
its prior (posterior spread >= 70% of the prior's), one pinned at its bound, or one whose bootstrap
interval covers zero, is named as such instead of being reported as a measured value.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace

import numpy as np

from ..sim.config import make_engine_config
from ..sim.gpus import get_gpu
from ..sim.model_catalog import get_model
from ..sim.profile import Profile
from ..sim.runner import simulate
from .bench_runs import BenchRun, Deployment
from .fitting import BOUNDS, CachedResiduals, bootstrap, bounded_least_squares, bounded_linear_step, group_weights

EFFICIENCIES = ("eff_bw", "eff_mm", "eff_attn_prefill", "eff_attn_decode")
CPU_TERMS = ("step_overhead_s", "layer_overhead_s", "prefill_layer_overhead_s", "tp_step_overhead_s", "per_seq_overhead_s", "per_token_overhead_s",
             "per_prefill_token_overhead_s", "api_server_request_s")
FIT_PARAMS = EFFICIENCIES + CPU_TERMS
# Kernel-table efficiencies were measured on vLLM 0.24's kernels; a 2024 deployment ran older ones.
PRIOR_REL_SD = 0.15
RESIDUAL_SD_FLOOR = 0.01
# Units of the CPU terms in the optimiser (so variables are O(1)); their ranges are fitting.BOUNDS.
CPU_SCALE = {"step_overhead_s": 1e-3, "layer_overhead_s": 1e-5, "prefill_layer_overhead_s": 1e-4, "tp_step_overhead_s": 1e-4, "per_seq_overhead_s": 1e-5,
             "per_token_overhead_s": 1e-6, "per_prefill_token_overhead_s": 1e-6,
             "api_server_request_s": 1e-4}


@dataclass(frozen=True)
class RunTarget:
    """A bench run replayed on a deployment (the target protocol of :mod:`servesim.calibrate.e2e_fit`)."""

    run: BenchRun
    deployment: Deployment

    @property
    def key(self) -> str:
        return self.run.key

    def fit_metrics(self) -> dict[str, float]:
        return {m: self.run.measured[m] for m in self.run.metrics}

    def simulate(self, profile: Profile, gpu: str, engine: str) -> dict[str, float]:
        return simulate_run(self.run, self.deployment, profile)


def engine_config_for(run: BenchRun, dep: Deployment, profile: Profile):
    model = get_model(run.model)
    return make_engine_config(model, get_gpu(dep.gpu), dep.engine, tp=run.tp, profile=profile,
                              max_model_len=run.max_model_len, max_num_seqs=dep.max_num_seqs,
                              gpu_memory_utilization=dep.gpu_memory_utilization,
                              num_scheduler_steps=dep.num_scheduler_steps)


def simulate_run(run: BenchRun, dep: Deployment, profile: Profile) -> dict[str, float]:
    """The run's workload on the deployment; the summary keys of a bench result."""
    s = simulate(engine_config_for(run, dep, profile), run.workload()).summary
    return {k: float(s.get(k, math.nan)) for k in
            ("duration", "output_throughput", "mean_ttft_ms", "median_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
             "median_itl_ms", "mean_itl_ms", "num_preemptions", "completed", "failed")}


@dataclass
class Parameterisation:
    """Optimiser variables <-> coefficients: efficiencies as log(eff / prior), CPU terms in units."""

    params: tuple[str, ...]
    prior: dict[str, float]

    def to_values(self, x: np.ndarray) -> dict[str, float]:
        out = {}
        for p, v in zip(self.params, x):
            out[p] = float(self.prior[p] * math.exp(v)) if p in EFFICIENCIES else float(v * CPU_SCALE[p])
        return out

    def to_x(self, values: dict[str, float]) -> np.ndarray:
        return np.array([math.log(values[p] / self.prior[p]) if p in EFFICIENCIES else values[p] / CPU_SCALE[p]
                         for p in self.params])

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """:data:`~servesim.calibrate.fitting.BOUNDS` in optimiser variables."""
        lo, hi = [], []
        for p in self.params:
            low, high = BOUNDS[p].window()
            if p in EFFICIENCIES:
                lo.append(math.log(low / self.prior[p]))
                hi.append(math.log(high / self.prior[p]))
            else:
                lo.append(low / CPU_SCALE[p])
                hi.append(high / CPU_SCALE[p])
        return np.array(lo), np.array(hi)

    def prior_residuals(self, x: np.ndarray) -> np.ndarray:
        return np.array([v / PRIOR_REL_SD for p, v in zip(self.params, x) if p in EFFICIENCIES])

    def prior_jacobian(self) -> np.ndarray:
        rows = [[(1.0 / PRIOR_REL_SD if q == p else 0.0) for q in self.params]
                for p in self.params if p in EFFICIENCIES]
        return np.array(rows).reshape(len(rows), len(self.params))


@dataclass
class DeploymentFit:
    values: dict[str, float]
    sims: list[dict]
    residuals: np.ndarray          # data residuals (log sim/meas), run by run, metric by metric
    row_run: np.ndarray            # index of the run of each residual
    jac: np.ndarray                # d data residual / d x at the optimum
    x: np.ndarray
    para: Parameterisation
    nfev: int
    message: str
    bootstrap: dict[str, dict] = field(default_factory=dict)
    identifiability: dict[str, str] = field(default_factory=dict)


def _residuals(targets: list[RunTarget], sims: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    res, owner = [], []
    for i, (t, s) in enumerate(zip(targets, sims)):
        for m, measured in t.fit_metrics().items():
            res.append(math.log(max(s.get(m, 0.0), 1e-9) / measured))
            owner.append(i)
    return np.asarray(res), np.asarray(owner, dtype=np.int64)


def fit_deployment(targets: list[RunTarget], base: Profile, simulator, params: tuple[str, ...] = FIT_PARAMS,
                   max_nfev: int = 20, x0: dict[str, float] | None = None, progress: bool = True,
                   bootstrap: int = 200, seed: int = 0, desc: str = "fit", diff_step: float = 0.1) -> DeploymentFit:
    """MAP fit of ``params`` on ``targets`` (simulated by ``simulator(targets, profile, engine)``)."""
    unknown = [p for p in params if p not in FIT_PARAMS]
    if unknown:
        raise ValueError(f"cannot fit {unknown} from bench runs; fittable: {list(FIT_PARAMS)}")
    engine = targets[0].deployment.engine
    para = Parameterisation(params, {p: getattr(base.step, p) for p in params})
    lo, hi = para.bounds()
    start = {p: (x0 or {}).get(p, getattr(base.step, p)) for p in params}
    x_start = np.clip(para.to_x(start), lo + 1e-9, hi - 1e-9)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(desc=desc, unit="eval", file=sys.stderr, mininterval=1.0, leave=False, disable=None)  # off when not a terminal

    def simulate_at(x: np.ndarray) -> tuple[np.ndarray, list]:
        prof = replace(base, step=replace(base.step, **para.to_values(x)))
        sims = simulator(targets, prof, engine)
        return _residuals(targets, sims)[0], sims

    def on_new(x: np.ndarray, r: np.ndarray) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(rms=f"{math.sqrt(float(np.mean(r ** 2))):.3f}")

    data_res = CachedResiduals(simulate_at, 12, on_new)
    try:
        res = bounded_least_squares(lambda x: np.concatenate([data_res(x), para.prior_residuals(x)]), x_start,
                                    bounds=(lo, hi), diff_step=diff_step, max_nfev=max_nfev, x_scale="jac")
    finally:
        if bar is not None:
            bar.close()
    r_data, sims = data_res.at(res.x)
    _, owner = _residuals(targets, sims)
    n_data = len(r_data)
    fit = DeploymentFit(para.to_values(res.x), sims, r_data, owner, np.asarray(res.jac)[:n_data], res.x, para,
                        int(res.nfev), str(res.message))
    if bootstrap:
        fit.bootstrap = bootstrap_runs(fit, len(targets), bootstrap, seed)
    fit.identifiability = identifiability(fit)
    return fit


def gauss_newton_refit(fit: DeploymentFit, row_weights: np.ndarray, damping: float = 1e-2) -> np.ndarray:
    """Optimiser variables after one damped Gauss-Newton (Levenberg-Marquardt) step from the optimum
    on the weighted linearised residuals plus the prior, within the bounds.  The damping
    (``damping`` times each column's squared norm) keeps directions the data do not constrain where
    they are instead of letting them run to a bound."""
    para = fit.para
    lo, hi = para.bounds()
    jp = para.prior_jacobian()
    sw = np.sqrt(row_weights)
    a = np.vstack([fit.jac * sw[:, None], jp])
    b = -np.concatenate([fit.residuals * sw, para.prior_residuals(fit.x)])
    norms = np.linalg.norm(np.vstack([fit.jac, jp]), axis=0) + 1e-12
    a = np.vstack([a, np.diag(math.sqrt(damping) * norms)])
    b = np.concatenate([b, np.zeros(len(fit.x))])
    # Bounded linear least squares: a term held at its bound stays there and the others are solved
    # for with it held (clipping an unbounded step afterwards would keep their compensation for it).
    step = bounded_linear_step(a, b, np.minimum(lo - fit.x, 0.0), np.maximum(hi - fit.x, 0.0))
    return np.clip(fit.x + step, lo, hi)


def bootstrap_runs(fit: DeploymentFit, num_runs: int, num_replicates: int, seed: int) -> dict[str, dict]:
    """Per coefficient: bootstrap standard deviation and 5-95% interval over resampled runs."""
    # Replicates are centred on the full data's own linearised solution, so an optimum the optimiser
    # left slightly short of convergence does not read as spread.
    centre = gauss_newton_refit(fit, np.ones(len(fit.residuals)))
    lo, hi = fit.para.bounds()

    def refit(pick: np.ndarray) -> np.ndarray:
        x = gauss_newton_refit(fit, group_weights(pick, num_runs)[fit.row_run]) - centre + fit.x
        return np.clip(x, lo, hi)

    draws = [fit.para.to_values(x) for x in bootstrap(num_runs, num_replicates, seed, refit)]
    out = {}
    for p in fit.para.params:
        v = np.array([d[p] for d in draws])
        out[p] = {"sd": float(v.std(ddof=1)), "p05": float(np.percentile(v, 5)), "p95": float(np.percentile(v, 95))}
    return out


def identifiability(fit: DeploymentFit) -> dict[str, str]:
    """A verdict per coefficient: ``identified``, or why the data cannot pin it."""
    para = fit.para
    lo, hi = para.bounds()
    dof = max(len(fit.residuals) - len(fit.x), 1)
    # Residual variance, floored at (1%)^2: repeated bench runs of one configuration differ by about
    # that much, so a perfect in-sample fit does not make every term look exactly determined.
    s2 = max(float(fit.residuals @ fit.residuals) / dof, RESIDUAL_SD_FLOOR ** 2)
    info = fit.jac.T @ fit.jac / s2
    prec = np.zeros_like(info)
    for i, p in enumerate(para.params):
        if p in EFFICIENCIES:
            prec[i, i] = 1.0 / PRIOR_REL_SD ** 2
    try:
        cov = np.linalg.inv(info + prec + 1e-12 * np.eye(len(info)))
    except np.linalg.LinAlgError:
        cov = np.full_like(info, np.inf)
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    corr = cov / np.outer(sd, sd) if np.all(sd > 0) else np.zeros_like(cov)
    out = {}
    for i, p in enumerate(para.params):
        boot = fit.bootstrap.get(p, {})
        partner = [para.params[j] for j in range(len(sd)) if j != i and abs(corr[i, j]) > 0.95]
        tol = 1e-3 * (hi[i] - lo[i])
        if fit.x[i] <= lo[i] + tol or fit.x[i] >= hi[i] - tol:
            out[p] = "not identified: at its bound" + (f" (confounded with {', '.join(partner)})" if partner else "")
        elif p in EFFICIENCIES and sd[i] >= 0.7 * PRIOR_REL_SD:
            out[p] = f"not identified: the prior dominates (posterior sd {sd[i]:.2f} vs prior {PRIOR_REL_SD})"
        elif p in CPU_TERMS and boot and boot["p05"] <= 0.0 + 1e-15:
            out[p] = "weak: the bootstrap interval reaches 0"
        elif partner:
            out[p] = f"identified jointly with {', '.join(partner)} (|correlation| > 0.95)"
        else:
            out[p] = "identified"
    return out


def fit_at(targets: list[RunTarget], base: Profile, simulator, params: tuple[str, ...] = FIT_PARAMS,
           step: float = 0.1) -> DeploymentFit:
    """The :class:`DeploymentFit` of ``base``'s own coefficients, not refitted: residuals there and a
    forward-difference Jacobian (``step`` in optimiser units; backwards at an upper bound).  For
    cross-validating a shipped profile without paying for its fit again."""
    engine = targets[0].deployment.engine
    para = Parameterisation(params, {p: getattr(base.step, p) for p in params})
    lo, hi = para.bounds()
    x = para.to_x({p: getattr(base.step, p) for p in params})

    def run(xv: np.ndarray) -> tuple[np.ndarray, list]:
        prof = replace(base, step=replace(base.step, **para.to_values(xv)))
        sims = simulator(targets, prof, engine)
        return _residuals(targets, sims)[0], sims

    r0, sims = run(x)
    jac = np.zeros((len(r0), len(x)))
    for j in range(len(x)):
        h = step * max(1.0, abs(x[j]))
        if x[j] + h > hi[j]:
            h = -h
        xj = x.copy()
        xj[j] += h
        jac[:, j] = (run(xj)[0] - r0) / h
    _, owner = _residuals(targets, sims)
    return DeploymentFit(para.to_values(x), sims, r0, owner, jac, x, para, len(x) + 1, "Jacobian at the given values")
