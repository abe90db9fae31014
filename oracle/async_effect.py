"""How much vLLM's async scheduling changes the scheduler's decisions: ``python -m
servesim.oracle.async_effect``.

vLLM 0.27 schedules step N+1 while step N runs (``async_scheduling``, on by default; the engine
core's batch queue of depth 2): outputs, finishes and the blocks they free are seen one step later,
and decoders run with output placeholders.  servesim models synchronous scheduling, as the
oracle's ``Scheduler`` does.  This script runs the same Poisson stream through vLLM's
``AsyncScheduler`` driven like ``EngineCore.step_with_batch_queue`` and through the synchronous
``Scheduler``, and prints the step counts and the per-request finish-step differences (a step is
one model execution either way), which docs/engine.md quotes as the measured effect.
"""
from __future__ import annotations

import argparse
import sys
from collections import deque
from dataclasses import replace

import numpy as np


def run_async(cfg, stream) -> tuple[int, dict[int, int]]:
    """Steps taken and each request's finish step under vLLM's async scheduling."""
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.outputs import ModelRunnerOutput

    from . import vllm_driver as d

    oracle = d.VllmOracle(cfg)
    base = oracle.scheduler
    sched = AsyncScheduler(vllm_config=base.vllm_config, kv_cache_config=base.kv_cache_config, log_stats=False,
                           structured_output_manager=base.structured_output_manager, block_size=cfg.block_size)
    sched.vllm_config.scheduler_config.async_scheduling = True
    pending = sorted(stream, key=lambda s: (s.arrival_step, s.request_id))
    requests, sampled_count, finish = {}, {}, {}
    queue: deque = deque()
    i = step = 0
    while i < len(pending) or sched.has_requests() or queue:
        while i < len(pending) and pending[i].arrival_step <= step:
            spec = pending[i]
            i += 1
            if d.is_rejected_for_length(spec, cfg):
                continue
            r = oracle._make_request(spec)
            requests[r.request_id] = r
            sampled_count[r.request_id] = 0
            sched.add_request(r)
        if sched.has_requests():
            out = sched.schedule()
            ids = list(out.num_scheduled_tokens)
            tokens: list[list[int]] = []
            for rid in ids:
                r = requests[rid]
                if r.is_prefill_chunk:
                    tokens.append([])
                else:
                    tokens.append([d._OUTPUT_BASE + int(rid) * d._PER_REQUEST + sampled_count[rid]])
                    sampled_count[rid] += 1
            ro = ModelRunnerOutput(req_ids=ids, req_id_to_index={r: k for k, r in enumerate(ids)},
                                   sampled_token_ids=tokens, logprobs=None, prompt_logprobs_dict={}, pooler_output=[])
            queue.appendleft((out, ro, step))
            step += 1
            if len(queue) < 2 and sched.has_requests():
                continue
        elif not queue:
            step += 1   # idle: time passes until the next arrival
            continue
        out, ro, ran_at = queue.pop()
        sched.update_from_output(out, ro)
        for rid in ro.req_ids:
            r = requests.get(rid)
            if r is not None and r.is_finished() and int(rid) not in finish:
                finish[int(rid)] = ran_at
    return step, finish


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-requests", type=int, default=2000)
    ap.add_argument("--num-gpu-blocks", type=int, default=600)
    ap.add_argument("--steps-per-arrival", type=float, default=4.0, help="mean steps between arrivals")
    args = ap.parse_args(argv)
    from .records import OracleConfig, RequestSpec
    from .vllm_driver import run_vllm

    rng = np.random.default_rng(0)
    arrivals = np.cumsum(rng.exponential(args.steps_per_arrival, size=args.num_requests)).astype(int)
    stream = [RequestSpec(k, int(rng.integers(1, 1025)), int(rng.integers(1, 257)), int(arrivals[k]))
              for k in range(args.num_requests)]
    cfg = OracleConfig(num_gpu_blocks=args.num_gpu_blocks, max_num_seqs=128, max_num_batched_tokens=2048,
                       max_model_len=2048)
    for label, c in (("KV-bound", cfg), ("roomy KV", replace(cfg, num_gpu_blocks=20 * args.num_gpu_blocks))):
        sync = run_vllm(c, stream)
        steps, finish = run_async(c, stream)
        delta = np.array([finish[k] - sync.finish_step[k] for k in sync.finish_step])
        pre = sum(len(r.preempted) for r in sync.records)
        print(f"{label}: sync {sync.num_steps} steps ({pre} preemptions), async {steps} steps "
              f"({100.0 * (steps - sync.num_steps) / sync.num_steps:+.2f}%); finish step async - sync: "
              f"mean {delta.mean():+.2f}, median {np.median(delta):+.0f}, p99 {np.percentile(delta, 99):+.0f}, "
              f"max {delta.max():+d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
