"""The 10,000-request Poisson run of issue 10, with timings: ``python -m servesim.oracle.run_poisson``.

Runs the engine's fast path (decode batch and bulk decode runs) and, with ``--exact``, its exact
path too, replays the stream through vLLM's scheduler, and prints step counts, the first mismatch
(none expected), and the wall time of each part.  Exit status 1 on any mismatch.
"""
from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-requests", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--num-gpu-blocks", type=int, default=2000)
    ap.add_argument("--exact", action="store_true", help="also compare the engine's exact path")
    ap.add_argument("--prefix-caching", action="store_true")
    args = ap.parse_args(argv)

    from servesim.sim.config import make_engine_config
    from servesim.sim.gpus import get_gpu
    from servesim.sim.model_catalog import get_model

    from .records import first_mismatch
    from .replay import poisson_workload, run_engine_recorded

    t0 = time.perf_counter()
    from .vllm_driver import VLLM_VERSION, run_vllm
    t_import = time.perf_counter() - t0
    cfg = make_engine_config(get_model("llama-3.1-8b"), get_gpu("h100-sxm"), "vllm-v1", max_model_len=2048,
                             num_gpu_blocks=args.num_gpu_blocks, max_num_seqs=128, max_num_batched_tokens=2048,
                             enable_prefix_caching=args.prefix_caching)
    wl = poisson_workload(args.num_requests, args.rate, args.seed, 1500, 400)
    status = 0
    logs = {}
    for exact in ([False, True] if args.exact else [False]):
        t = time.perf_counter()
        recorder, engine = run_engine_recorded(cfg, wl, exact=exact)
        logs[exact] = (recorder, engine, time.perf_counter() - t)
    recorder = logs[False][0]
    t = time.perf_counter()
    want = run_vllm(recorder.oracle_config(), recorder.stream())
    t_vllm = time.perf_counter() - t
    print(f"vLLM {VLLM_VERSION} (import {t_import:.1f} s): {want.num_steps} steps, "
          f"{len(want.finish_step)} finished, {len(want.rejected)} rejected, "
          f"{sum(len(r.preempted) for r in want.records)} preemptions, replay {t_vllm:.1f} s")
    for exact, (rec, engine, dt) in logs.items():
        mismatch = first_mismatch(want, rec.log, ("vllm", "engine"))
        path = "exact" if exact else f"fast ({rec.num_bulk_steps} of the steps in bulk runs)"
        print(f"engine {path}: {engine.num_steps} steps in {dt:.1f} s (recorded): "
              f"{'identical to vLLM, step for step' if mismatch is None else 'MISMATCH ' + mismatch}")
        if mismatch is not None or engine.num_steps != want.num_steps:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
