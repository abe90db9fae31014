"""Subcommands ``servesim calibrate`` and ``servesim validate``."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="fit a profile from measurements",
                       description="Fit step-cost, KV-capacity and power coefficients from kernel tables, "
                                   "probe runs and end-to-end results (see docs/calibration.md).")
    p.add_argument("inputs", nargs="+", help="kernel-table folders, ML.ENERGY CSV, aiconfigurator silicon CSV, "
                   "probe run directories")
    p.add_argument("-o", "--output", required=True, help="profile JSON to write")
    p.add_argument("--engine", default="vllm-v0", choices=["vllm-v0", "vllm-v1"],
                   help="engine policy the measurements came from (default vllm-v0: ML.ENERGY used vLLM 0.5.4)")
    p.add_argument("--gpu", default="h100-sxm")
    p.add_argument("--base", help="start from this profile instead of the shipped one")
    p.add_argument("--params", help="comma-separated step coefficients to fit end to end "
                   "(default step_overhead_s,per_seq_overhead_s,eff_attn_decode)")
    p.add_argument("--start", help="starting values of the end-to-end fit, e.g. step_overhead_s=0.02,per_seq_overhead_s=3e-4")
    p.add_argument("--workers", type=int, help="simulation processes (default: all cores)")
    p.add_argument("--max-nfev", type=int, default=30, help="most evaluations of the end-to-end fit")
    p.set_defaults(func=cmd_calibrate)

    v = sub.add_parser("validate", help="compare a measured run with its simulation",
                       description="Simulate exactly the workload of a measured run and print measured vs "
                                   "simulated metrics with relative errors.")
    v.add_argument("measured", help="vllm bench serve --save-result JSON, or a servesim measure run directory")
    v.add_argument("-p", "--profile", help="profile JSON (default: the shipped one for --gpu/--engine)")
    v.add_argument("--model", help="model (default: from the measured file)")
    v.add_argument("--gpu", default="h100-sxm")
    v.add_argument("--engine", default="vllm-v1", choices=["vllm-v1", "vllm-v0"])
    v.add_argument("--tp", type=int, default=1)
    v.add_argument("--max-num-seqs", type=int)
    v.add_argument("--max-num-batched-tokens", type=int)
    v.add_argument("--max-model-len", type=int)
    v.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    v.add_argument("--num-gpu-blocks", type=int)
    v.add_argument("--request-rate", type=float, help="override the file's request rate (inf: burst)")
    v.add_argument("--burstiness", type=float)
    v.add_argument("--max-concurrency", type=int)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--point", help="run directories: only this probe point (default: every load point)")
    v.add_argument("--json", action="store_true", help="print the comparison as JSON")
    v.set_defaults(func=cmd_validate)


def cmd_calibrate(args) -> int:
    from .pipeline import calibrate
    from .report import write_report
    params = tuple(p.strip() for p in args.params.split(",")) if args.params else None
    start = dict((k, float(v)) for k, v in (item.split("=") for item in args.start.split(","))) if args.start else None
    data, table = calibrate(args.inputs, args.engine, args.gpu, args.base, params, args.workers, args.max_nfev,
                            start=start, log=lambda msg: print(msg, file=sys.stderr))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, out)
    report = write_report(data, table, out.with_suffix(""))
    print(f"wrote {out}; fit report in {report}")
    return 0


def cmd_validate(args) -> int:
    from ..sim.config import make_engine_config
    from ..sim.gpus import get_gpu
    from ..sim.model_catalog import get_model
    from ..sim.profile import load_profile
    from .validate import format_table, load_measured, validate
    runs = load_measured(args.measured, args.point, **({} if Path(args.measured).is_dir() else {
        "rate": args.request_rate, "burstiness": args.burstiness, "max_concurrency": args.max_concurrency,
        "seed": args.seed}))
    results = []
    for run in runs:
        model_name = args.model or run.settings.get("model_id") or run.settings.get("model")
        if not model_name:
            raise ValueError("the measured run does not name its model: pass --model")
        max_len = args.max_model_len or run.settings.get("max_model_len")
        cfg = make_engine_config(get_model(model_name), get_gpu(args.gpu), args.engine, tp=args.tp,
                                 profile=load_profile(args.profile) if args.profile else None,
                                 max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                                 max_model_len=max_len, gpu_memory_utilization=args.gpu_memory_utilization,
                                 num_gpu_blocks=args.num_gpu_blocks)
        rows, _ = validate(run, cfg, args.seed)
        results.append((run, cfg, rows))
    if args.json:
        print(json.dumps([{"measured": run.name, "profile": cfg.profile.name, "notes": run.notes,
                           "rows": [{"metric": r.metric, "measured": r.measured, "simulated": r.simulated,
                                     "rel_error": r.rel_error} for r in rows]} for run, cfg, rows in results],
                         indent=2))
        return 0
    for run, cfg, rows in results:
        print(f"validate {run.name}: {cfg.model.name} on {cfg.parallel.tensor_parallel_size}x {cfg.gpu.name}, "
              f"{cfg.engine.value}, profile {cfg.profile.name}")
        for note in run.notes:
            print(f"  note: {note}")
        print(format_table(rows))
        print()
    return 0
