"""Effect of the v1 fixes the vLLM oracle found (docs/engine.md, "Checked against vLLM itself").

``python benchmarks/bench_v1_oracle_fixes.py [--num-requests N] [--rate R] [--num-gpu-blocks B]``
simulates a Poisson run of vLLM's random dataset (1024/256 tokens, range ratio 0.5) on
Llama-3.1-8B / H100 SXM with the shipped profile, under the four combinations of prefix caching
(its self-hits after preemption are the fix) and the full-prompt admission gate
(``scheduler_reserve_full_isl``), and prints preemptions, output throughput, mean TTFT and the
wall time of each run.  With both off the engine behaves as it did before the fixes for a
workload without prefix hashes.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

from servesim.sim.config import make_engine_config
from servesim.sim.gpus import get_gpu
from servesim.sim.model_catalog import get_model
from servesim.sim.runner import simulate
from servesim.sim.workload import WorkloadSpec, build_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-requests", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--num-gpu-blocks", type=int, default=3000)
    args = ap.parse_args()
    wl = build_workload(WorkloadSpec(kind="poisson", num_requests=args.num_requests, rate=args.rate, input_len=1024,
                                     output_len=256, dataset="random", range_ratio=0.5), seed=0)
    print("prefix_caching full_isl preemptions output_tok_s mean_ttft_ms mean_tpot_ms wall_s")
    for caching in (True, False):
        for full_isl in (True, False):
            cfg = make_engine_config(get_model("llama-3.1-8b"), get_gpu("h100-sxm"), "vllm-v1", max_model_len=4096,
                                     enable_prefix_caching=caching, num_gpu_blocks=args.num_gpu_blocks)
            cfg = replace(cfg, scheduler=replace(cfg.scheduler, scheduler_reserve_full_isl=full_isl))
            t = time.perf_counter()
            s = simulate(cfg, wl).summary
            print(f"{caching!s:14} {full_isl!s:8} {s['num_preemptions']:11d} {s['output_throughput']:12.1f} "
                  f"{s['mean_ttft_ms']:12.1f} {s['mean_tpot_ms']:12.2f} {time.perf_counter() - t:6.2f}")


if __name__ == "__main__":
    main()
