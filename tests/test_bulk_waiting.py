"""Bulk decode while requests wait that provably cannot be admitted (issue 13: preemption-heavy
small-KV and overload modes), checked against the exact per-step path.

A run of decode steps is taken at once also while the waiting queue is not empty, when its head
cannot be admitted in any step of the run (no budget beside the batch, ``max_num_seqs`` running,
or its blocks do not fit, which stays so while the batch only takes blocks).  Every case here
must give the same records, summary and time series as ``exact=True``, and must actually take
such runs (an observer counts them).
"""
from __future__ import annotations

import numpy as np
import pytest
import simpy
from conftest import assert_records_equal, assert_summaries_equal, mooncake_like, tiny_config

from servesim.sim.decode_batch import DecodeRun
from servesim.sim.engine import LLMEngine
from servesim.sim.kv_cache_manager import KVCacheManager
from servesim.sim.metrics import RequestRecords
from servesim.sim.observers import EngineObserver
from servesim.sim.request import Request
from servesim.sim.runner import SimOptions, make_source, simulate
from servesim.sim.workload import WorkloadSpec, build_workload


class RunsWhileWaiting(EngineObserver):
    def __init__(self, engine_ref: list) -> None:
        self.engine_ref, self.runs, self.steps = engine_ref, 0, 0

    def on_step(self, output, start_s, end_s):
        if type(output) is DecodeRun and self.engine_ref[0].scheduler.waiting:
            self.runs += 1
            self.steps += output.num_steps


def _random(kind: str, n: int, input_len: int, output_len: int, **kw):
    return WorkloadSpec(kind=kind, num_requests=n, input_len=input_len, output_len=output_len,
                        dataset="random", range_ratio=0.6, **kw)


CASES = {
    # small KV cache: preemptions, and waiting heads whose blocks do not fit
    "v1_small_kv": (lambda: tiny_config("vllm-v1", num_gpu_blocks=120, max_num_seqs=64, max_num_batched_tokens=256,
                                        max_model_len=1024),
                    lambda: build_workload(_random("poisson", 150, 300, 120, rate=60.0), 11)),
    # overload against max_num_seqs
    "v1_max_num_seqs": (lambda: tiny_config("vllm-v1", num_gpu_blocks=2000, max_num_seqs=8, max_num_batched_tokens=256,
                                            max_model_len=1024),
                        lambda: build_workload(_random("poisson", 120, 100, 150, rate=200.0), 12)),
    # a token budget the batch uses up
    "v1_budget": (lambda: tiny_config("vllm-v1", num_gpu_blocks=2000, max_num_seqs=16, max_num_batched_tokens=16,
                                      max_model_len=1024),
                  lambda: build_workload(_random("poisson", 80, 20, 200, rate=100.0), 13)),
    "v1_prefix_caching": (lambda: tiny_config("vllm-v1", num_gpu_blocks=60, max_num_seqs=16, max_num_batched_tokens=64,
                                              max_model_len=512, enable_prefix_caching=True),
                          lambda: mooncake_like(150, seed=14, rate=80.0)),
    "v0_small_kv": (lambda: tiny_config("vllm-v0", num_gpu_blocks=120, max_num_seqs=64, max_model_len=1024),
                    lambda: build_workload(_random("poisson", 150, 300, 120, rate=60.0), 11)),
    "v0_max_num_seqs": (lambda: tiny_config("vllm-v0", num_gpu_blocks=2000, max_num_seqs=8, max_model_len=1024),
                        lambda: build_workload(_random("poisson", 120, 100, 150, rate=200.0), 12)),
    "v0_chunked_small_kv": (lambda: tiny_config("vllm-v0", num_gpu_blocks=120, max_num_seqs=64,
                                                max_num_batched_tokens=256, max_model_len=1024,
                                                enable_chunked_prefill=True),
                            lambda: build_workload(_random("poisson", 150, 300, 120, rate=60.0), 11)),
    "v0_swap": (lambda: tiny_config("vllm-v0", num_gpu_blocks=120, max_num_seqs=64, max_model_len=1024,
                                    preemption_mode="swap"),
                lambda: build_workload(_random("poisson", 150, 300, 120, rate=60.0), 11)),
    "v1_closed_loop": (lambda: tiny_config("vllm-v1", num_gpu_blocks=60, max_num_seqs=16, max_num_batched_tokens=64,
                                           max_model_len=512),
                       lambda: build_workload(_random("closed", 120, 120, 80, num_users=24, think_time_s=0.01), 15)),
}


def _counted_run(cfg, wl):
    source = make_source(wl, cfg)
    env, ref = simpy.Environment(), []
    counter = RunsWhileWaiting(ref)
    engine = LLMEngine(env, cfg, source, RequestRecords(len(source)), 0.05, observers=[counter])
    ref.append(engine)
    env.run()
    return counter


