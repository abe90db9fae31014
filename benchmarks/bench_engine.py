"""Engine speed and memory benchmark (issue: "simulation engine", Performance).

Simulates ShareGPT-length requests for Llama-3.1-8B on one H100 SXM (vllm-v1, shipped profile)
under Poisson arrivals at 80% of the saturating rate, and prints simulated requests per
wall-clock second on one core.  The saturating rate is measured first, as the request throughput
of a large burst (the most the replica completes per second when it is never idle).

    python benchmarks/bench_engine.py                 # 100,000 requests (target >= 10,000 req/s)
    python benchmarks/bench_engine.py --memory        # also 1,000,000 requests, peak RSS (< 2 GiB)

Needs the ShareGPT length table from ../shared/data (or $SERVESIM_DATA).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from servesim.sim.config import make_engine_config
from servesim.sim.gpus import get_gpu
from servesim.sim.model_catalog import get_model
from servesim.sim.runner import SimOptions, simulate
from servesim.sim.workload import WorkloadSpec, build_workload


def config(engine: str):
    return make_engine_config(get_model("llama-3.1-8b"), get_gpu("h100-sxm"), engine)


def saturating_rate(engine: str, n: int, seed: int) -> float:
    burst = build_workload(WorkloadSpec(kind="burst", num_requests=n, dataset="sharegpt-conversations"), seed=seed)
    return simulate(config(engine), burst).summary["request_throughput"]


def run(engine: str, n: int, rate: float, seed: int) -> dict:
    t0 = time.perf_counter()
    workload = build_workload(WorkloadSpec(kind="poisson", num_requests=n, rate=rate, dataset="sharegpt-conversations"), seed=seed)
    t_build = time.perf_counter() - t0
    result = simulate(config(engine), workload, SimOptions(seed=seed))
    return {"requests": n, "rate": rate, "build_s": t_build, "simulate_s": result.wall_s,
            "requests_per_s": n / result.wall_s, "steps": result.num_steps,
            "steps_per_s": result.num_steps / result.wall_s,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "summary": {k: result.summary[k] for k in ("request_throughput", "output_throughput",
                                                         "mean_ttft_ms", "mean_tpot_ms", "mean_num_running",
                                                         "peak_kv_usage", "num_preemptions")}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--engine", default="vllm-v1", choices=["vllm-v1", "vllm-v0"])
    p.add_argument("--load", type=float, default=0.8, help="fraction of the saturating rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=float, help="skip the saturation run and use this rate")
    p.add_argument("--memory", action="store_true", help="also run 1,000,000 requests in a fresh process")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    sat = args.rate / args.load if args.rate else saturating_rate(args.engine, 5000, args.seed)
    rate = args.load * sat
    res = run(args.engine, args.requests, rate, args.seed)
    res["saturating_rate"] = sat
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"Llama-3.1-8B on h100-sxm, {args.engine}, ShareGPT lengths, Poisson at {args.load:.0%} of the "
          f"saturating {sat:.2f} req/s = {rate:.2f} req/s")
    print(f"  {res['requests']:,} requests simulated in {res['simulate_s']:.2f} s wall "
          f"(+{res['build_s']:.2f} s building the workload)")
    print(f"  => {res['requests_per_s']:,.0f} simulated requests per wall-clock second on one core "
          f"({res['steps_per_s']:,.0f} engine steps/s); target >= 10,000")
    print(f"  peak RSS {res['peak_rss_mib']:.0f} MiB;  summary: {json.dumps(res['summary'])}")
    if args.memory:
        out = subprocess.run([sys.executable, __file__, "--requests", "1000000", "--rate", str(rate),
                              "--load", str(args.load), "--engine", args.engine, "--json"],
                             capture_output=True, text=True, check=True)
        big = json.loads(out.stdout)
        print(f"  1,000,000 requests: {big['simulate_s']:.1f} s wall ({big['requests_per_s']:,.0f} req/s), "
              f"peak RSS {big['peak_rss_mib']:.0f} MiB (target < 2048 MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
