"""Benchmark: a 40-point x 3-seed demand sweep of Llama-3.1-8B on one H100 SXM, end to end.

Poisson arrivals from 1 to 40 req/s, prompt 1,024 and output 256 tokens, 30 simulated seconds of
arrivals per point (at least 100, at most 1,200 requests), vLLM v1 defaults; 120 simulations on
every local core, then the regions and (unless --no-report) report.html.  Prints the wall time of
the simulations and of the whole sweep.  Target: under 60 s on a 2-core machine.

    python benchmarks/bench_sweep.py [--workers N] [--no-report] [--out DIR] [--executor dask]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from servesim.scenarios.loader import scenario_from_dict
from servesim.scenarios.sweep import SweepOptions, run_sweep

SCENARIO = {
    "name": "bench-sweep",
    "description": "40 rates x 3 seeds, Llama-3.1-8B on one H100 SXM",
    "base_variant": "llama-3.1-8b",
    "deployment": {"model": "llama-3.1-8b", "gpu": "h100-sxm"},
    "workload": {"kind": "poisson", "input_len": 1024, "output_len": 256, "duration_s": 30,
                 "min_requests": 100, "max_requests": 1200},
    "sweep": {"axis": "rate", "points": {"start": 1, "stop": 40, "num": 40}, "seeds": 3},
    "economics": {"prices": {"input_per_1m_tokens": 0.05, "output_per_1m_tokens": 0.20},
                  "costs": {"gpu_rental_per_gpu_hour": 2.5, "energy_price_per_kwh": 0.12, "pue": 1.3}},
    "slos": ["p99_ttft_ms <= 2000", "p99_tpot_ms <= 60"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, help="processes (default: every core)")
    p.add_argument("--executor", default="local", choices=["local", "dask"])
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--out", help="keep the sweep folder here (default: a temporary folder)")
    args = p.parse_args()
    sf = scenario_from_dict(SCENARIO, "bench_sweep.py")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp) / "bench-sweep"
        t0 = time.perf_counter()
        result = run_sweep(sf, SweepOptions(out_dir=out, executor=args.executor, workers=args.workers,
                                            progress=False, report=False))
        t_sim = time.perf_counter() - t0
        if not args.no_report:
            from servesim.scenarios.report import write_report
            write_report(out, sf, result.curve, result.regions)
        total = time.perf_counter() - t0
    sims = result.num_run
    requests = int(result.curve["num_requests"].sum())
    r = result.regions[0]
    print(f"bench_sweep: {sims} simulations ({requests:,} requests) on {args.workers or os.cpu_count()} "
          f"{args.executor} workers")
    print(f"  simulations + curve + regions: {t_sim:6.1f} s wall ({sims / t_sim:.1f} points/s)")
    if not args.no_report:
        print(f"  with report.html:              {total:6.1f} s wall")
    print(f"  regions: equilibrium {r.equilibrium.describe(' req/s')}; saturation {r.saturation.describe(' req/s')}; "
          f"break-even {r.break_even.describe(' req/s')}; SLO limit {r.slo_limit.describe(' req/s')}")
    print(f"  target < 60 s: {'met' if total < 60 else 'MISSED'}")


if __name__ == "__main__":
    main()
