"""Fit step-cost coefficients by simulation in the loop.

Given measured end-to-end runs (*targets*: rows of :mod:`servesim.calibrate.mlenergy`, or
``vllm bench serve`` runs, :class:`~servesim.calibrate.deployment_fit.RunTarget`), choose the values of some
:class:`~servesim.sim.profile.StepCoefficients` so that simulating each run's workload and
configuration reproduces what was measured (output throughput and mean TPOT; TTFT too for
bench results).  A target has ``key``, ``fit_metrics()`` (name -> measured value) and
``simulate(profile, gpu, engine)`` (name -> simulated value).  Residuals are log ratios
(simulated / measured), so every row weighs the same whatever its scale; the optimiser is
``scipy.optimize.least_squares`` (trust region reflective, bounds) with finite differences taken
on whole simulations.  Standard errors come from the Jacobian at the optimum,
``s^2 (J^T J)^-1`` with ``s^2`` the residual variance: they describe the fit's statistical
uncertainty, not the model error, which the residuals and the cross-validation report.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from ..sim.config import make_engine_config
from ..sim.gpus import get_gpu
from ..sim.model_catalog import get_model
from ..sim.profile import Profile
from ..sim.runner import simulate
from .fitting import CachedResiduals, bounded_least_squares, bounds_arrays, jacobian_stderr
from .mlenergy import MAX_MODEL_LEN_CAP, MLEnergyRow, row_workload

# The coefficients that can be fitted end to end; their ranges are fitting.BOUNDS.
FITTABLE = ("step_overhead_s", "tp_step_overhead_s", "per_seq_overhead_s", "per_token_overhead_s",
            "per_prefill_token_overhead_s", "layer_overhead_s", "eff_attn_decode", "eff_attn_prefill", "eff_bw", "eff_mm")
DEFAULT_PARAMS = ("step_overhead_s", "per_seq_overhead_s", "eff_attn_decode")


def with_coefficients(profile: Profile, values: dict[str, float]) -> Profile:
    return replace(profile, step=replace(profile.step, **values))


def simulate_row(row: MLEnergyRow, profile: Profile, gpu: str = "h100-sxm", engine: str = "vllm-v0",
                 seed: int = 0) -> dict[str, float]:
    """Simulate one measured run's workload and configuration; the quantities it reports."""
    model = get_model(row.model)
    cfg = make_engine_config(model, get_gpu(gpu), engine, tp=row.tp, profile=profile,
                             max_num_seqs=row.max_num_seqs,
                             max_model_len=min(model.max_position_embeddings, MAX_MODEL_LEN_CAP))
    s = simulate(cfg, row_workload(row, seed)).summary
    return {"output_throughput": s["output_throughput"], "tpot_s": s["mean_tpot_ms"] / 1e3,
            "avg_batch_size": s["mean_num_running"], "power_w_per_gpu": s["mean_gpu_power_w"],
            "num_preemptions": s["num_preemptions"], "kv_capacity_tokens": s["kv_capacity_tokens"],
            "busy_fraction": s["busy_fraction"], "prefill_fraction": s["prefill_fraction"]}


def _simulate_task(args) -> dict[str, float]:
    target, profile, gpu, engine = args
    if isinstance(target, MLEnergyRow):
        return simulate_row(target, profile, gpu, engine)
    return target.simulate(profile, gpu, engine)


class RowSimulator:
    """Simulates many rows on ``gpu``, in parallel worker processes when more than one core is available."""

    def __init__(self, workers: int | None = None, gpu: str = "h100-sxm") -> None:
        get_gpu(gpu)  # a GPU that does not exist is an error here, before any simulation
        self.gpu = gpu
        self.workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
        self._pool = ProcessPoolExecutor(self.workers) if self.workers > 1 else None

    def __call__(self, rows: list[MLEnergyRow], profile: Profile, engine: str = "vllm-v0") -> list[dict]:
        tasks = [(row, profile, self.gpu, engine) for row in rows]
        if self._pool is None:
            return [_simulate_task(t) for t in tasks]
        return list(self._pool.map(_simulate_task, tasks, chunksize=max(1, len(tasks) // (4 * self.workers))))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def __enter__(self) -> RowSimulator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def log_residuals(rows: list, sims: list[dict]) -> np.ndarray:
    """Per target and fitted metric, in order: log(simulated / measured)."""
    out = []
    for row, sim in zip(rows, sims):
        for name, measured in row.fit_metrics().items():
            out.append(math.log(max(sim[name], 1e-12) / measured))
    return np.asarray(out)


@dataclass
class FitResult:
    values: dict[str, float]
    stderr: dict[str, float]
    sims: list[dict]
    residuals: np.ndarray
    cost: float
    nfev: int
    message: str
    jac: np.ndarray      # d residual / d (value / scale) at the optimum
    scale: np.ndarray


def fit(rows: list[MLEnergyRow], base: Profile, params: tuple[str, ...] = DEFAULT_PARAMS,
        simulator: RowSimulator | None = None, engine: str = "vllm-v0",
        x0: dict[str, float] | None = None, max_nfev: int = 40) -> FitResult:
    """Least-squares fit of ``params`` (other coefficients stay as in ``base``)."""
    unknown = [p for p in params if p not in FITTABLE]
    if unknown:
        raise ValueError(f"cannot fit {unknown} end to end; fittable: {sorted(FITTABLE)}")
    own = simulator is None
    simulator = simulator or RowSimulator()
    start = {p: (x0 or {}).get(p, getattr(base.step, p)) for p in params}
    lo, hi = bounds_arrays(params)
    # Optimise in units of each coefficient's upper bound so the variables are O(1).
    scale = hi
    x_start = np.clip(np.array([start[p] for p in params]) / scale, lo / scale + 1e-9, hi / scale - 1e-9)

    def simulate_at(x: np.ndarray) -> tuple[np.ndarray, list]:
        prof = with_coefficients(base, {p: float(v * s) for p, v, s in zip(params, x, scale)})
        sims = simulator(rows, prof, engine)
        return log_residuals(rows, sims), sims

    evaluate = CachedResiduals(simulate_at, 12)
    try:
        res = bounded_least_squares(evaluate, x_start, bounds=(lo / scale, hi / scale), diff_step=0.02,
                                    max_nfev=max_nfev, x_scale="jac")
    finally:
        if own:
            simulator.close()
    values = {p: float(v * s) for p, v, s in zip(params, res.x, scale)}
    se = jacobian_stderr(res.jac, res.fun, pinv=False)
    stderr = {p: float(se[i] * scale[i]) for i, p in enumerate(params)}
    residuals, sims = evaluate.at(res.x)
    return FitResult(values, stderr, sims, residuals, float(res.cost), int(res.nfev), res.message,
                     np.asarray(res.jac), scale)
