"""Cluster speed, memory and router-decision cost (issue 14, Performance).

1. Router decisions: the cost of one ``choose`` for each policy at 4, 16 and 64 replicas (a snapshot
   refresh every 1,000 decisions, as with a 1 s staleness at 1,000 req/s); O(1) or O(log N) shows
   as a flat or slowly growing column.
2. A 16-replica collocated cluster of Llama-3.1-8B on H100 SXM (vllm-v1, shipped profile) serving
   the Azure 2023 conversation trace, tiled to ``--requests`` rows and rescaled to
   ``--rate-per-replica`` x 16 requests/s, behind ``--router``.  Prints simulated requests per
   wall-clock second and per CPU second of the (single-threaded) process, whose difference is the
   share of a core the machine gave it, and the peak RSS of the process.

    python benchmarks/bench_cluster.py                       # 100,000 requests
    nice python benchmarks/bench_cluster.py --requests 1000000
    python benchmarks/bench_cluster.py --routers-only        # only the router-decision table

Needs ``traces/azure2023_conv.csv`` from ../shared/data (or $SERVESIM_DATA).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np

from servesim.sim.cluster_config import homogeneous_cluster
from servesim.sim.cluster_runner import simulate_cluster
from servesim.sim.config import make_engine_config
from servesim.sim.data_paths import find_shared_data
from servesim.sim.gpus import get_gpu
from servesim.sim.model_catalog import get_model
from servesim.sim.router import ReplicaLoad, RouterConfig, RouterKind, make_router
from servesim.sim.runner import SimOptions
from servesim.sim.traces import load_trace, rescale_arrivals
from servesim.sim.workload import Workload


def router_cost_ns(kind: RouterKind, n: int, decisions: int = 200_000) -> float:
    rng = np.random.default_rng(0)
    router = make_router(RouterConfig(kind, staleness_s=1.0), [100_000] * n, [16] * n)
    prompts = rng.integers(100, 4000, decisions).tolist()
    hashes = [tuple(range(k % 50, k % 50 + 4)) for k in range(decisions)] if kind is RouterKind.PREFIX_AWARE else None
    loads = [ReplicaLoad(int(q), int(q) * 300, float(q) / 1000) for q in rng.integers(0, 100, n)]
    t0 = time.process_time()  # CPU time: the machine may be shared
    for i in range(decisions):
        if i % 1000 == 0:
            router.refresh(loads)
        router.choose(prompts[i], 200, hashes[i] if hashes is not None else None)
    return (time.process_time() - t0) / decisions * 1e9


def tiled_trace(n: int, rate: float) -> Workload:
    """The Azure conversation trace repeated (arrival gaps kept) up to ``n`` rows, at mean ``rate``."""
    base = load_trace(find_shared_data("traces/azure2023_conv.csv"))
    reps = -(-n // len(base))
    gaps = np.diff(base.arrival_s, prepend=base.arrival_s[0])
    gaps[0] = float(np.mean(gaps[1:]))  # the gap between one copy's end and the next copy's start
    arrivals = np.cumsum(np.tile(gaps, reps)[:n]) - gaps[0]
    arrivals = rescale_arrivals(arrivals, rate=rate)
    return Workload(arrivals, np.tile(base.input_tokens, reps)[:n], np.tile(base.output_tokens, reps)[:n],
                    f"azure2023_conv x{reps}")


SIZES = (4, 16, 64)


def _print_routers(out: dict, as_json: bool) -> None:
    """The router-decision table; the last column is the 64- over the 4-replica cost (O(1) or
    O(log N): about 1, or at most log(64)/log(4) = 3)."""
    if as_json:
        print(json.dumps(out, indent=2))
        return
    print("router decision cost (CPU ns per choose, snapshot refresh every 1,000 decisions)")
    print(f"  {'router':<28}" + "".join(f"{n:>10} rep" for n in SIZES) + f"{'64/4':>8}")
    for kind, costs in out["router_ns_per_decision"].items():
        print(f"  {kind:<28}" + "".join(f"{costs[n]:>14,.0f}" for n in SIZES) + f"{costs[64] / costs[4]:>8.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--replicas", type=int, default=16)
    p.add_argument("--rate-per-replica", type=float, default=10.0, help="req/s per replica (default 10)")
    p.add_argument("--router", default="least-outstanding-tokens")
    p.add_argument("--staleness", type=float, default=1.0)
    p.add_argument("--skip-routers", action="store_true", help="skip the router-decision timing")
    p.add_argument("--routers-only", action="store_true", help="only the router-decision timing")
    p.add_argument("--decisions", type=int, default=200_000, help="router decisions timed per cell")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out: dict = {}
    if not args.skip_routers:
        out["router_ns_per_decision"] = {k.value: {n: router_cost_ns(k, n, args.decisions) for n in SIZES}
                                         for k in RouterKind}
    if args.routers_only:
        _print_routers(out, args.json)
        return 0
    workload = tiled_trace(args.requests, args.rate_per_replica * args.replicas)
    engine = make_engine_config(get_model("llama-3.1-8b"), get_gpu("h100-sxm"), "vllm-v1")
    cluster = homogeneous_cluster(engine, replicas=args.replicas,
                                  router=RouterConfig(args.router, staleness_s=args.staleness))
    t0, c0 = time.perf_counter(), time.process_time()
    result = simulate_cluster(cluster, workload, SimOptions(sample_interval_s=1.0))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    s = result.summary
    out["cluster"] = {"replicas": args.replicas, "router": args.router, "requests": args.requests,
                      "rate": args.rate_per_replica * args.replicas, "wall_s": wall,
                      "requests_per_s": args.requests / wall, "cpu_s": cpu,
                      "requests_per_cpu_s": args.requests / cpu,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "summary": {k: s[k] for k in ("completed", "request_throughput", "p99_ttft_ms", "mean_tpot_ms",
                                                    "num_preemptions", "busy_fraction", "energy_per_output_token_j")}}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if "router_ns_per_decision" in out:
        _print_routers(out, False)
    c = out["cluster"]
    print(f"{c['replicas']}-replica cluster, router {c['router']}, {c['requests']:,} requests of the Azure "
          f"conversation trace at {c['rate']:g} req/s")
    print(f"  simulated in {c['wall_s']:.1f} s wall: {c['requests_per_s']:,.0f} requests/s; "
          f"{c['cpu_s']:.1f} s of CPU (one core): {c['requests_per_cpu_s']:,.0f} requests per CPU second; "
          f"peak RSS {c['peak_rss_mib']:,.0f} MiB")
    print(f"  {json.dumps(c['summary'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
