"""The ``servesim`` command line: ``simulate``, and listings of models, GPUs and profiles.

Errors in the input (unknown model, impossible configuration, malformed trace) print one line
naming the problem and exit with status 2; nothing half-written is left behind.
"""
from __future__ import annotations

import argparse
import sys

from . import argtypes as at
from . import cluster_cli
from .calibrate import cli as calibrate_cli
from .measure import cli as measure_cli
from .scenarios import cli as scenarios_cli
from .serve import cli as serve_cli
from .sim.gpus import get_gpu, list_gpus
from .sim.lengths import SHAREGPT_CONVERSATIONS_STATS, SHAREGPT_FIRST_TURN_STATS
from .sim.model_catalog import get_model, list_models
from .sim.runner import SimOptions, simulate
from .sim.workload import LENGTH_FIELDS, WorkloadSpec, build_workload
from .simulate_run import (  # noqa: F401 (engine_config, workload_spec: re-exported)
    SUMMARY_ROWS,
    check_completed,
    engine_config,
    prepare_simulation,
    report_results,
    workload_spec,
)


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """The deployment and vLLM engine flags shared by ``simulate`` and ``serve``: every
    :class:`~servesim.sim.engine_args.EngineArgs` field (see :func:`engine_config`)."""
    at.add_engine_args(p)


def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="simulate one replica serving a workload",
                       description="Simulate one vLLM-style replica. Prints a summary with the keys of "
                                   "`vllm bench serve --save-result`.")
    add_engine_arguments(p)
    w = p.add_argument_group("workload (one of)")
    arrivals = w.add_mutually_exclusive_group()
    arrivals.add_argument("--burst", type=at.REQUEST_COUNT, metavar="N", help="N requests at t=0 (request rate inf)")
    arrivals.add_argument("--rate", type=at.RATE, help="Poisson (or gamma) arrivals at R requests/s")
    arrivals.add_argument("--concurrency", type=at.int_range(1, 1_000_000), metavar="N", help="closed loop with N users")
    arrivals.add_argument("--trace", type=at.input_file, help="replay a trace: Azure CSV, Mooncake JSONL or arrival_s,input_tokens,output_tokens CSV")
    arrivals.add_argument("--bench-json", type=at.input_file, help="lengths of a `vllm bench serve --save-result` JSON "
                          "(arrivals from --request-rate in the file unless --bench-rate)")
    w.add_argument("--bench-rate", type=at.RATE, help="arrival rate for --bench-json (inf: burst)")
    at.add_args(w, WorkloadSpec, ("burstiness", "think_time_s"), {
        "burstiness": {"default": 1.0, "help": "gamma shape for --rate (1 = Poisson; default 1)"},
        "think_time_s": {"help": "mean think time for --concurrency [s] (default 0)"}})
    c = p.add_argument_group("closed-loop client (--concurrency; docs/clients.md)")
    c.add_argument("--client", default="ideal", choices=["ideal", "vllm-bench", "aiperf", "guidellm"],
                   help="which benchmark client the users behave like (default ideal: no request overhead, "
                        "users in lock-step)")
    c.add_argument("--warmup-requests", type=at.NON_NEGATIVE_INT, help="warm-up requests before the counted ones (not in the summary)")
    c.add_argument("--client-overhead", type=at.NON_NEGATIVE, help="fixed send-to-engine time per request, s")
    c.add_argument("--client-jitter", type=at.NON_NEGATIVE, help="mean of the exponential extra delay per request, s")
    c.add_argument("--ramp-up", type=at.NON_NEGATIVE, help="spread the users' first requests over this many s")
    at.add_args(w, WorkloadSpec, ("num_requests", *LENGTH_FIELDS, "time_scale"), {
        "num_requests": {"type": at.REQUEST_COUNT, "help": "requests to simulate (default 1000; traces: all rows)"},
        "dataset": {"help": f"lengths: fixed --input-len/--output-len (default), vLLM-style random around them, "
                            f"sharegpt = first-turn prompts as `vllm bench serve --dataset-name sharegpt` sends them "
                            f"(shipped table: {SHAREGPT_FIRST_TURN_STATS}), sharegpt-conversations = whole "
                            f"conversations ({SHAREGPT_CONVERSATIONS_STATS}; table in ../shared/data), or dist = "
                            "--input-dist/--output-dist".replace("%", "%%")}})
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=at.SEED, default=0)
    r.add_argument("--seeds", type=at.POSITIVE_INT, default=1, metavar="N",
                   help="N independent replications (seeds SEED..SEED+N-1): the summary is their mean, with a "
                        "95%% confidence interval in <key>_ci for every figure")
    r.add_argument("--profile-draws", type=at.NON_NEGATIVE_INT, default=0, metavar="M",
                   help="also M parametric-bootstrap draws of the profile's coefficients (from their stderr) "
                        "at SEED: the intervals then include the profile's uncertainty, and "
                        "<key>_uncertainty_share says how much of it comes from the workload and the profile")
    r.add_argument("--out", help="write summary.json, config.json, requests.parquet, timeseries.csv here")
    r.add_argument("--json", action="store_true", help="print the summary JSON alone on stdout")
    r.add_argument("--sample-interval", type=at.float_range(1e-3, lo_open=False), default=0.2, help="time-series interval (simulated s)")
    r.add_argument("--exact", action="store_true", help="per-request reference path every step (slow)")
    p.set_defaults(func=cmd_simulate)
    cluster_cli.add_cluster_arguments(p, sub)  # --replicas etc. (run by servesim/cluster_cli.py), power-headroom


