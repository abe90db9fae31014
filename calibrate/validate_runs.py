"""``servesim validate`` on many runs: a folder or glob of bench results, or a summary-only file.

Each run is replayed as :mod:`servesim.calibrate.bench_runs` reads it (failed requests dropped,
exact lengths, a burst for request rate inf) on the deployment the profile was fitted for (its
``deployment`` section: ``num_scheduler_steps``, ``max_num_seqs``, ``gpu_memory_utilization``;
command-line knobs override it).  One row per run with the relative errors of what the file lets
us compare (a detailed file: duration, output throughput, median TTFT, median TPOT, median ITL; a
summary-only file: duration, output throughput, mean TTFT, mean TPOT, the only figures it holds
that do not depend on the unknown per-request lengths), the median |error| per metric, and a
predicted-vs-measured plot.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..sim.profile import Profile, default_profile, load_profile
from .bench_runs import BenchRun, Deployment, load_bench_runs
from .deployment_fit import simulate_run

DETAILED_COMPARED = ("duration", "output_throughput", "median_ttft_ms", "median_tpot_ms", "median_itl_ms")
SUMMARY_COMPARED = ("duration", "output_throughput", "mean_ttft_ms", "mean_tpot_ms")


def profile_deployment(profile: Profile, gpu: str, engine: str) -> Deployment:
    """The deployment a profile was fitted for (defaults where it records none)."""
    raw = json.loads(Path(profile.source_path).read_text()) if profile.source_path else {}
    d = raw.get("deployment", {})
    return Deployment(name=d.get("name", profile.name), engine=d.get("engine", engine),
                      engine_version=d.get("engine_version", profile.engine_version), gpu=gpu,
                      num_scheduler_steps=int(d.get("num_scheduler_steps", 1)), max_num_seqs=d.get("max_num_seqs"),
                      gpu_memory_utilization=float(d.get("gpu_memory_utilization", 0.9)))


def compared_metrics(run: BenchRun) -> tuple[str, ...]:
    names = DETAILED_COMPARED if run.detailed else SUMMARY_COMPARED
    return tuple(m for m in names if run.measured.get(m, 0) > 0)


def validate_runs(runs: list[BenchRun], dep: Deployment, profile: Profile) -> list[dict]:
    rows = []
    for run in runs:
        sim = simulate_run(run, dep, profile)
        row = {"run": run.key, "model": run.model, "tp": run.tp, "requests": run.num_requests,
               "detailed": run.detailed, "failed_dropped": run.num_failed}
        for m in compared_metrics(run):
            row[f"{m}_measured"] = run.measured[m]
            row[f"{m}_simulated"] = sim[m]
            row[f"{m}_rel_error"] = sim[m] / run.measured[m] - 1
        rows.append(row)
    return rows


def median_abs_errors(rows: list[dict]) -> dict[str, float]:
    out = {}
    for m in DETAILED_COMPARED + SUMMARY_COMPARED:
        errs = [abs(r[f"{m}_rel_error"]) for r in rows if f"{m}_rel_error" in r]
        if errs and m not in out:
            out[m] = float(np.median(errs))
    return out


def format_rows(rows: list[dict]) -> str:
    metrics = [m for m in dict.fromkeys(DETAILED_COMPARED + SUMMARY_COMPARED)
               if any(f"{m}_rel_error" in r for r in rows)]
    width = max([len(r["run"]) for r in rows] + [10])
    short = {m: m.replace("_ms", "").replace("output_", "out_") for m in metrics}
    lines = [f"{'run':<{width}} {'TP':>3} {'reqs':>5} " + " ".join(f"{short[m]:>14}" for m in metrics)]
    for r in rows:
        cells = [f"{r[f'{m}_rel_error']:>+14.1%}" if f"{m}_rel_error" in r else f"{'-':>14}" for m in metrics]
        lines.append(f"{r['run']:<{width}} {r['tp']:>3} {r['requests']:>5} " + " ".join(cells))
    med = median_abs_errors(rows)
    lines.append(f"{'median |error|':<{width}} {'':>3} {len(rows):>5} "
                 + " ".join(f"{med[m]:>14.1%}" if m in med else f"{'-':>14}" for m in metrics))
    summary_only = [r["run"] for r in rows if not r["detailed"]]
    if summary_only:
        lines.append(f"summary-only files ({len(summary_only)}): compared on {', '.join(SUMMARY_COMPARED)} only "
                     "(no per-request lengths: replayed with lengths drawn to the file's means)")
    return "\n".join(lines)


def plot_rows(rows: list[dict], path: str | Path, title: str) -> Path:
    """Predicted vs measured, one panel per compared metric, log-log with the identity line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker.NullFormatter below)
    metrics = [m for m in dict.fromkeys(DETAILED_COMPARED + SUMMARY_COMPARED)
               if any(f"{m}_rel_error" in r for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.3), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        sel = [r for r in rows if f"{m}_rel_error" in r]
        tps = sorted({r["tp"] for r in sel})
        for tp in tps:
            pts = [(r[f"{m}_measured"], r[f"{m}_simulated"]) for r in sel if r["tp"] == tp]
            ax.scatter(*zip(*pts), s=14, label=f"TP{tp}")
        vals = [v for r in sel for v in (r[f"{m}_measured"], r[f"{m}_simulated"]) if v > 0 and math.isfinite(v)]
        lo, hi = min(vals) * 0.8, max(vals) * 1.25
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{m}\nmedian |err| {np.median([abs(r[f'{m}_rel_error']) for r in sel]):.1%}", fontsize=8)
        ax.set_xlabel("measured", fontsize=7)
        ax.set_ylabel("simulated", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def run_validate(inputs: list[str], profile_path: str | None, gpu: str, engine: str, overrides: dict) -> tuple:
    """Load, replay and compare; ``(rows, skipped, deployment, profile)``."""
    profile = load_profile(profile_path) if profile_path else default_profile(gpu, engine)
    dep = profile_deployment(profile, gpu, engine)
    dep = replace(dep, **{k: v for k, v in overrides.items() if v is not None})
    runs, skipped = load_bench_runs(inputs)
    if not runs:
        raise ValueError(f"no usable bench results in {', '.join(inputs)}: " + "; ".join(skipped))
    return validate_runs(runs, dep, profile), skipped, dep, profile
