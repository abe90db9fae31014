"""What a capacity answer rests on, stated with the answer (``servesim plan``, sweep reports).

:func:`profile_assumptions` reads the profile a deployment uses: its name, file and digest, the
engine version and GPU it was measured on, the error its fits reached (``fit_report``), which
coefficients are priors rather than measurements, and whether the GPU's efficiencies were
borrowed from another GPU.  :func:`workload_assumptions` states the traffic: arrival process and
the length statistics of the dataset (sampled with the plan's seed).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from .schema import ArrivalKind, WorkloadSection


def _fit_errors(report: dict) -> dict[str, float]:
    """Median absolute relative error of every fit in a profile's ``fit_report`` that states one."""
    out = {}
    for name, fit in report.items():
        if not isinstance(fit, dict):
            continue
        res = fit.get("residuals")
        if isinstance(res, dict) and "median_abs_rel_err" in res:
            out[name] = float(res["median_abs_rel_err"])
        elif "median_abs_rel_error" in fit:
            out[name] = float(fit["median_abs_rel_error"])
        elif "median_rel_error" in fit:
            out[name] = float(fit["median_rel_error"])
    return out


def profile_assumptions(cfg) -> dict:
    """The profile behind an :class:`~servesim.sim.config.EngineConfig`, as plain data."""
    prof = cfg.profile
    out: dict = {"name": prof.name, "engine": prof.engine, "engine_version": prof.engine_version,
                 "measured_on_gpu": prof.gpu, "used_for_gpu": cfg.gpu.name, "path": prof.source_path}
    data: dict = {}
    if prof.source_path and Path(prof.source_path).is_file():
        raw = Path(prof.source_path).read_bytes()
        out["sha256"] = hashlib.sha256(raw).hexdigest()
        data = json.loads(raw)
    out["provenance"] = [p.get("file", p.get("origin", "")) for p in prof.provenance]
    out["fit_median_abs_rel_error"] = _fit_errors(data.get("fit_report", {}))
    priors = []
    for section in ("coefficients", "memory", "power"):
        for name, entry in data.get(section, {}).items():
            source = str(entry.get("source", "")) if isinstance(entry, dict) else ""
            if source.startswith("prior") or "Splitwise" in source:
                priors.append(name)
    out["priors"] = priors
    out["uncertain_terms"] = dict(prof.uncertainty)
    borrowed = prof.gpu != cfg.gpu.name
    out["borrowed_efficiencies"] = (f"{cfg.gpu.name} has no measured profile: the efficiencies and overheads "
                                    f"of {prof.gpu} are used with {cfg.gpu.name}'s own peak bandwidth and "
                                    "FLOP/s" if borrowed else "")
    return out


def _stats(x: np.ndarray) -> dict[str, float]:
    return {"mean": float(x.mean()), "median": float(np.median(x)), "p90": float(np.percentile(x, 90)),
            "p99": float(np.percentile(x, 99)), "max": float(x.max())}


def workload_assumptions(w: WorkloadSection, base_dir: str = ".", seed: int = 0, n: int = 4000) -> dict:
    """Arrival process and length statistics (input/output tokens) of a workload section."""
    from ..sim.workload import build_workload
    from .points import trace_file, trace_window
    arrivals = {ArrivalKind.POISSON: "Poisson", ArrivalKind.GAMMA: f"gamma (burstiness {w.burstiness:g})",
                ArrivalKind.TRACE: f"trace {w.trace}, inter-arrival gaps rescaled to the rate"}.get(w.kind, w.kind.value)
    out: dict = {"arrivals": arrivals, "dataset": w.trace or w.dataset}
    try:
        if w.kind is ArrivalKind.TRACE:
            wl = trace_window(trace_file(w.trace, base_dir), n, seed, None)
        else:
            wl = build_workload(w.spec(kind="burst", num_requests=n), seed)
        out["input_tokens"] = _stats(np.asarray(wl.input_tokens))
        out["output_tokens"] = _stats(np.asarray(wl.output_tokens))
        out["lengths_sampled"] = len(wl.input_tokens)
    except (ValueError, FileNotFoundError) as exc:
        out["lengths_error"] = str(exc)
    return out


