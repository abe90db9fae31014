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

from dataclasses import replace

import numpy as np

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
        sims = [simulate_run(r, d, profile) for r in runs]
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
        lines.append(f"| {row['setting']} | {row['cost']:.2f} | {row['itl_tpot_ratio']:.2f} | {row['preemptions']} |")
    return lines
