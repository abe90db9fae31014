"""Subcommands ``servesim calibrate`` and ``servesim validate``."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .. import argtypes as at
from ..sim.engine_args import EngineArgs


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="fit a profile from measurements",
                       description="Fit step-cost, KV-capacity and power coefficients from kernel tables, "
                                   "probe runs and end-to-end results (see docs/calibration.md).")
    p.add_argument("inputs", nargs="+", help="kernel-table folders, ML.ENERGY CSV, aiconfigurator silicon CSV, "
                   "probe run directories, vllm bench --save-result files (a folder or glob of them: one deployment)")
    p.add_argument("-o", "--output", required=True, help="profile JSON to write")
    at.add_args(p, EngineArgs, ("engine", "gpu"), {"engine": {
        "default": "vllm-v0", "help": "engine policy the measurements came from (default vllm-v0: ML.ENERGY used "
                                      "vLLM 0.5.4)"}})
    p.add_argument("--base", help="start from this profile instead of the shipped one")
    p.add_argument("--params", help="comma-separated step coefficients to fit end to end "
                   "(default step_overhead_s,per_seq_overhead_s,eff_attn_decode)")
    p.add_argument("--start", help="starting values of the end-to-end fit, e.g. step_overhead_s=0.02,per_seq_overhead_s=3e-4")
    p.add_argument("--workers", type=at.POSITIVE_INT, help="simulation processes (default: all cores)")
    p.add_argument("--max-nfev", type=at.POSITIVE_INT, default=30, help="most evaluations of the end-to-end fit")
    d = p.add_argument_group("deployment of bench results (what the files do not record)")
    d.add_argument("--name", help="profile/deployment name (default: the output file's stem)")
    d.add_argument("--engine-version", help="vLLM version the deployment ran, e.g. 0.6.1")
    at.add_args(d, EngineArgs, ("num_scheduler_steps", "max_num_seqs", "gpu_memory_utilization"), {
        "num_scheduler_steps": {"default": 1, "help": "vLLM 0.6 multi-step decode steps per pass (default 1)"},
        "max_num_seqs": {"help": "server's max_num_seqs (default: the engine's)"}})
    d.add_argument("--bootstrap", type=at.NON_NEGATIVE_INT, default=200, help="bootstrap replicates over runs (0: none)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_calibrate)

    v = sub.add_parser("validate", help="compare a measured run with its simulation",
                       description="Simulate exactly the workload of a measured run and print measured vs "
                                   "simulated metrics with relative errors.")
    v.add_argument("measured", help="vllm bench serve --save-result JSON (with or without --save-detailed), a "
                   "folder or glob of them (one row per run), or a servesim measure run directory")
    at.add_args(v, EngineArgs, ("profile", "model", "gpu", "engine", "tensor_parallel_size", "max_num_seqs",
                                "max_num_batched_tokens", "max_model_len", "gpu_memory_utilization", "num_gpu_blocks",
                                "num_scheduler_steps"), {
        "profile": {"flags": ("-p", "--profile"), "type": None,
                    "help": "profile JSON or shipped name (default: the shipped one for --gpu/--engine)"},
        "model": {"default": None, "help": "model (default: from the measured file)"},
        "num_scheduler_steps": {"help": "vllm-v0 multi-step (default: the profile's deployment)"}})
    v.add_argument("--request-rate", type=at.RATE, help="override the file's request rate (inf: burst)")
    v.add_argument("--burstiness", type=at.float_range(0.0, allow_inf=True))
    v.add_argument("--max-concurrency", type=at.POSITIVE_INT)
    v.add_argument("--seed", type=at.SEED, default=0)
    v.add_argument("--point", help="run directories: only this probe point (default: every load point)")
    v.add_argument("--json", action="store_true", help="print the comparison as JSON")
    v.add_argument("--plot", help="folders/globs: write the predicted-vs-measured plot here (default validate.png)")
    v.set_defaults(func=cmd_validate)


def cmd_calibrate(args) -> int:
    from .pipeline import calibrate
    from .report import write_report
    params = tuple(p.strip() for p in args.params.split(",")) if args.params else None
    start = _start_values(args.start) if args.start else None
    out_dir = Path(args.output).parent
    at.check_writable_dir(out_dir if str(out_dir) else ".", "-o/--output")  # before the fit, not after
    from ..sim.gpus import get_gpu
    from .bench_runs import Deployment
    out = Path(args.output)
    name = args.name or out.stem
    dep = Deployment(name=name, engine=args.engine, engine_version=args.engine_version or "", gpu=get_gpu(args.gpu).name,
                     num_scheduler_steps=args.num_scheduler_steps, max_num_seqs=args.max_num_seqs,
                     gpu_memory_utilization=args.gpu_memory_utilization)
    data, table = calibrate(args.inputs, args.engine, args.gpu, args.base, params, args.workers, args.max_nfev,
                            start=start, log=lambda msg: print(msg, file=sys.stderr), deployment=dep,
                            bootstrap=args.bootstrap, progress=not args.no_progress)
    if args.name or "deployment" in data:
        data["name"] = name
    import shlex
    data["generated_by"] = "servesim " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["calibrate"] else \
        data.get("generated_by", "")
    if args.engine_version:
        data["engine_version"] = args.engine_version
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, out)
    report = write_report(data, table, out.with_suffix(""))
    print(f"wrote {out}; fit report in {report}")
    return 0


def _start_values(text: str) -> dict[str, float]:
    """``name=value,...`` as floats; raises ``ValueError`` quoting the text."""
    out = {}
    for item in text.split(","):
        name, eq, value = item.partition("=")
        try:
            if not eq or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--start {text!r}: expected name=value pairs, e.g. step_overhead_s=0.02,"
                             f"per_seq_overhead_s=3e-4 (bad item {item!r})") from None
    return out


def _is_many_runs(measured: str) -> bool:
    """A folder or glob of bench results, or one summary-only bench file: the per-run table path."""
    path = Path(measured)
    if any(c in measured for c in "*?[") and not path.exists():
        return True
    if path.is_dir():
        return not (path / "run.json").exists()
    if path.suffix == ".json" and path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
        return isinstance(data, dict) and "input_lens" not in data
    return False


def cmd_validate_runs(args) -> int:
    from ..sim.gpus import get_gpu
    from ..sim.profile import load_profile
    from .validate_runs import format_rows, median_abs_errors, plot_rows, run_validate
    gpu = get_gpu(args.gpu).name
    engine = load_profile(args.profile).engine if args.profile else args.engine
    rows, skipped, dep, profile = run_validate(
        [args.measured], args.profile, gpu, engine,
        {"num_scheduler_steps": args.num_scheduler_steps, "max_num_seqs": args.max_num_seqs,
         "gpu_memory_utilization": args.gpu_memory_utilization if args.gpu_memory_utilization != 0.9 else None})
    if args.json:
        print(json.dumps({"profile": profile.name, "deployment": dep.__dict__, "skipped": skipped, "runs": rows,
                          "median_abs_rel_error": median_abs_errors(rows)}, indent=2, default=str))
        return 0
    print(f"validate {args.measured}: profile {profile.name}, {dep.engine} num_scheduler_steps={dep.num_scheduler_steps} "
          f"max_num_seqs={dep.max_num_seqs or 'default'} gpu_memory_utilization={dep.gpu_memory_utilization}")
    for reason in skipped:
        print(f"  skipped {reason}")
    print(format_rows(rows))
    if len(rows) > 1 or args.plot:
        png = plot_rows(rows, args.plot or "validate.png", f"{args.measured} vs {profile.name}")
        print(f"plot: {png}")
    return 0


def cmd_validate(args) -> int:
    if _is_many_runs(args.measured):
        return cmd_validate_runs(args)
    from ..sim.config import create_engine_config
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
        cfg = create_engine_config(at.engine_args_from(args, model=model_name, max_model_len=max_len))
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