def describe_lengths(stats: dict) -> str:
    """``in mean 220 / p99 1,200, out mean 190 / p99 900 tokens`` (or the error)."""
    if "input_tokens" not in stats:
        return stats.get("lengths_error", "lengths unknown")
    i, o = stats["input_tokens"], stats["output_tokens"]
    return (f"input mean {i['mean']:,.0f} / median {i['median']:,.0f} / p99 {i['p99']:,.0f}, output mean "
            f"{o['mean']:,.0f} / median {o['median']:,.0f} / p99 {o['p99']:,.0f} tokens")


def plan_assumptions(req, best) -> dict:
    """What a :class:`~.plan.PlanRequest`'s answer (its best :class:`~.plan.PlanOption`, or None)
    rests on, for ``servesim plan`` (``docs/scenarios.md``, "servesim plan")."""
    from .plan_space import _deployment, model_len
    from .points import engine_config
    from .stability import DEFAULT_TOLERANCE
    gpu, tp = (best.gpu, best.tp) if best else (req.gpus[0], req.tps[0])
    out: dict = {"workload": workload_assumptions(req.workload, req.base_dir, req.seed)}
    try:
        out["profile"] = profile_assumptions(engine_config(_deployment(req, gpu, tp, None), req.base_dir))
    except ValueError as exc:
        out["profile"] = {"error": str(exc)}
    out["router"] = (f"the whole cluster simulated behind the {req.router} router (snapshots "
                     f"{req.router_staleness_s:g} s old), at the full demand" if req.router else
                     "ideal random split: each of r replicas receives demand / r requests/s as its own "
                     f"{'Poisson' if req.workload.kind is ArrivalKind.POISSON else req.workload.kind.value} "
                     "stream; no load-aware routing, no routing delay, replicas independent (plan --router "
                     "simulates the whole cluster instead)")
    if getattr(req, "disaggregated", False):
        out["router"] += (f"; disaggregated candidates: prefill and decode pools behind the "
                          f"{req.router or 'round-robin'} router (snapshots {req.router_staleness_s:g} s old), "
                          f"KV over {req.kv_link} (catalogue peak bandwidth, no efficiency factor), at the full demand")
    fixed = bool(req.workload.num_requests or req.workload.duration_s)
    c = req.convergence
    out["run_length"] = ("fixed by the workload (--duration or num_requests)" if fixed else
                         f"until every SLO percentile's {c.confidence:.0%} CI (sectioning, {c.sections} sections) "
                         f"is within +-{c.relative_half_width:.0%} and the arrival span is >= "
                         f"{c.service_multiple:g} x the longest service time; {c.min_requests} to "
                         f"{c.max_requests} requests"
                         + (f" (a trace: at most its rows / {req.seeds} seeds, so windows are disjoint)"
                            if req.workload.kind is ArrivalKind.TRACE else ""))
    out["stability"] = (f"a run whose achieved rate falls short of the offered rate by more than "
                        f"{DEFAULT_TOLERANCE:.0%} plus chance (3 x sqrt(2) sd of its queue size over the window's "
                        "arrivals), in the second half of the arrivals, or whose queue grows by as much, is refused")
    out["confidence"] = {"level": req.confidence, "seeds": req.seeds, "profile_draws": req.profile_draws,
                         "rule": "replicas meet the SLOs when the one-sided upper confidence bound of each SLO "
                                 "metric (seed mean +- t interval, widened by the profile draws' spread) is "
                                 "within the SLO"}
    out["max_model_len"] = model_len(req, 1 << 30) if req.max_model_len else "workload's longest request"
    return out


def finite(x: float) -> float | None:
    """JSON-safe float (None for nan/inf)."""
    return float(x) if x is not None and math.isfinite(x) else None
