"""What every ``servesim simulate`` path does around the simulation (one replica or a cluster).

The engine configuration and the workload built from the flags (:func:`engine_config`,
:func:`workload_spec`), the output folder checked and an empty workload refused before any work
(:func:`prepare_simulation`), a run where nothing completed turned into an error
(:func:`check_completed`), and the results written and printed (:func:`report_results`).  Used
by ``servesim/cli.py`` and ``servesim/cluster_cli.py``, which import this module and not each other.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import argtypes as at
from .sim.clients import client_preset
from .sim.config import EngineConfig, create_engine_config
from .sim.runner import write_results
from .sim.workload import LENGTH_FIELDS, WorkloadSpec, build_workload


def workload_spec(args: argparse.Namespace) -> WorkloadSpec:
    """The :class:`WorkloadSpec` of the workload flags: the arrival flag chosen (``--burst``,
    ``--rate``, ``--concurrency``, ``--trace``, ``--bench-json``) sets the kind; the other
    flags are the spec's own fields (generated from it)."""
    lengths = {name: getattr(args, name) for name in LENGTH_FIELDS}
    n = args.num_requests
    if args.burst is not None:
        return WorkloadSpec(kind="burst", num_requests=args.burst, **lengths)
    if args.concurrency is not None:
        client = client_preset(args.client, num_warmup_requests=args.warmup_requests,
                               request_overhead_s=args.client_overhead, jitter_s=args.client_jitter,
                               ramp_up_s=args.ramp_up)
        return WorkloadSpec(kind="closed", num_requests=n or 1000, num_users=args.concurrency,
                            think_time_s=args.think_time_s, client=client, **lengths)
    if args.trace:
        return WorkloadSpec(kind="trace", trace_path=args.trace, num_requests=n, time_scale=args.time_scale)
    if args.bench_json:
        return WorkloadSpec(kind="bench_json", trace_path=args.bench_json, num_requests=n, rate=args.bench_rate,
                            burstiness=args.burstiness if args.bench_rate else None)
    rate = args.rate if args.rate is not None else 10.0
    kind = "poisson" if args.burstiness == 1.0 else "gamma"
    return WorkloadSpec(kind=kind, num_requests=n or 1000, rate=rate, burstiness=args.burstiness, **lengths)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The :class:`EngineConfig` of the engine flags (:func:`add_engine_arguments`)."""
    return create_engine_config(at.engine_args_from(args))


SUMMARY_ROWS = (
    ("completed", "requests completed", "{:d}"), ("failed", "requests rejected", "{:d}"),
    ("duration", "duration (s)", "{:.2f}"), ("request_throughput", "request throughput (req/s)", "{:.2f}"),
    ("output_throughput", "output throughput (tok/s)", "{:.1f}"),
    ("total_token_throughput", "total token throughput (tok/s)", "{:.1f}"),
    ("mean_ttft_ms", "TTFT mean (ms)", "{:.1f}"), ("median_ttft_ms", "TTFT median (ms)", "{:.1f}"),
    ("p99_ttft_ms", "TTFT p99 (ms)", "{:.1f}"), ("mean_tpot_ms", "TPOT mean (ms)", "{:.2f}"),
    ("p99_tpot_ms", "TPOT p99 (ms)", "{:.2f}"), ("mean_itl_ms", "ITL mean (ms)", "{:.2f}"),
    ("p99_itl_ms", "ITL p99 (ms)", "{:.2f}"), ("mean_e2el_ms", "E2E latency mean (ms)", "{:.1f}"),
    ("kv_capacity_tokens", "KV capacity (tokens)", "{:d}"), ("num_gpu_blocks", "GPU blocks", "{:d}"),
    ("peak_kv_usage", "peak KV usage", "{:.1%}"), ("num_preemptions", "preemptions", "{:d}"),
    ("mean_num_running", "mean running requests", "{:.1f}"),
    ("mean_gpu_power_w", "mean GPU power (W, profile's constant power model)", "{:.0f}"),
)


EXIT_NOTHING_COMPLETED = 1


def prepare_simulation(args):
    """What every simulate path does before the work: the output folder checked, the engine
    configuration and the workload built, an empty workload refused.  Returns (cfg, spec, workload)."""
    if args.out:
        at.check_writable_dir(args.out)  # before the work, not after it
    cfg = engine_config(args)
    spec = workload_spec(args)
    workload = build_workload(spec, seed=args.seed)
    if len(workload) == 0:
        raise ValueError(f"the workload has no requests ({spec.trace_path or spec.kind.value}): nothing to simulate")
    return cfg, spec, workload


def check_completed(result, workload) -> int | None:
    """A run where nothing completed is an error with the reason (``EXIT_NOTHING_COMPLETED``, not
    0.0 ms latencies); rejections are warned about.  ``None`` when there is a result to report."""
    failed = result.summary["failed"]
    reason = getattr(result, "rejection_reason", "") or "see the summary"
    if result.summary["completed"] == 0:
        print(f"servesim: error: no request completed: all {failed} were rejected ({reason}); "
              "raise --max-model-len or shorten the requests", file=sys.stderr)
        return EXIT_NOTHING_COMPLETED
    if failed:
        print(f"servesim: warning: {failed} of {len(workload)} requests were rejected ({reason})", file=sys.stderr)
    return None


def report_results(args, result, cfg, spec, print_fn, extra: dict | None = None) -> int:
    """Write ``--out`` and print the summary (``--json``: the summary alone), for every simulate path."""
    if args.out:
        write_results(result, args.out, {"workload": {k: (v.value if hasattr(v, "value") else v)
                                                      for k, v in vars(spec).items()}, **(extra or {})})
    if args.json:
        print(json.dumps(result.summary, indent=2))
    else:
        print_fn(result.summary, cfg, result.wall_s)
        if args.out:
            print(f"  results written to {Path(args.out).resolve()}")
    return 0