@pytest.mark.parametrize("case", list(CASES))
def test_bulk_decode_with_blocked_waiting_matches_exact(case):
    make_cfg, make_wl = CASES[case]
    cfg, wl = make_cfg(), make_wl()
    exact = simulate(cfg, wl, SimOptions(exact=True, sample_interval_s=0.05))
    fast = simulate(cfg, wl, SimOptions(exact=False, sample_interval_s=0.05))
    assert_summaries_equal(exact.summary, fast.summary, rel=1e-12)
    assert_records_equal(exact, fast)
    a, b = exact.series.to_frame(), fast.series.to_frame()
    assert a.shape == b.shape
    assert np.allclose(a.to_numpy(float), b.to_numpy(float), rtol=1e-12, atol=0)
    assert exact.num_steps == fast.num_steps
    if case != "v0_swap":  # swapped-out requests keep every step on the per-step path
        counter = _counted_run(cfg, wl)
        assert counter.runs > 0 and counter.steps > 2 * counter.runs, "no bulk run while requests waited"


def test_can_allocate_slots_agrees_with_allocate_slots():
    rng = np.random.default_rng(0)
    for caching in (False, True):
        for trial in range(300):
            kv = KVCacheManager(int(rng.integers(4, 40)), 16, caching, reserve_null_block=True)
            # fill part of the pool with a few requests, some with cached prompt blocks
            shared = tuple(("p", j) for j in range(4))
            holders = []
            for i in range(int(rng.integers(0, 4))):
                r = Request(100 + i, 0.0, int(rng.integers(1, 80)), 5, shared[: int(rng.integers(0, 4))] or None)
                hits, _ = kv.get_computed_blocks(r)
                if kv.allocate_slots(r, r.num_prompt_tokens - len(hits) * 16, hits) is not None:
                    r.num_computed_tokens = r.num_prompt_tokens
                    holders.append(r)
            for r in holders[: int(rng.integers(0, len(holders) + 1))]:
                kv.free(r)  # their cached blocks stay hittable in the free queue
            req = Request(trial, 0.0, int(rng.integers(1, 120)), int(rng.integers(1, 50)),
                          shared[: int(rng.integers(0, 4))] or None)
            hits, cached = kv.get_computed_blocks(req)
            req.num_computed_tokens = 0
            num_new = int(rng.integers(1, req.num_tokens - cached + 1))
            full = req.num_tokens if rng.random() < 0.5 else None
            want = kv.can_allocate_slots(req, num_new, hits, full)
            assert (kv.allocate_slots(req, num_new, hits, full) is not None) == want


class BatchBesidePrefill(EngineObserver):
    """Counts steps whose decode batch stayed intact beside a prefill chunk, and the finish heap's size."""

    def __init__(self, engine_ref: list) -> None:
        self.engine_ref, self.steps, self.max_heap, self.max_members = engine_ref, 0, 0, 0

    def on_step(self, output, start_s, end_s):
        batch = self.engine_ref[0].scheduler.batch
        self.max_heap = max(self.max_heap, len(batch._finish_heap))
        self.max_members = max(self.max_members, len(batch.members))
        if type(output) is not DecodeRun and output.num_batch_decodes and output.num_prefill_seqs:
            self.steps += 1


@pytest.mark.parametrize("budget", [512, 64])
def test_v0_chunked_prefill_keeps_the_batch_while_a_prefill_is_in_flight(budget):
    """vLLM v0 with chunked prefill serves running requests in arrival order: the batch may lead
    a step beside prefill chunks when every other running request arrived after its members (the
    usual case: the prefilling ones are the newest).  Same results as the exact path, and the
    batch is not torn down each step (its finish heap stays the size of the batch)."""
    cfg = tiny_config("vllm-v0", num_gpu_blocks=400, max_num_seqs=64, max_num_batched_tokens=budget,
                      max_model_len=1024, enable_chunked_prefill=True)
    wl = build_workload(_random("poisson", 200, 300, 100, rate=40.0), 21)
    exact = simulate(cfg, wl, SimOptions(exact=True, sample_interval_s=0.05))
    fast = simulate(cfg, wl, SimOptions(exact=False, sample_interval_s=0.05))
    assert_summaries_equal(exact.summary, fast.summary, rel=1e-12)
    assert_records_equal(exact, fast)
    assert np.allclose(exact.series.to_frame().to_numpy(float), fast.series.to_frame().to_numpy(float), rtol=1e-12)
    source = make_source(wl, cfg)
    env, ref = simpy.Environment(), []
    counter = BatchBesidePrefill(ref)
    engine = LLMEngine(env, cfg, source, RequestRecords(len(source)), 0.05, observers=[counter])
    ref.append(engine)
    env.run()
    assert counter.steps > 50
    assert counter.max_heap <= 2 * counter.max_members + 8
