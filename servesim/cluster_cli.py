"""``servesim simulate`` on a homogeneous cluster: ``--replicas N`` (collocated) or
``--prefill-replicas P --decode-replicas D`` (disaggregated), with ``--router R``.

:func:`add_cluster_arguments` adds the flags to the ``simulate`` parser; :func:`wants_cluster`
says whether they ask for a cluster; :func:`cmd_simulate_cluster` runs it.  Heterogeneous
clusters are described in a scenario's ``cluster:`` section (``docs/cluster.md``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .scenarios.cluster_point import power_headroom
from .sim.cluster_config import homogeneous_cluster
from .sim.cluster_runner import simulate_cluster
from .sim.router import RouterConfig, RouterKind
from .sim.runner import SimOptions
from .simulate_run import SUMMARY_ROWS, check_completed, prepare_simulation, report_results


def add_cluster_arguments(p: argparse.ArgumentParser, sub=None) -> None:
    """The cluster flags of ``simulate``; a run that uses them goes to :func:`cmd_simulate_cluster`,
    any other to the command already set on ``p``.  With the subparsers ``sub``, also registers
    ``servesim power-headroom``."""
    if sub is not None:
        register(sub)
    single = p.get_default("func")

    def dispatch(args) -> int:
        return cmd_simulate_cluster(args) if wants_cluster(args) else single(args)

    p.set_defaults(func=dispatch)
    g = p.add_argument_group("cluster (docs/cluster.md)")
    g.add_argument("--replicas", type=int, default=0, metavar="N", help="N collocated replicas behind --router")
    g.add_argument("--prefill-replicas", type=int, default=0, metavar="P", help="P prefill replicas (disaggregated)")
    g.add_argument("--decode-replicas", type=int, default=0, metavar="D", help="D decode replicas (disaggregated)")
    g.add_argument("--router", default="round-robin",
                   help=f"routing policy: {', '.join(k.value for k in RouterKind)} (default round-robin)")
    g.add_argument("--router-staleness", type=float, default=1.0, metavar="S",
                   help="seconds between the router's snapshots of replica state (0: fresh; default 1)")
    g.add_argument("--kv-link", default="infiniband", help="KV transfer link: nvlink, infiniband, pcie")
    g.add_argument("--power-cap", type=float, metavar="W", help="power cap per GPU (W)")
    g.add_argument("--power-budget", type=float, metavar="W", help="cluster GPU power budget (W), split evenly")


def wants_cluster(args) -> bool:
    return bool(args.replicas or args.prefill_replicas or args.decode_replicas
                or args.power_cap is not None or args.power_budget is not None)


def cluster_config(args, engine):
    for name in ("replicas", "prefill_replicas", "decode_replicas"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(args, name)})")
    replicas = args.replicas or (0 if args.prefill_replicas or args.decode_replicas else 1)
    router = RouterConfig(args.router, staleness_s=args.router_staleness, seed=args.seed)
    return homogeneous_cluster(engine, replicas, args.prefill_replicas, args.decode_replicas, router,
                               link=args.kv_link, power_cap_w=args.power_cap, power_budget_w=args.power_budget)


def print_cluster_summary(summary: dict, cfg, wall_s: float, file=sys.stdout) -> None:
    mode = "disaggregated" if summary["disaggregated"] else "collocated"
    print(f"servesim cluster: {summary['num_replicas']} replicas ({mode}, {summary['num_gpus']} GPUs), "
          f"router {summary['router']} (staleness {summary['router_staleness_s']:g} s)", file=file)
    for key, label, fmt in SUMMARY_ROWS:
        print(f"  {label:<46} {fmt.format(summary[key])}", file=file)
    print(f"  {'energy per output token (J)':<46} {summary['energy_per_output_token_j']:.3f}", file=file)
    print(f"  {'energy per request (J)':<46} {summary['energy_per_request_j']:.1f}", file=file)
    if summary["disaggregated"]:
        print(f"  {'KV transfer mean / p99 (ms)':<46} {summary['mean_kv_transfer_ms']:.2f} / "
              f"{summary['p99_kv_transfer_ms']:.2f}", file=file)
        print(f"  {'wait for decode blocks mean (ms)':<46} {summary['mean_kv_wait_ms']:.2f}", file=file)
    print("  per replica: replica role completed p99_ttft_ms busy_fraction mean_gpu_power_w", file=file)
    for r in summary["per_replica"]:
        print(f"    {r['replica']:>4} {r['role']:<10} {r['completed']:>8d} {r['p99_ttft_ms']:>10.1f} "
              f"{r['busy_fraction']:>8.1%} {r['mean_gpu_power_w']:>8.0f}", file=file)
    print(f"  simulated in {wall_s:.2f} s wall ({summary['completed'] / max(wall_s, 1e-9):,.0f} req/s)", file=file)


def cmd_simulate_cluster(args) -> int:
    single_cfg, spec, workload = prepare_simulation(args)
    cfg = cluster_config(args, single_cfg)
    result = simulate_cluster(cfg, workload, SimOptions(sample_interval_s=args.sample_interval, exact=args.exact,
                                                        seed=args.seed))
    status = check_completed(result, workload)
    if status is not None:
        return status
    return report_results(args, result, cfg, spec, print_cluster_summary)


def cmd_power_headroom(args) -> int:
    path = Path(args.sweep_dir) / "curve.csv"
    if not path.exists():
        raise FileNotFoundError(str(path))
    table, answer = power_headroom(pd.read_csv(path), args.baseline, args.metric, args.max_slowdown, args.max_demand)
    print(f"{args.metric} slowdown against {args.baseline} at the same demand (worst over the sweep):")
    for r in table.itertuples():
        print(f"  {r.variant:<20} {r.num_gpus:>5d} GPUs  worst {r.worst_slowdown:+8.1%} at {r.at_demand:g}  "
              f"{'fits' if r.fits else 'exceeds'} {args.max_slowdown:.0%}")
    print(f"most GPUs within {args.max_slowdown:.0%}: {answer or 'none'}")
    return 0


def register(sub) -> None:
    """``servesim power-headroom``: the POLCA question on a finished sweep of cluster variants."""
    p = sub.add_parser("power-headroom", help="how many servers fit a power budget within a p99 slowdown",
                       description="Reads SWEEP_DIR/curve.csv of a sweep whose variants are clusters under one "
                                   "power budget (e.g. the shipped polca-power-budget) and reports each variant's "
                                   "worst slowdown against --baseline at the same demand (docs/cluster.md).")
    p.add_argument("sweep_dir")
    p.add_argument("--baseline", required=True, help="the variant to compare against (e.g. the uncapped one)")
    p.add_argument("--metric", default="p99_e2el_ms", help="curve column (default p99_e2el_ms)")
    p.add_argument("--max-slowdown", type=float, default=0.1, help="allowed slowdown, a fraction (default 0.1)")
    p.add_argument("--max-demand", type=float, help="only demands up to this value")
    p.set_defaults(func=cmd_power_headroom)
