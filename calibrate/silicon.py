"""``python -m servesim.calibrate.silicon``: fit, cross-validate, evaluate and plot the vLLM v1
profile on the silicon rows, and write the fit into a profile (the command line, the profile
update, the ``servesim calibrate`` hook and the tables of :mod:`servesim.calibrate.silicon_fit`,
the library this module sits on; the library never imports it back)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..argtypes import add_args
from ..sim.clients import ClientKind, ClientModel, client_preset
from ..sim.engine_args import EngineArgs
from ..sim.profile import Profile
from .fitting import Coefficient, Source
from .silicon_fit import (
    CLIENT_TERMS,
    DEFAULT_PARAMS,
    DEPLOYMENT,
    FITTABLE,
    PROTOCOL,
    SILICON_FILE,
    STEP_TERMS,
    Deployment,
    SiliconFit,
    SiliconRow,
    Simulator,
    apply,
    crossval,
    errors,
    evaluate,
    fit,
    load_silicon,
    median_abs,
)

# ------------------------------------------------------------------------------ profile + command

def provenance(path: Path, rows: list[SiliconRow]) -> dict:
    from .kernel_tables import _sha256
    return {"file": SILICON_FILE if str(path).endswith(SILICON_FILE) else str(path), "sha256": _sha256(path),
            "rows": len(rows), "kind": "end-to-end closed loop (mean TTFT, mean TPOT)",
            "framework": "vLLM 0.12.0 (v1 engine)", "gpu": "H100 SXM", "model": "Qwen/Qwen3-32B BF16",
            "origin": "ai-dynamo/aiconfigurator systems/silicon_sample.csv in the PyPI wheel aiconfigurator-core 0.12",
            "client_assumed": f"aiperf --concurrency N, {PROTOCOL.warmup_per_user}N warm-up requests "
                              f"(drained), {PROTOCOL.counted_per_user}N counted",
            "server_flags_inferred": f"max_num_batched_tokens {DEPLOYMENT.max_num_batched_tokens}, "
                                     f"max_num_seqs {DEPLOYMENT.max_num_seqs} (not recorded in the file)"}


def update_profile(data: dict, f: SiliconFit, rows: list[SiliconRow], path: Path, client: ClientModel) -> dict:
    """Write the fitted step coefficients (value, bootstrap stderr, source) into a profile dict;
    unidentified terms keep their previous value and say so; the memory section is not touched."""
    src = (f"end-to-end fit on {len(rows)} vLLM 0.12 silicon rows (Qwen3-32B, TP 2/4/8), simulation in the "
           f"loop with the aiperf client; stderr: row bootstrap")
    for p, v in f.values.items():
        if p not in STEP_TERMS:
            continue
        entry = data["coefficients"].setdefault(p, {})
        if p in f.unidentified:
            entry["source"] = f"{entry.get('source', 'prior')}; not identified by the silicon rows: {f.unidentified[p]}"
            continue
        data["coefficients"][p] = Coefficient(v, f.stderr[p], Source.FITTED, src).entry(4, 2)
    e = errors(rows, f.sims) if f.sims else {"ttft": np.array([]), "tpot": np.array([])}
    data.setdefault("fit_report", {})["silicon_vllm_0.12"] = {
        "values": f.values, "stderr": f.stderr, "not_identified": f.unidentified, "nfev": f.nfev,
        "message": f.message, "in_sample_median_abs_rel_error": {"mean_ttft_ms": median_abs(e["ttft"]),
                                                                  "mean_tpot_ms": median_abs(e["tpot"])},
        "client": {"kind": client.kind.value, **{k: f.values.get(k, getattr(client, k)) for k in CLIENT_TERMS}},
        "protocol": {"warmup_per_user": PROTOCOL.warmup_per_user, "counted_per_user": PROTOCOL.counted_per_user},
        "deployment_inferred": {"max_num_batched_tokens": DEPLOYMENT.max_num_batched_tokens,
                                "max_num_seqs": DEPLOYMENT.max_num_seqs},
    }
    annotate_notes(data)
    prov = provenance(path, rows)
    data["provenance"] = [p for p in data.get("provenance", []) if p.get("file") != prov["file"]] + [prov]
    return data


def annotate_notes(data: dict) -> None:
    """Say in the profile's notes which CPU-side terms the silicon fit set and which it could not."""
    rep = data.get("fit_report", {}).get("silicon_vllm_0.12")
    if not rep:
        return
    fitted = [p for p in rep["values"] if p in STEP_TERMS and p not in rep["not_identified"]]
    marker = " Silicon fit (vLLM 0.12):"
    notes = data.get("notes", "").split(marker)[0]
    data["notes"] = (f"{notes}{marker} {', '.join(fitted) or 'nothing'} fitted end to end on the Qwen3-32B rows "
                     f"(fit_report.silicon_vllm_0.12, docs/fidelity-v1.md); not identified there, so kept as priors: "
                     f"{', '.join(p for p in rep['not_identified'] if p in STEP_TERMS) or 'none'}.")


def calibrate_into(data: dict, path: Path, profile: Profile, engine: str, workers: int | None = None,
                   max_nfev: int = 30, log=print) -> None:
    """The ``servesim calibrate`` hook: fit the silicon rows of ``path`` and write the result into
    the profile dict ``data`` (coefficients, fit report, provenance)."""
    if engine != "vllm-v1":
        raise ValueError(f"{path}: the silicon rows are vLLM 0.12 (v1 engine) runs; calibrate them with "
                         f"--engine vllm-v1 (got {engine})")
    rows = load_silicon(path)
    client = client_preset("aiperf")
    log(f"silicon rows: {len(rows)}; fitting {', '.join(DEFAULT_PARAMS)} by simulation in the loop "
        f"(aiperf client, {PROTOCOL.warmup_per_user}N warm-up + {PROTOCOL.counted_per_user}N counted)")
    with Simulator(workers if workers is not None else 2) as sim:
        f = fit(rows, profile, client, DEFAULT_PARAMS, sim, max_nfev=max_nfev, log=log)
    update_profile(data, f, rows, path, client)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ..sim.data_paths import find_shared_data
    from ..sim.profile import default_profile, load_profile
    from . import silicon_fit
    ap = argparse.ArgumentParser(prog="python -m servesim.calibrate.silicon",
                                 description=(silicon_fit.__doc__ or "").split("\n\n")[0])
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
    add_args(ap, EngineArgs, ("max_num_batched_tokens",), {"max_num_batched_tokens": {
        "help": "the runs' vLLM token budget per step [tokens] (default: the inferred 2048; vllm serve's own "
                "default on H100 is 8192) (vLLM --max-num-batched-tokens)"}})
    args = ap.parse_args(argv)
    try:
        path = Path(args.csv) if args.csv else find_shared_data(SILICON_FILE)
        rows = load_silicon(path)
        profile = load_profile(args.profile) if args.profile else default_profile("h100-sxm", "vllm-v1")
        client = client_preset(args.client)
        params = tuple(p.strip() for p in args.params.split(",") if p.strip())
        bad = [p for p in params if p not in FITTABLE]
        if bad:
            raise ValueError(f"--params: {bad} cannot be fitted here; valid: {sorted(FITTABLE)}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    report: dict = {}
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
