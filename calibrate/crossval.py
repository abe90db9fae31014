"""Cross-validation of the end-to-end fit on the ML.ENERGY chat rows; writes ``docs/crossval.md``.

    python -m servesim.calibrate.crossval [--profile sim/profiles/h100-sxm_vllm-v0.json] [--refit]

In-sample: the fit on all rows (read from the profile's ``fit_report.end_to_end``: values, Jacobian
and residuals as ``servesim calibrate`` left them; ``--refit`` fits again first).  Held out: leave one model out (all its ``max_num_seqs`` rows) and
leave one ``max_num_seqs`` value out (that setting for every model).  Each fold is refitted
without its rows by one Gauss-Newton step from the all-data optimum, using the Jacobian of the
all-data fit restricted to the training rows (a linearised refit; with three to four global
coefficients and 90+ rows the step is small), then *every* row is simulated exactly at the fold's
coefficients and the held-out rows' errors are recorded.  Errors are |simulated/measured - 1|.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..sim.profile import default_profile, load_profile
from . import e2e_fit
from .fitting import bounds_arrays, gauss_newton_step, residual_rows
from .mlenergy import load_mlenergy

METRICS = ("output_throughput", "tpot_s")


def fold_refit(result: e2e_fit.FitResult, params: tuple[str, ...], train_rows: np.ndarray) -> dict[str, float]:
    """One Gauss-Newton step on the training rows' residuals from the all-data optimum."""
    step = gauss_newton_step(result.jac, result.residuals, residual_rows(np.flatnonzero(train_rows), len(METRICS)))
    x = np.array([result.values[p] for p in params]) / result.scale + step
    lo, hi = bounds_arrays(params)
    x = np.clip(x, lo / result.scale, hi / result.scale)
    return {p: float(v * s) for p, v, s in zip(params, x, result.scale)}


def errors(rows, sims, mask) -> dict[str, np.ndarray]:
    out = {}
    for m in METRICS:
        out[m] = np.array([abs(s[m] / getattr(r, m) - 1) for r, s, keep in zip(rows, sims, mask) if keep])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", help="calibrated profile (default: shipped h100-sxm vllm-v0)")
    ap.add_argument("--refit", action="store_true", help="fit again instead of reading the profile's fit")
    ap.add_argument("--params", default=",".join(e2e_fit.DEFAULT_PARAMS))
    ap.add_argument("--max-nfev", type=int, default=30)
    ap.add_argument("--out", default="docs/crossval.md")
    ap.add_argument("--workers", type=int)
    args = ap.parse_args(argv)
    base = load_profile(args.profile) if args.profile else default_profile("h100-sxm", "vllm-v0")
    rows, skipped = load_mlenergy()
    with e2e_fit.RowSimulator(args.workers) as sim:
        stored = json.loads(Path(base.source_path).read_text()).get("fit_report", {}).get("end_to_end")
        if stored and not args.refit:
            params = tuple(stored["params"])
            values = {p: getattr(base.step, p) for p in params}
            sims = sim(rows, base)
            full = e2e_fit.FitResult(values, {p: base.uncertainty.get(p, float("nan")) for p in params}, sims,
                                     e2e_fit.log_residuals(rows, sims), 0.0, stored["nfev"], stored["message"],
                                     np.asarray(stored["jacobian"]), np.asarray(stored["scale"]))
        else:
            params = tuple(args.params.split(","))
            print(f"fitting {params} on {len(rows)} rows ...", file=sys.stderr)
            full = e2e_fit.fit(rows, base, params, simulator=sim, max_nfev=args.max_nfev)
        in_sample = errors(rows, full.sims, [True] * len(rows))
        folds: dict[str, list[Any]] = {"leave-one-model-out": sorted({r.model for r in rows}),
                 "leave-one-max_num_seqs-out": sorted({r.max_num_seqs for r in rows})}
        results: dict[str, tuple[dict[str, list[float]], list]] = {}
        for kind, keys in folds.items():
            held_all: dict[str, list[float]] = {m: [] for m in METRICS}
            per_fold = []
            for key in keys:
                held = np.array([(r.model if kind.startswith("leave-one-model") else r.max_num_seqs) == key
                                 for r in rows])
                values = fold_refit(full, params, ~held)
                sims = sim(rows, e2e_fit.with_coefficients(base, values))
                errs = errors(rows, sims, held)
                for m in METRICS:
                    held_all[m].extend(errs[m])
                per_fold.append((key, int(held.sum()), {m: float(np.median(errs[m])) for m in METRICS}, values))
                print(f"  {kind} {key}: {per_fold[-1][2]}", file=sys.stderr)
            results[kind] = (held_all, per_fold)
    lines = ["# Cross-validation of the vLLM 0.5.4 end-to-end fit (ML.ENERGY v2 chat, H100)", "",
             "Regenerate: `python -m servesim.calibrate.crossval` (about 10 CPU-minutes; uses "
             "`../shared/data`). Method: " + " ".join(__doc__.split("\n\n")[2].split()), "",
             f"Fitted coefficients: {', '.join(f'{p} = {full.values[p]:.4g} ± {full.stderr[p]:.2g}' for p in params)}; "
             f"{len(rows)} rows ({len(skipped)} skipped: pipeline parallelism not simulated).", "",
             "| errors (|sim/meas - 1|) | rows | throughput median | throughput p90 | TPOT median | TPOT p90 |",
             "|---|---|---|---|---|---|"]

    def line(name, errs):
        t, p = np.asarray(errs["output_throughput"]), np.asarray(errs["tpot_s"])
        return (f"| {name} | {len(t)} | {np.median(t):.1%} | {np.percentile(t, 90):.1%} | "
                f"{np.median(p):.1%} | {np.percentile(p, 90):.1%} |")

    lines.append(line("in-sample (all rows)", in_sample))
    for kind, (held_all, _) in results.items():
        lines.append(line(f"held out: {kind}", held_all))
    for kind, (_, per_fold) in results.items():
        lines += ["", f"## {kind}: per fold (median held-out error)", "",
                  "| held out | rows | throughput | TPOT | " + " | ".join(params) + " |",
                  "|---|---|---|---|" + "---|" * len(params)]
        for key, n, med, values in per_fold:
            lines.append(f"| {key} | {n} | {med['output_throughput']:.1%} | {med['tpot_s']:.1%} | "
                         + " | ".join(f"{values[p]:.4g}" for p in params) + " |")
    lines += ["", "Targets (issue): median held-out error <= 5% for output throughput and TPOT, <= 10% for TTFT "
              "below saturation. The ML.ENERGY summaries carry no TTFT, so the TTFT target cannot be checked on "
              "this data."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
