"""Evidence for the server settings the bench files do not record.

Two kinds of evidence, both printed into ``docs/fidelity.md`` by :mod:`servesim.calibrate.fidelity`:

* from the measurements alone: the ratio of median ITL to median TPOT at the smallest bursts.  The
  client times one inter-token gap per streamed chunk, so under multi-step scheduling (tokens
  streamed K at a time) ITL is about K times TPOT; with one token per chunk it is about 1;
* by simulation: each candidate setting replayed at the profile's coefficients, the
  sum of squared log residuals over every run and metric (smaller is better), with the ITL/TPOT
  ratio the simulation gives.  Coefficients were fitted under the chosen setting, which favours
  it; the ratio evidence does not depend on the fit.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from ..sim.profile import Profile
from .bench_runs import BenchRun, Deployment
from .deployment_fit import RunTarget, _residuals, simulate_run


def measured_chunk_ratio(runs: list[BenchRun]) -> tuple[float, int]:
    """Median ITL / median TPOT over the runs of the smallest burst size, and that size."""
    n_min = min(r.num_prompts for r in runs)
    ratios = [r.measured["median_itl_ms"] / r.measured["median_tpot_ms"] for r in runs
              if r.num_prompts == n_min and r.measured.get("median_tpot_ms", 0) > 0 and "median_itl_ms" in r.measured]
    return float(np.median(ratios)), n_min


def candidate_table(runs: list[BenchRun], dep: Deployment, profile, candidates: list[dict]) -> list[dict]:
    """For each candidate override of ``dep``: total squared log residual and simulated ITL/TPOT."""
    n_min = min(r.num_prompts for r in runs)
    rows = []
    for cand in candidates:
        d = replace(dep, **cand)
        targets = [RunTarget(r, d) for r in runs]
        try:
            sims = [simulate_run(r, d, profile) for r in runs]
        except ValueError as exc:
            # A setting under which a measured server could not even have started (the memory model
            # leaves no KV cache) is ruled out by that run's existence: say so instead of a cost.
            rows.append({"setting": ", ".join(f"{k}={v}" for k, v in cand.items()), "cost": float("inf"),
                         "itl_tpot_ratio": float("nan"), "preemptions": -1,
                         "infeasible": str(exc).split(":")[0]})
            continue
        res, _ = _residuals(targets, sims)
        ratio = np.median([s["median_itl_ms"] / s["median_tpot_ms"] for r, s in zip(runs, sims)
                           if r.num_prompts == n_min and s["median_tpot_ms"] > 0])
        rows.append({"setting": ", ".join(f"{k}={v}" for k, v in cand.items()), "cost": float(res @ res),
                     "itl_tpot_ratio": float(ratio),
                     "preemptions": int(sum(s["num_preemptions"] for s in sims))})
    return rows


def render_inference(name: str, runs: list[BenchRun], dep: Deployment, profile, candidates: list[dict]) -> list[str]:
    ratio, n_min = measured_chunk_ratio(runs)
    lines = [f"Measured median ITL / median TPOT at N={n_min}: **{ratio:.2f}** "
             f"({'about 1 token per streamed chunk' if ratio < 1.5 else f'about {ratio:.0f} tokens per chunk'}).", "",
             "| candidate setting | sum of squared log residuals | simulated ITL/TPOT at smallest N | preemptions (all runs) |",
             "|---|---|---|---|"]
    for row in candidate_table(runs, dep, profile, candidates):
        if "infeasible" in row:
            lines.append(f"| {row['setting']} | ruled out: {row['infeasible']} (a measured run exists) | | |")
            continue
        lines.append(f"| {row['setting']} | {row['cost']:.2f} | {row['itl_tpot_ratio']:.2f} | {row['preemptions']} |")
    return lines


def decode_breakdown_ms(profile, model_name: str, tp: int, num_seqs: int, context: int) -> dict[str, float]:
    """Per generated token of one sequence, in ms: what each term of ``profile`` contributes to a
    decode step of ``num_seqs`` sequences at ``context`` tokens each (a multi-step deployment pays
    its per-pass terms once per ``num_scheduler_steps`` tokens)."""
    from ..sim.cost_model import StepCostModel
    from ..sim.gpus import get_gpu
    from ..sim.model_catalog import get_model
    model = get_model(model_name)
    cost = StepCostModel(model, get_gpu(profile.gpu), profile.step, tp)
    c = profile.step
    k = int(profile.deployment.get("num_scheduler_steps", 1) or 1)
    gpu = max(cost.weight_stream_s, (cost.linear_s_per_token + cost.lm_head_s_per_seq) * num_seqs)
    return {
        "GPU: weights/GEMM": gpu * 1e3,
        "GPU: KV read": cost.decode_s_per_ctx_token * num_seqs * context * 1e3,
        "all-reduce": (cost.comm_fixed_s + cost.comm_s_per_token * num_seqs) * 1e3,
        "per-layer launches": c.layer_overhead_s * model.num_layers * 1e3,
        "per-rank (TP)": c.tp_step_overhead_s * (tp - 1) * 1e3,
        "per-token CPU": c.per_token_overhead_s * num_seqs * 1e3,
        "per-pass CPU (/K)": c.step_overhead_s / k * 1e3,
        "per-sequence CPU (/K)": c.per_seq_overhead_s * num_seqs / k * 1e3,
    }


def render_breakdown(profiles: Mapping[str, Profile], model: str, tp_values: tuple[int, ...], num_seqs: int,
                     context: int) -> list[str]:
    lines = [f"Decode step of {model} with {num_seqs} running sequences at {context} tokens of context, "
             "ms per step (a step yields one token per sequence; per-pass terms divided by the steps per pass):", "",
             "| term | " + " | ".join(f"{name} TP{tp}" for name in profiles for tp in tp_values) + " |",
             "|---|" + "---|" * (len(profiles) * len(tp_values))]
    tables = {(n, tp): decode_breakdown_ms(p, model, tp, num_seqs, context) for n, p in profiles.items()
              for tp in tp_values}
    terms = next(iter(tables.values())).keys()
    for term in terms:
        lines.append(f"| {term} | " + " | ".join(f"{tables[(n, tp)][term]:.2f}" for n in profiles for tp in tp_values) + " |")
    lines.append("| **total** | " + " | ".join(f"**{sum(tables[(n, tp)].values()):.2f}**" for n in profiles
                                            for tp in tp_values) + " |")
    return lines
