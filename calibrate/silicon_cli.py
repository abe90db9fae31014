"""``python -m servesim.calibrate.silicon``: fit, cross-validate, evaluate and plot the vLLM v1
profile on the silicon rows (the command line and the tables of :mod:`servesim.calibrate.silicon`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .silicon import (CLIENT_BOUNDS, DEFAULT_PARAMS, SILICON_FILE, STEP_BOUNDS, ClientKind, Simulator, SiliconRow,
                      apply, client_preset, crossval, errors, evaluate, fit, load_silicon, median_abs, update_profile)


def main(argv: list[str] | None = None) -> int:
    import argparse
    from ..sim.profile import default_profile, load_profile
    from ..sim.traces import find_shared_data
    from . import silicon
    ap = argparse.ArgumentParser(prog="python -m servesim.calibrate.silicon",
                                 description=silicon.__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="?", help=f"silicon CSV (default ../shared/data/{SILICON_FILE})")
    ap.add_argument("--profile", help="base profile (default: the shipped h100-sxm vllm-v1 one)")
    ap.add_argument("--client", default="aiperf", choices=[k.value for k in ClientKind])
    ap.add_argument("--params", default=",".join(DEFAULT_PARAMS), help="terms to fit")
    ap.add_argument("--fit", action="store_true", help="fit on every row")
    ap.add_argument("--crossval", action="store_true", help="leave-one-TP-out and leave-one-isl/osl-out")
    ap.add_argument("--evaluate", action="store_true", help="errors of the profile as it is, per fold")
    ap.add_argument("--splits", default="tp,isl_osl", help="--crossval: which splits (tp, isl_osl)")
    ap.add_argument("--exact", action="store_true", help="--crossval: a full refit per fold (slow) instead of "
                    "the linearised refit from the all-rows fit")
    ap.add_argument("-o", "--output", help="with --fit: write the updated profile JSON here")
    ap.add_argument("--json", help="write the tables as JSON here")
    ap.add_argument("--plot", help="write a simulated-vs-measured PNG of the profile (after --fit: the fitted one) "
                    "and print the residuals by isl and concurrency")
    ap.add_argument("--max-nfev", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-num-batched-tokens", type=int, help="the runs' vLLM token budget per step "
                    "(default: the inferred 2048; vllm serve's own default on H100 is 8192)")
    args = ap.parse_args(argv)
    try:
        path = Path(args.csv) if args.csv else find_shared_data(SILICON_FILE)
        rows = load_silicon(path)
        profile = load_profile(args.profile) if args.profile else default_profile("h100-sxm", "vllm-v1")
        client = client_preset(args.client)
        params = tuple(p.strip() for p in args.params.split(",") if p.strip())
        bad = [p for p in params if p not in STEP_BOUNDS | CLIENT_BOUNDS]
        if bad:
            raise ValueError(f"--params: {bad} cannot be fitted here; valid: {sorted(STEP_BOUNDS | CLIENT_BOUNDS)}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    report: dict = {}
    from .silicon import DEPLOYMENT, Deployment
    deployment = Deployment(args.max_num_batched_tokens or DEPLOYMENT.max_num_batched_tokens, DEPLOYMENT.max_num_seqs)
    with Simulator(args.workers, deployment) as sim:
        if args.evaluate:
            report["evaluate"] = evaluate(rows, profile, client, sim)
            print(format_folds(report["evaluate"], f"profile {profile.name}, client {client.kind.value}, not refitted"))
        f = None
        if args.fit or (args.crossval and not args.exact):
            f = fit(rows, profile, client, params, sim, max_nfev=args.max_nfev, log=log)
            report["fit"] = {"values": f.values, "stderr": f.stderr, "not_identified": f.unidentified}
            for p in params:
                note = f"  NOT IDENTIFIED: {f.unidentified[p]}" if p in f.unidentified else ""
                print(f"{p:<24} {f.values[p]:.4g} +- {f.stderr[p]:.2g}{note}")
            e = errors(rows, f.sims)
            print(f"in sample: median |error| TTFT {median_abs(e['ttft']):.1%}, TPOT {median_abs(e['tpot']):.1%}")
            if args.output:
                base = json.loads(Path(profile.source_path).read_text())
                data = update_profile(base, f, rows, path, client)
                data["generated_by"] = (f"{base.get('generated_by', '')}; then python -m servesim.calibrate.silicon "
                                        f"--fit --params {','.join(params)} -o <profile>").lstrip("; ")
                out = Path(args.output)
                tmp = out.with_name(out.name + ".tmp")
                tmp.write_text(json.dumps(data, indent=2) + "\n")
                tmp.replace(out)
                print(f"wrote {out}")
        if args.plot:
            prof, cl = apply(profile, client, f.values) if f is not None else (profile, client)
            sims = sim(rows, prof, cl)
            plot(rows, sims, Path(args.plot), f"{prof.name} + {cl.kind.value} client on {len(rows)} silicon rows")
            print("median signed error TTFT / TPOT by isl (rows) and concurrency (columns):")
            print(residual_table(rows, sims))
        if args.crossval:
            report["crossval"] = crossval(rows, profile, client, params, sim, args.max_nfev, full=f,
                                          exact=args.exact, only=tuple(args.splits.split(",")), log=log)
            kind = "full refit" if args.exact else "linearised refit"
            print(format_folds(report["crossval"], f"cross-validated ({kind} without the held-out rows)"))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float) + "\n")
    return 0


def residual_table(rows: list[SiliconRow], sims: list[dict]) -> str:
    """Median signed error of mean TTFT / TPOT by isl and concurrency (over TP and osl): where the
    model is structurally off."""
    e = errors(rows, sims)
    conc = sorted({r.concurrency for r in rows})
    lines = ["| isl | " + " | ".join(f"c{c}" for c in conc) + " |", "|---|" + "---|" * len(conc)]
    for isl in sorted({r.isl for r in rows}):
        cells = []
        for c in conc:
            idx = [i for i, r in enumerate(rows) if r.isl == isl and r.concurrency == c]
            cells.append(f"{np.median(e['ttft'][idx]):+.0%} / {np.median(e['tpot'][idx]):+.0%}")
        lines.append(f"| {isl} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[SiliconRow], sims: list[dict], path: Path, title: str) -> None:
    """Simulated against measured mean TTFT and TPOT, one point per row (log axes), coloured by isl."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, key, meas in ((axes[0], "mean_ttft_ms", "ttft_ms"), (axes[1], "mean_tpot_ms", "tpot_ms")):
        for isl, colour in ((1024, "tab:blue"), (4096, "tab:orange")):
            pts = [(getattr(r, meas), s[key]) for r, s in zip(rows, sims) if r.isl == isl]
            if pts:
                m, p = zip(*pts)
                ax.scatter(m, p, s=14, c=colour, label=f"isl {isl}")
        lo_v = min(min(getattr(r, meas) for r in rows), min(s[key] for s in sims)) * 0.8
        hi_v = max(max(getattr(r, meas) for r in rows), max(s[key] for s in sims)) * 1.25
        ax.plot([lo_v, hi_v], [lo_v, hi_v], "k-", lw=0.8)
        for f in (0.8, 1.25):
            ax.plot([lo_v, hi_v], [lo_v * f, hi_v * f], "k:", lw=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"measured {key} (vLLM 0.12, H100)")
        ax.set_ylabel(f"simulated {key}")
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_folds(folds: list[dict], title: str) -> str:
    """A markdown table: split, held-out group, rows, median |error| of TTFT and TPOT."""
    lines = [f"{title}", "", "| split | held out | rows | TTFT median abs err | TPOT median abs err |",
             "|---|---|---|---|---|"]
    for f in folds:
        lines.append(f"| {f['split']} | {f['held_out']} | {f['rows']} | {f['ttft']:.1%} | {f['tpot']:.1%} |")
    for split in sorted({f["split"] for f in folds}):
        sel = [f for f in folds if f["split"] == split]
        lines.append(f"| {split} | median of folds | {sum(f['rows'] for f in sel)} | "
                     f"{np.median([f['ttft'] for f in sel]):.1%} | {np.median([f['tpot'] for f in sel]):.1%} |")
    return "\n".join(lines)




if __name__ == "__main__":
    raise SystemExit(main())
