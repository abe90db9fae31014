"""``servesim calibrate`` on a deployment's bench results: fit, then write the fit into the profile.

The profile dict gains, for every fitted coefficient, its value, bootstrap standard deviation,
5-95% interval and identifiability verdict; a ``deployment`` section with the server settings the
runs were replayed under (so ``servesim validate`` and the cross-validation replay them the same
way); one provenance entry per result file (path, sha256, what was dropped); and the in-sample
residual table.
"""
from __future__ import annotations

import numpy as np

from ..sim.profile import Profile
from . import e2e_fit
from .bench_runs import Deployment, load_bench_runs
from .deployment_fit import FIT_PARAMS, RunTarget, fit_deployment
from .fitting import Coefficient, Source


def _data_relative(path: str) -> str:
    """A path under the shared data folder as ``<relative path>`` (machine-independent), else as given."""
    from pathlib import Path

    from ..sim.data_paths import find_shared_data
    try:
        root = Path(find_shared_data(".")).resolve()
        return str(Path(path).resolve().relative_to(root))
    except (FileNotFoundError, ValueError):
        return path


def residual_table(targets: list[RunTarget], sims: list[dict]) -> list[dict]:
    """One row per run: measured, simulated and relative error of each compared metric."""
    table = []
    for t, s in zip(targets, sims):
        row = {"target": t.key, "tp": t.run.tp, "model": t.run.model, "num_requests": t.run.num_requests,
               "max_model_len": t.run.max_model_len}
        for m, measured in t.fit_metrics().items():
            row[f"{m}_measured"] = measured
            row[f"{m}_simulated"] = s[m]
            row[f"{m}_rel_error"] = float(s[m] / measured - 1)
        table.append(row)
    return table


def median_errors(table: list[dict]) -> dict[str, float]:
    metrics = sorted({k[:-len("_rel_error")] for r in table for k in r if k.endswith("_rel_error")})
    return {m: float(np.median([abs(r[f"{m}_rel_error"]) for r in table if f"{m}_rel_error" in r])) for m in metrics}


def calibrate_deployment(data: dict, base: Profile, inputs: list, dep: Deployment, params: tuple[str, ...] | None,
                         workers: int | None, max_nfev: int, start: dict | None, bootstrap: int, log,
                         progress: bool = True) -> list[dict]:
    """Fit ``params`` (default: every term of :data:`FIT_PARAMS`) on the runs; update ``data``."""
    runs, skipped = load_bench_runs(inputs)
    for reason in skipped:
        log(f"skipped {reason}")
    if not runs:
        raise ValueError(f"no usable bench results in {', '.join(map(str, inputs))} (all skipped)")
    targets = [RunTarget(r, dep) for r in runs]
    params = tuple(params or FIT_PARAMS)
    log(f"fitting {', '.join(params)} on {len(runs)} runs of deployment {dep.name} "
        f"({dep.engine}, num_scheduler_steps={dep.num_scheduler_steps}, max_num_seqs={dep.max_num_seqs}, "
        f"gpu_memory_utilization={dep.gpu_memory_utilization}) by simulation in the loop")
    with e2e_fit.RowSimulator(workers, dep.gpu) as sim:
        fit = fit_deployment(targets, base, sim, params, max_nfev=max_nfev, x0=start, progress=progress,
                             bootstrap=bootstrap)
    table = residual_table(targets, fit.sims)
    errs = median_errors(table)
    for p in params:
        boot = fit.bootstrap.get(p, {})
        prior = data["coefficients"].get(p, {})
        verdict = fit.identifiability[p]
        source = (Source.BOUND if "at its bound" in verdict else Source.PRIOR if "prior dominates" in verdict
                  else Source.FITTED)
        data["coefficients"][p] = Coefficient(
            fit.values[p], boot.get("sd"), source,
            f"end-to-end fit on {len(runs)} runs (simulation in the loop) of deployment {dep.name}; "
            f"{'prior: the base profile value, 15% log-sd' if p.startswith('eff_') else 'no prior, >= 0'}").entry(
            interval_90=[boot.get("p05"), boot.get("p95")] if boot else None,
            identifiability=fit.identifiability[p],
            prior={"value": prior.get("value"), "source": prior.get("source")} if p.startswith("eff_") else None)
    data["deployment"] = {"name": dep.name, "engine": dep.engine, "engine_version": dep.engine_version,
                          "num_scheduler_steps": dep.num_scheduler_steps, "max_num_seqs": dep.max_num_seqs,
                          "gpu_memory_utilization": dep.gpu_memory_utilization}
    for r in runs:
        data["provenance"].append({"file": _data_relative(r.path), "sha256": r.sha256, "origin": r.origin, "kind": "vllm bench serve result",
                                   "model": r.model, "tp": r.tp, "max_model_len": r.max_model_len,
                                   "requests_replayed": r.num_requests, "failed_dropped": r.num_failed,
                                   "detailed": r.detailed, "notes": r.notes})
    unidentified = [p for p in params if not fit.identifiability[p].startswith("identified")]
    data["fit_report"]["deployment_fit"] = {
        "params": list(params), "nfev": fit.nfev, "message": fit.message, "runs": len(runs),
        "skipped": skipped, "median_abs_rel_error_in_sample": errs, "not_identified": unidentified,
        "bootstrap_replicates": bootstrap}
    data["notes"] = (f"Deployment {dep.name}: {dep.engine} {dep.engine_version}, num_scheduler_steps="
                     f"{dep.num_scheduler_steps}, fitted end to end on {len(runs)} of its own bench runs "
                     f"(in-sample median |error| " + ", ".join(f"{k} {v:.1%}" for k, v in errs.items())
                     + f"). Not identified by these runs: {', '.join(unidentified) or 'none'}. Memory and power "
                     "terms are the base profile's (priors / ML.ENERGY fit), not this deployment's.")
    log("in-sample median |error|: " + ", ".join(f"{k} {v:.1%}" for k, v in errs.items()))
    for p in params:
        log(f"  {p:<30} {fit.values[p]:.4g}  sd {fit.bootstrap.get(p, {}).get('sd', float('nan')):.2g}  "
            f"{fit.identifiability[p]}")
    return table