def print_summary(summary: dict, cfg, wall_s: float, file=sys.stdout) -> None:
    print(f"servesim: {cfg.model.name} on {cfg.parallel.tensor_parallel_size}x {cfg.gpu.name}, "
          f"{cfg.engine.value} (profile {cfg.profile.name})", file=file)
    for key, label, fmt in SUMMARY_ROWS:
        value = summary[key]
        text = fmt.format(int(round(value)) if fmt == "{:d}" else value)
        if f"{key}_ci" in summary:
            lo, hi = summary[f"{key}_ci"]
            if hi > lo:
                text += f"  [{fmt.format(int(round(lo))) if fmt == '{:d}' else fmt.format(lo)}, " \
                        f"{fmt.format(int(round(hi))) if fmt == '{:d}' else fmt.format(hi)}]"
        print(f"  {label:<46} {text}", file=file)
    if "seeds" in summary:
        print(f"  (means over seeds {summary['seeds']} and {summary['num_profile_draws']} profile draws; "
              f"[..] = {summary['confidence']:.0%} confidence interval)", file=file)
    print(f"  simulated in {wall_s:.2f} s wall ({summary['completed'] / max(wall_s, 1e-9):,.0f} req/s)", file=file)


def cmd_simulate(args) -> int:
    cfg, spec, workload = prepare_simulation(args)
    progress = not args.json and sys.stderr.isatty() and args.seeds == 1
    result = simulate(cfg, workload, SimOptions(sample_interval_s=args.sample_interval, exact=args.exact,
                                                progress=progress, seed=args.seed))
    status = check_completed(result, workload)
    if status is not None:
        return status
    if args.seeds > 1 or args.profile_draws > 0:
        from .sim.uncertainty import replicate_summary
        result.summary = replicate_summary(*replications(args, cfg, spec, result.summary))
    return report_results(args, result, cfg, spec, print_summary, {"seed": args.seed})


def replications(args, cfg, spec: WorkloadSpec, first: dict) -> tuple[list[dict], float, list[dict]]:
    """Summaries of the seed replications (the first given), the confidence, and of the profile draws."""
    from dataclasses import replace

    from .sim.uncertainty import perturb_profile, profile_rng
    options = SimOptions(sample_interval_s=args.sample_interval, exact=args.exact)
    seeds = [first] + [simulate(cfg, build_workload(spec, seed=s), replace(options, seed=s)).summary
                       for s in range(args.seed + 1, args.seed + args.seeds)]
    workload = build_workload(spec, seed=args.seed)
    draws = [simulate(replace(cfg, profile=perturb_profile(cfg.profile, profile_rng(args.seed, j))), workload,
                      replace(options, seed=args.seed)).summary for j in range(args.profile_draws)]
    return seeds, 0.95, draws


def cmd_list(args) -> int:
    if args.what == "models":
        for name in list_models():
            print(get_model(name).describe())
    elif args.what == "gpus":
        for name in list_gpus():
            g = get_gpu(name)
            print(f"{name:<12} {g.memory_bytes / 2**30:6.1f} GiB  {g.hbm_bandwidth_bytes_per_s / 1e12:4.2f} TB/s  "
                  f"{g.bf16_flops / 1e12:6.0f} TFLOP/s bf16  {g.tdp_w:5.0f} W")
    else:
        from .calibrate.profiles_list import describe_profiles
        print(describe_profiles())
    return 0


# The packages' own commands: each ``cli`` module exposes ``register(subparsers)``
# (calibrate.cli: calibrate, validate; measure.cli: measure; serve.cli: serve; scenarios.cli: sweep,
# regions, plan ...); a command's handler is ``args.func(args)`` returning the exit status.
COMMAND_MODULES = (calibrate_cli, measure_cli, serve_cli, scenarios_cli)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the flag and value (no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="servesim", description="Capacity-planning simulator for LLM serving")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"servesim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_simulate(sub)
    for what in ("models", "gpus", "profiles"):
        sp = sub.add_parser(what, help=f"list the built-in {what}")
        sp.set_defaults(func=cmd_list, what=what)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input prints ``servesim: error: ...`` (one line) and returns 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FileNotFoundError as exc:
        print(f"servesim: error: file not found: {exc.filename or exc}", file=sys.stderr)
        return 2
    except IsADirectoryError as exc:
        print(f"servesim: error: {exc.filename} is a directory; expected a file", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`
        sys.stderr.close()
        return 0
    except OSError as exc:  # permissions, a full disk, a read-only file system, a port in use
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"servesim: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except (ValueError, OverflowError) as exc:
        print(f"servesim: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("servesim: error: out of memory: the run is too large for this machine (fewer requests, "
              "a larger --sample-interval, or a shorter trace)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("servesim: interrupted", file=sys.stderr)
        return 130
