"""Cross-validation of the Lambda deployment profiles; writes ``docs/fidelity.md`` and its plots.

    python -m servesim.calibrate.fidelity [--out docs/fidelity.md] [--refit-nfev 0] [--workers 2] [--write-profiles]

The generated part of ``docs/fidelity.md`` lies between the ``<!-- fidelity:begin -->`` and
``<!-- fidelity:end -->`` markers (the text around them is kept); ``--write-profiles`` stores the
held-out errors in each shipped profile's ``measured_error`` (what ``servesim profiles`` prints).

For each deployment (September: vLLM 0.6 with multi-step; August: vLLM 0.5.4-like), the shipped
profile is the all-data fit (``servesim calibrate`` on all its runs); its Jacobian is taken there
by finite differences.  Each split holds out one group at a time: one TP, one burst size N, one model (September), one
``max_model_len`` (August).  A fold is refitted without its runs by one damped Gauss-Newton step
on the all-data Jacobian restricted to the training runs (a linearised refit; ``--refit-nfev N``
runs a real warm-started refit of N evaluations instead), then the held-out runs are simulated
exactly at the fold's coefficients.  Errors are simulated / measured - 1 on the held-out runs,
pooled over the folds of a split.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..sim.data_paths import find_shared_data
from ..sim.profile import load_profile, shipped_profiles
from . import e2e_fit
from .bench_runs import load_bench_runs
from .deployment_fit import RunTarget, fit_at, fit_deployment, gauss_newton_refit, simulate_run
from .infer_deployment import render_breakdown, render_inference
from .validate_runs import plot_rows, profile_deployment

TARGET_METRICS = ("duration", "output_throughput", "median_tpot_ms", "median_ttft_ms")
TARGETS = {"duration": 0.05, "output_throughput": 0.05, "median_tpot_ms": 0.10, "median_ttft_ms": 0.15}
BEGIN, END = "<!-- fidelity:begin -->", "<!-- fidelity:end -->"
DATASETS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "lambda-sep2024": ("h100/lambda_sep2024", "h100-sxm_vllm-v0.6_lambda-sep2024", ("tp", "n", "model")),
    "lambda-aug2024": ("h100/lambda_aug2024", "h100-sxm_vllm-v0.5_lambda-aug2024", ("tp", "n", "max_model_len")),
}
# Settings the files do not record, tried against the chosen one (docs/fidelity.md, "What was inferred").
CANDIDATES: dict[str, list[dict[str, Any]]] = {
    "lambda-sep2024": [{"num_scheduler_steps": k} for k in (1, 8, 10, 12)]
    + [{"max_num_seqs": 1024}, {"gpu_memory_utilization": 0.9}, {"gpu_memory_utilization": 0.9, "max_num_seqs": 1024}],
    "lambda-aug2024": [{"num_scheduler_steps": k} for k in (1, 2, 4)]
    + [{"max_num_seqs": 1024}, {"gpu_memory_utilization": 0.95}],
}


def group_of(run, split: str):
    return {"tp": run.tp, "n": run.num_prompts, "model": run.model.split("/")[-1],
            "max_model_len": run.max_model_len}[split]


def run_errors(run, sim: dict) -> dict[str, float]:
    return {m: sim[m] / run.measured[m] - 1 for m in TARGET_METRICS if run.measured.get(m, 0) > 0}


def crossvalidate(name: str, workers: int | None, refit_nfev: int, all_nfev: int, log,
                  only: set[str] | None = None) -> dict:
    folder, profile_name, splits = DATASETS[name]
    splits = tuple(s for s in splits if only is None or s in only)
    profile = load_profile(shipped_profiles()[profile_name])
    dep = profile_deployment(profile, profile.gpu, profile.engine)
    runs, skipped = load_bench_runs([find_shared_data(folder)])
    targets = [RunTarget(r, dep) for r in runs]
    with e2e_fit.RowSimulator(workers, dep.gpu) as sim:
        if all_nfev:
            full = fit_deployment(targets, profile, sim, max_nfev=all_nfev, progress=False, bootstrap=0, desc=name)
        else:   # the shipped profile is the all-data fit: its Jacobian is all the folds need
            full = fit_at(targets, profile, sim)
        base = replace(profile, step=replace(profile.step, **full.values))
        in_sample = [dict(run=r.key, tp=r.tp, requests=r.num_requests, detailed=r.detailed,
                          **_row(r, s)) for r, s in zip(runs, full.sims)]
        out: dict[str, Any] = {"name": name, "profile": profile_name, "runs": len(runs), "skipped": skipped, "values": full.values,
               "in_sample": in_sample, "splits": {}, "deployment": dep,
               "inference": render_inference(name, runs, dep, base, CANDIDATES[name])}
        for split in splits:
            groups = sorted({group_of(r, split) for r in runs}, key=str)
            held_rows, folds = [], []
            for g in groups:
                held = np.array([group_of(r, split) == g for r in runs])
                train_w = (~held[full.row_run]).astype(np.float64)
                if refit_nfev:
                    fold = fit_deployment([t for t, h in zip(targets, held) if not h], base, sim,
                                          max_nfev=refit_nfev, progress=False, bootstrap=0)
                    values = fold.values
                else:
                    values = full.para.to_values(gauss_newton_refit(full, train_w))
                prof = replace(profile, step=replace(profile.step, **values))
                rows = [dict(run=r.key, tp=r.tp, requests=r.num_requests, detailed=r.detailed,
                             **_row(r, simulate_run(r, dep, prof))) for r, h in zip(runs, held) if h]
                held_rows.extend(rows)
                folds.append((g, len(rows), _medians(rows)))
                log(f"  {name} leave-one-{split}-out {g}: " + ", ".join(f"{k} {v:.1%}" for k, v in folds[-1][2].items()))
            out["splits"][split] = {"rows": held_rows, "folds": folds, "pooled": _medians(held_rows)}
    return out


def _row(run, sim: dict) -> dict:
    row = {}
    for m, e in run_errors(run, sim).items():
        row[f"{m}_measured"], row[f"{m}_simulated"], row[f"{m}_rel_error"] = run.measured[m], sim[m], e
    return row


def _medians(rows: list[dict]) -> dict[str, float]:
    return {m: float(np.median([abs(r[f"{m}_rel_error"]) for r in rows if f"{m}_rel_error" in r]))
            for m in TARGET_METRICS if any(f"{m}_rel_error" in r for r in rows)}


def _cell(m: str, v: float) -> str:
    return f"{v:.1%} {'met' if v <= TARGETS[m] else '**not met**'}"


def render(results: list[dict], plots: Path, refit_nfev: int) -> list[str]:
    lines = ["## Cross-validation of the Lambda deployments", "",
             "Regenerate: `python -m servesim.calibrate.fidelity` (a few CPU-minutes; needs `../shared/data`). "
             "Method: " + " ".join(next(p for p in __doc__.split("\n\n") if p.startswith("For each")).split()), "",
             f"Fold refits: {f'warm-started refits of {refit_nfev:d} evaluations' if refit_nfev else 'linearised (one damped Gauss-Newton step)'}. "
             "Targets: median |error| <= 5% duration and output throughput, <= 10% median TPOT, <= 15% median TTFT.", ""]
    for res in results:
        lines += [f"### {res['name']} (profile `{res['profile']}`, {res['runs']} runs)", ""]
        if res["skipped"]:
            lines += ["Skipped: " + "; ".join(res["skipped"]), ""]
        d = res["deployment"]
        lines += [f"Deployment replayed: {d.engine} {d.engine_version}, num_scheduler_steps={d.num_scheduler_steps}, "
                  f"max_num_seqs={d.max_num_seqs or 'vLLM default 256'}, gpu_memory_utilization={d.gpu_memory_utilization}. "
                  "Evidence for the settings (at the all-data coefficients):", ""] + res["inference"] + [""]
        lines += ["All-data coefficients: " + ", ".join(f"`{k}` {v:.4g}" for k, v in res["values"].items()), ""]
        lines += ["| split | runs | duration | output throughput | median TPOT | median TTFT |", "|---|---|---|---|---|---|"]
        med = _medians(res["in_sample"])
        lines.append(f"| in sample (all runs) | {len(res['in_sample'])} | " + " | ".join(_cell(m, med[m]) for m in TARGET_METRICS) + " |")
        for split, s in res["splits"].items():
            lines.append(f"| leave-one-{split}-out | {len(s['rows'])} | " + " | ".join(_cell(m, s['pooled'][m]) for m in TARGET_METRICS) + " |")
        for split, s in res["splits"].items():
            lines += ["", f"Per fold, leave-one-{split}-out (median |error| of the held-out runs):", "",
                      "| held out | runs | duration | output throughput | median TPOT | median TTFT |", "|---|---|---|---|---|---|"]
            for g, n, m in s["folds"]:
                lines.append(f"| {g} | {n} | " + " | ".join(f"{m[k]:.1%}" for k in TARGET_METRICS) + " |")
            png = plot_rows(s["rows"], plots / f"{res['name']}_leave-one-{split}-out.png",
                            f"{res['name']}: held out, leave-one-{split}-out")
            lines += ["", f"![{res['name']} leave-one-{split}-out]({png.parent.name}/{png.name})"]
        lines.append("")
    shipped = shipped_profiles()
    profiles = {"ML.ENERGY": load_profile(shipped["h100-sxm_vllm-v0"]),
                "Lambda Aug": load_profile(shipped[DATASETS["lambda-aug2024"][1]]),
                "Lambda Sep": load_profile(shipped[DATASETS["lambda-sep2024"][1]])}
    lines += ["### What separates the three v0-era deployments", "",
              "Each profile's terms on one reference step (the coefficients as fitted; the GPU terms differ "
              "only through the fitted efficiencies):", ""]
    lines += render_breakdown(profiles, "llama-3-8b", (1, 4), 64, 500)
    lines += ["", "| coefficient | " + " | ".join(profiles) + " |", "|---|" + "---|" * len(profiles)]
    for name in ("eff_bw", "eff_mm", "step_overhead_s", "layer_overhead_s", "prefill_layer_overhead_s",
                 "tp_step_overhead_s", "per_seq_overhead_s", "per_token_overhead_s", "per_prefill_token_overhead_s",
                 "api_server_request_s"):
        lines.append(f"| `{name}` | " + " | ".join(f"{getattr(p.step, name):.4g}" for p in profiles.values()) + " |")
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/fidelity.md")
    ap.add_argument("--write-profiles", action="store_true", help="store the held-out errors in the profiles")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--refit-nfev", type=int, default=0, help="real refits per fold (default 0: linearised)")
    ap.add_argument("--all-nfev", type=int, default=0,
                    help="refit the shipped profile on all runs first, this many evaluations (default 0: "
                         "take the shipped coefficients as the all-data fit)")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--splits", help="only these splits (e.g. model), for a quick check with --refit-nfev")
    args = ap.parse_args(argv)
    out = Path(args.out)
    plots = out.parent / "fidelity"
    plots.mkdir(parents=True, exist_ok=True)
    only = set(args.splits.split(",")) if args.splits else None
    results = [crossvalidate(n, args.workers, args.refit_nfev, args.all_nfev, lambda m: print(m, file=sys.stderr), only)
               for n in args.datasets.split(",")]
    block = "\n".join(render(results, plots, args.refit_nfev))
    text = out.read_text() if out.exists() else f"{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    out.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}")
    print(f"wrote {out}")
    if args.write_profiles:
        for res in results:
            write_measured_error(res, args.refit_nfev)
    return 0


def write_measured_error(res: dict, refit_nfev: int) -> None:
    """The held-out medians into the shipped profile (``servesim profiles`` prints them)."""
    import datetime as dt
    import json
    path = shipped_profiles()[res["profile"]]
    data = json.loads(path.read_text())
    data["measured_error"] = {
        "source": f"python -m servesim.calibrate.fidelity ({'refits' if refit_nfev else 'linearised refits'}), "
                  f"{dt.date.today().isoformat()}; median |sim/meas - 1| of held-out runs",
        "splits": {"in sample": _medians(res["in_sample"])}
        | {f"leave-one-{k}-out": v["pooled"] for k, v in res["splits"].items()}}
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote measured_error into {path}")


if __name__ == "__main__":
    raise SystemExit(main())
