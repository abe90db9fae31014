"""Tests of the SimPy engine: exact timelines, fast path against exact path, direction of effect,
and memory errors.

* timelines: with a profile of fixed coefficients, every time a request sees is a sum of
  :meth:`StepCostModel.step_time_of` values the test computes itself;
* ``test_fast_path_matches_exact``: the decode batch and bulk decode steps give the same summary,
  per-request records and time series as the per-request reference path;
* direction of effect: more KV memory, more sequences, more load move results the right way;
* errors: configurations vLLM refuses are refused with the numbers, requests it rejects are
  counted as failed.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import (
    GPU,
    MODEL,
    assert_records_equal,
    assert_summaries_equal,
    fixed_profile,
    mooncake_like,
    run_engine,
    tiny_config,
)

from servesim.sim.config import make_engine_config
from servesim.sim.cost_model import StepCostModel
from servesim.sim.memory import kv_capacity, weight_bytes_per_gpu
from servesim.sim.model_catalog import get_model
from servesim.sim.runner import SimOptions, simulate, write_results
from servesim.sim.workload import ClosedLoop, Workload, WorkloadSpec, build_workload

ENGINES = ["vllm-v1", "vllm-v0"]


def cost_of(cfg) -> StepCostModel:
    return StepCostModel(cfg.model, cfg.gpu, cfg.profile.step, cfg.parallel.tensor_parallel_size,
                         cfg.weight_dtype, cfg.kv_dtype)


def prefill(cost: StepCostModel, tokens: int) -> float:
    """One step holding a whole prompt of ``tokens`` and nothing else."""
    return cost.step_time_of(tokens, 1, tokens * (tokens + 1) / 2, 0)


def decode(cost: StepCostModel, context: int) -> float:
    """One step holding one decode attending to ``context`` tokens."""
    return cost.step_time_of(1, 1, 0.0, context)


def one_request(arrival: float, prompt: int, output: int) -> Workload:
    return Workload(np.array([arrival]), np.array([prompt]), np.array([output]))


# ----- timelines ---------------------------------------------------------------------------------

@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
@pytest.mark.parametrize("engine", ENGINES)
def test_single_request_timeline(engine, exact):
    P, O = 100, 20
    cfg = tiny_config(engine, num_gpu_blocks=64, max_model_len=256, max_num_batched_tokens=256)
    engine_, records = run_engine(cfg, one_request(0.0, P, O), exact=exact)
    cost = cost_of(cfg)
    t = 0.0 + prefill(cost, P)
    ttft = t
    decode_steps = []
    for i in range(1, O):                     # the i-th decode attends to P + i tokens
        dt = decode(cost, P + i)
        decode_steps.append(dt)
        t = t + dt
    c = records.cols
    assert c["first_scheduled_s"][0] == 0.0
    assert c["first_token_s"][0] == ttft
    assert c["finish_s"][0] == t
    assert decode_steps[-1] > decode_steps[0]  # decode steps grow with the context
    values, counts = engine_.itl.arrays()
    itls = np.repeat(values, counts)
    assert itls == pytest.approx(decode_steps, rel=1e-12)
    assert engine_.num_steps == O
    assert engine_.busy_s == pytest.approx(t, rel=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_single_request_summary(engine):
    P, O = 64, 9
    cfg = tiny_config(engine, num_gpu_blocks=64, max_model_len=256, max_num_batched_tokens=256)
    s = simulate(cfg, one_request(0.0, P, O)).summary
    cost = cost_of(cfg)
    ttft = prefill(cost, P)
    steps = [decode(cost, P + i) for i in range(1, O)]
    e2e = ttft + sum(steps)
    assert s["mean_ttft_ms"] == pytest.approx(ttft * 1e3, rel=1e-12)
    assert s["mean_tpot_ms"] == pytest.approx(sum(steps) / (O - 1) * 1e3, rel=1e-12)
    assert s["mean_itl_ms"] == pytest.approx(sum(steps) / (O - 1) * 1e3, rel=1e-12)
    assert s["mean_e2el_ms"] == pytest.approx(e2e * 1e3, rel=1e-12)
    assert s["duration"] == pytest.approx(e2e, rel=1e-12)
    assert (s["completed"], s["failed"], s["total_input_tokens"], s["total_output_tokens"]) == (1, 0, P, O)
    assert s["output_throughput"] == pytest.approx(O / e2e, rel=1e-12)
    assert s["mean_num_running"] == pytest.approx(1.0, rel=1e-12)
    assert s["busy_fraction"] == pytest.approx(1.0, rel=1e-12)


def test_step_time_is_a_roofline_sum():
    """A sanity check of the cost model the timelines rely on: a decode step streams the weights
    (memory bound), a long prefill is compute bound and costs more per token."""
    cost = cost_of(tiny_config())
    weights_s = MODEL.weight_bytes("bf16") / (GPU.hbm_bandwidth_bytes_per_s * 0.8)
    assert cost.weight_stream_s == pytest.approx(weights_s, rel=1e-12)
    d = decode(cost, 1000)
    assert d > weights_s
    assert d - decode(cost, 0 + 1) == pytest.approx(cost.decode_s_per_ctx_token * 999, rel=1e-9)
    assert prefill(cost, 4096) / 4096 < d
    assert prefill(cost, 4096) > 8 * prefill(cost, 64)


def test_idle_engine_starts_a_request_at_its_arrival():
    cfg = tiny_config(max_num_batched_tokens=256)
    _, records = run_engine(cfg, one_request(5.0, 32, 2))
    cost = cost_of(cfg)
    c = records.cols
    assert c["first_scheduled_s"][0] == 5.0
    assert c["first_token_s"][0] == 5.0 + prefill(cost, 32)


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
@pytest.mark.parametrize("engine", ENGINES)
def test_second_request_waits_for_the_running_step(engine, exact):
    P0, O0, P1, O1 = 100, 10, 50, 5
    cfg = tiny_config(engine, num_gpu_blocks=64, max_model_len=256, max_num_batched_tokens=256)
    cost = cost_of(cfg)
    T1 = prefill(cost, P0)
    a1 = T1 / 2                                   # arrives while r0's prefill runs
    wl = Workload(np.array([0.0, a1]), np.array([P0, P1]), np.array([O0, O1]))
    engine_, records = run_engine(cfg, wl, exact=exact)
    c = records.cols
    assert c["first_token_s"][0] == T1
    assert c["first_scheduled_s"][1] == T1        # not at its arrival: steps are not interrupted
    pairs1 = P1 * (P1 + 1) / 2
    if engine == "vllm-v1":                       # r0's decode and r1's prompt share the step
        T2 = T1 + cost.step_time_of(1 + P1, 2, pairs1, P0 + 1)
    else:                                         # prefill first: r0 does not decode in r1's step
        T2 = T1 + cost.step_time_of(P1, 1, pairs1, 0)
    assert c["first_token_s"][1] == T2
    # The next step decodes both; r0's second token comes at its end in v0, at T2 in v1.
    T3 = T2 + cost.step_time_of(2, 2, 0.0, (P0 + 1 + (engine == "vllm-v1")) + (P1 + 1))
    values, counts = engine_.itl.arrays()
    gaps = np.repeat(values, counts)
    first_gap_r0 = (T2 - T1) if engine == "vllm-v1" else (T3 - T1)
    assert np.any(gaps == first_gap_r0)
    assert np.any(gaps == T3 - T2)                # r1's first inter-token gap, both engines


def test_closed_loop_next_request_arrives_after_think_time():
    think = 0.5
    cl = ClosedLoop(1, np.full(5, 40), np.full(5, 6), think_time_s=think, think_time_dist="fixed")
    cfg = tiny_config(max_num_batched_tokens=256)
    _, records = run_engine(cfg, cl)
    c = records.cols
    assert c["arrival_s"][0] == 0.0
    for i in range(1, 5):
        assert c["arrival_s"][i] == c["finish_s"][i - 1] + think
        assert c["first_scheduled_s"][i] == c["arrival_s"][i]   # the engine was idle
    assert np.all(records.status == 1)


def test_closed_loop_users_keep_one_request_outstanding():
    cl = ClosedLoop(3, np.full(12, 40), np.full(12, 6), think_time_s=0.2, think_time_dist="fixed")
    _, records = run_engine(tiny_config(max_num_batched_tokens=256), cl)
    c = records.cols
    assert np.all(c["arrival_s"][:3] == 0.0)
    later = c["arrival_s"][3:]
    finishes = c["finish_s"]
    for t in later:     # each later request arrives exactly a think time after some finish
        assert np.any(finishes + 0.2 == t)
    assert np.all(np.diff(c["arrival_s"]) >= 0)     # issued in index order


def test_closed_loop_uses_the_think_time_of_the_issued_request():
    cl = ClosedLoop(1, np.full(5, 40), np.full(5, 6), think_time_s=0.3, seed=1)
    _, records = run_engine(tiny_config(max_num_batched_tokens=256), cl)
    c = records.cols
    think = cl.think_times()
    assert np.array_equal(c["arrival_s"][1:], c["finish_s"][:-1] + think[1:])


# ----- the fast path against the exact path ------------------------------------------------------

def _random(kind: str, n: int, input_len: int, output_len: int, **kw):
    return WorkloadSpec(kind=kind, num_requests=n, input_len=input_len, output_len=output_len,
                        dataset="random", range_ratio=0.6, **kw)


FAST_EXACT_CASES = {
    # name: (engine config, workload, what the case must exercise)
    "v1_burst_preemption": (
        lambda: tiny_config("vllm-v1", num_gpu_blocks=80, max_num_seqs=32, max_num_batched_tokens=128,
                            max_model_len=512),
        lambda: build_workload(_random("burst", 60, 150, 60), 0), "preemption"),
    "v1_poisson": (
        lambda: tiny_config("vllm-v1", num_gpu_blocks=400, max_num_seqs=64, max_num_batched_tokens=256,
                            max_model_len=1024),
        lambda: build_workload(_random("poisson", 80, 200, 80, rate=40.0), 1), None),
    "v1_budget_binds": (
        lambda: tiny_config("vllm-v1", num_gpu_blocks=300, max_num_seqs=16, max_num_batched_tokens=16,
                            max_model_len=512),
        lambda: build_workload(_random("poisson", 40, 100, 40, rate=50.0), 2), None),
    "v1_closed_loop": (
        lambda: tiny_config("vllm-v1", num_gpu_blocks=60, max_num_seqs=16, max_num_batched_tokens=64,
                            max_model_len=512),
        lambda: build_workload(_random("closed", 50, 120, 50, num_users=8, think_time_s=0.05), 3),
        "preemption"),
    "v1_prefix_caching": (
        lambda: tiny_config("vllm-v1", num_gpu_blocks=40, max_num_seqs=16, max_num_batched_tokens=64,
                            max_model_len=512, enable_prefix_caching=True),
        lambda: mooncake_like(80, seed=4, rate=40.0), "cache hits"),
    "v0_burst_preemption": (
        lambda: tiny_config("vllm-v0", num_gpu_blocks=80, max_num_seqs=32, max_model_len=512),
        lambda: build_workload(_random("burst", 60, 150, 60), 0), "preemption"),
    "v0_poisson": (
        lambda: tiny_config("vllm-v0", num_gpu_blocks=400, max_num_seqs=64, max_model_len=1024),
        lambda: build_workload(_random("poisson", 80, 200, 80, rate=40.0), 1), None),
    "v0_closed_loop": (
        lambda: tiny_config("vllm-v0", num_gpu_blocks=60, max_num_seqs=16, max_model_len=512),
        lambda: build_workload(_random("closed", 50, 120, 50, num_users=8, think_time_s=0.05), 3),
        "preemption"),
    "v0_swap_preemption": (
        lambda: tiny_config("vllm-v0", num_gpu_blocks=80, max_num_seqs=32, max_model_len=512,
                            preemption_mode="swap"),
        lambda: build_workload(_random("burst", 60, 150, 60), 0), "preemption"),
}


def assert_same_run(a, b) -> None:
    assert_summaries_equal(a.summary, b.summary, rel=1e-12)
    assert_records_equal(a, b)
    pd.testing.assert_frame_equal(a.series.to_frame(), b.series.to_frame(), check_exact=False, rtol=1e-12)


@pytest.mark.parametrize("case", list(FAST_EXACT_CASES))
def test_fast_path_matches_exact(case):
    make_cfg, make_workload, exercises = FAST_EXACT_CASES[case]
    cfg, wl = make_cfg(), make_workload()
    exact = simulate(cfg, wl, SimOptions(exact=True, sample_interval_s=0.05))
    fast = simulate(cfg, wl, SimOptions(exact=False, sample_interval_s=0.05))
    assert_same_run(exact, fast)
    assert exact.summary["completed"] == len(wl)
    if exercises == "preemption":
        assert exact.summary["num_preemptions"] > 0
    elif exercises == "cache hits":
        assert exact.records.cols["num_cached_tokens"].sum() > 0
        assert exact.summary["num_preemptions"] > 0  # and the pool is small enough to evict


def test_fast_path_matches_exact_v0_chunked_prefill():
    cfg = tiny_config("vllm-v0", num_gpu_blocks=5, max_num_seqs=2, max_num_batched_tokens=2, max_model_len=61,
                      enable_chunked_prefill=True, preemption_mode="swap")
    wl = Workload(np.zeros(3), np.array([12, 33, 9]), np.array([8, 1, 8]))
    assert_same_run(simulate(cfg, wl, SimOptions(exact=True)), simulate(cfg, wl, SimOptions(exact=False)))


def test_fast_path_skips_the_scheduler_for_bulk_decode_steps():
    """The point of the fast path: the same steps, most of them without a ``schedule`` call."""
    from conftest import build_engine

    cfg = tiny_config("vllm-v1", num_gpu_blocks=400, max_num_seqs=64, max_num_batched_tokens=256,
                      max_model_len=1024)
    wl = build_workload(_random("burst", 32, 100, 200), 0)
    steps, calls = {}, {}
    for exact in (True, False):
        env, engine, _ = build_engine(cfg, wl, exact=exact)
        schedule, count = engine.scheduler.schedule, [0]

        def counting(now, schedule=schedule, count=count):
            count[0] += 1
            return schedule(now)

        engine.scheduler.schedule = counting
        env.run()
        steps[exact], calls[exact] = engine.num_steps, count[0]
    assert steps[True] == steps[False]
    assert calls[True] >= steps[True]
    assert calls[False] * 3 < calls[True]


# ----- direction of effect -----------------------------------------------------------------------

BURST = WorkloadSpec(kind="burst", num_requests=120, input_len=400, output_len=200)


@pytest.mark.parametrize("engine", ENGINES)
def test_more_kv_memory_fewer_preemptions_more_throughput(engine):
    """KV-bound burst: throughput rises with every doubling of the blocks; preemptions fall off
    once memory is ample (their count is not monotone while memory is scarce: all requests grow in
    lockstep, so preemptions come in waves whose size depends on how many were admitted)."""
    results = []
    for blocks in (150, 300, 600, 1200, 2400, 4800):   # 4800 blocks hold all 120 requests
        cfg = tiny_config(engine, num_gpu_blocks=blocks, max_num_seqs=128, max_model_len=1024,
                          max_num_batched_tokens=2048)
        results.append(simulate(cfg, build_workload(BURST, 0)).summary)
    preemptions = [s["num_preemptions"] for s in results]
    throughput = [s["output_throughput"] for s in results]
    assert preemptions[-1] == 0
    assert 0 < preemptions[-2] < min(preemptions[:-2]), preemptions
    assert all(a < b for a, b in zip(throughput, throughput[1:])), throughput
    assert throughput[-1] > 8 * throughput[0]
    assert all(s["completed"] == 120 for s in results)


def test_larger_max_num_seqs_raises_throughput_until_kv_bound():
    # 24 blocks a request (256 + 128 tokens): 1201 blocks hold ~50 requests at their longest.
    spec = WorkloadSpec(kind="burst", num_requests=200, input_len=256, output_len=128)
    thr = {}
    for seqs in (8, 32, 128, 256):
        cfg = tiny_config("vllm-v1", num_gpu_blocks=1201, max_num_seqs=seqs, max_num_batched_tokens=2048,
                          max_model_len=1024)
        thr[seqs] = simulate(cfg, build_workload(spec, 0)).summary["output_throughput"]
    assert thr[8] < thr[32] < thr[128]
    assert thr[8] * 2 < thr[32]
    assert thr[256] == pytest.approx(thr[128], rel=0.05)   # KV-bound: more slots do not help


@pytest.mark.parametrize("engine", ENGINES)
def test_higher_arrival_rate_higher_ttft(engine):
    ttft = []
    for rate in (2.0, 10.0, 50.0):
        spec = _random("poisson", 100, 300, 100, rate=rate)
        cfg = tiny_config(engine, num_gpu_blocks=800, max_num_seqs=64, max_model_len=1024,
                          max_num_batched_tokens=1024)
        ttft.append(simulate(cfg, build_workload(spec, 0)).summary["mean_ttft_ms"])
    assert ttft[0] < ttft[1] < ttft[2], ttft


def test_tensor_parallelism_raises_kv_capacity_of_a_70b_model():
    model = get_model("llama-3.1-70b")
    blocks = {}
    for tp in (1, 2):
        cfg = make_engine_config(model, GPU, "vllm-v1", tp=tp, weight_dtype="fp8", profile=fixed_profile(),
                                 max_model_len=8192)
        mem = kv_capacity(cfg)
        blocks[tp] = mem.num_gpu_blocks
        # fp8 linear layers sharded by TP, embeddings kept in bf16 (as vLLM loads an fp8 checkpoint)
        assert mem.weight_bytes == pytest.approx(weight_bytes_per_gpu(model, "fp8", tp)
                                                 + cfg.profile.memory.weight_overhead_bytes)
        assert mem.weight_bytes < model.weight_bytes("bf16") / tp
    # Half the weights per GPU and half the KV bytes per token per GPU: far more than double.
    assert blocks[2] > 2 * blocks[1] > 0


# ----- memory and errors -------------------------------------------------------------------------

def test_model_that_does_not_fit_is_refused():
    cfg = make_engine_config(get_model("llama-3.1-405b"), GPU, "vllm-v1", profile=fixed_profile())
    with pytest.raises(ValueError, match="does not fit"):
        kv_capacity(cfg)
    with pytest.raises(ValueError, match="does not fit"):
        simulate(cfg, one_request(0.0, 10, 10))


def test_max_model_len_beyond_kv_capacity_is_refused():
    with pytest.raises(ValueError, match=r"max seq len \(128\) is larger than the 64 tokens"):
        simulate(tiny_config(num_gpu_blocks=4, max_model_len=128), one_request(0.0, 10, 10))
    # through the memory model: 70B in fp8 on one H100 leaves a few GB, far short of 128k tokens
    cfg = make_engine_config(get_model("llama-3.1-70b"), GPU, "vllm-v1", weight_dtype="fp8",
                             profile=fixed_profile(), max_model_len=131072)
    with pytest.raises(ValueError, match="max seq len"):
        kv_capacity(cfg)


@pytest.mark.parametrize("engine", ENGINES)
def test_request_longer_than_max_model_len_is_rejected(engine):
    cfg = tiny_config(engine, num_gpu_blocks=64, max_model_len=128, max_num_batched_tokens=128)
    wl = Workload(np.array([0.0, 0.1, 0.2]), np.array([50, 100, 20]), np.array([20, 50, 10]))
    result = simulate(cfg, wl)
    frame = result.records.to_frame()
    assert list(frame["status"]) == ["finished", "rejected", "finished"]
    assert math.isnan(frame["finish_s"][1]) and math.isnan(frame["first_token_s"][1])
    s = result.summary
    assert (s["completed"], s["failed"]) == (2, 1)
    assert s["total_input_tokens"] == 70 and s["total_output_tokens"] == 30


def test_v0_prompt_above_the_watermark_is_rejected_and_counted_failed():
    cfg = tiny_config("vllm-v0", num_gpu_blocks=100, max_model_len=1600)
    wl = Workload(np.array([0.0, 0.0]), np.array([1590, 30]), np.array([1, 5]))  # 100 blocks > 100 - 1
    s = simulate(cfg, wl).summary
    assert (s["completed"], s["failed"]) == (1, 1)


def test_write_results_writes_the_documented_files(tmp_path):
    result = simulate(tiny_config(max_num_batched_tokens=256), one_request(0.0, 32, 4))
    out = write_results(result, tmp_path / "run")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "requests.parquet", "summary.json",
                                                      "timeseries.csv"]
    assert json.loads((out / "summary.json").read_text()) == result.summary
    frame = pd.read_parquet(out / "requests.parquet")
    assert list(frame["status"].astype(str)) == ["finished"]
    series = pd.read_csv(out / "timeseries.csv")
    assert "vllm:kv_cache_usage_perc" in series.columns
