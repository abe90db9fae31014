"""vLLM 0.6 multi-step scheduling (``num_scheduler_steps``) in the v0 policy.

* exact timelines: one request and two requests, every time computed here from
  :meth:`StepCostModel.step_time_of` and the window rule (K decode steps per pass, the pass's own
  CPU terms once, tokens streamed at the window's end, a finished sequence running to the end);
* lookahead: a decode pass reserves blocks for its K slots;
* fast path equals the per-request path for K > 1; K = 1 is the default and unchanged;
* direction of effect: more steps per pass, fewer scheduling passes' CPU cost, so shorter
  duration, larger ITL/TPOT ratio;
* refusals: chunked prefill and vllm-v1 with K > 1.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import assert_records_equal, assert_summaries_equal, build_engine, run_engine, tiny_config

from servesim.sim.cost_model import StepCostModel
from servesim.sim.runner import SimOptions, simulate
from servesim.sim.workload import Workload


def cost_of(cfg) -> StepCostModel:
    return StepCostModel(cfg.model, cfg.gpu, cfg.profile.step, cfg.parallel.tensor_parallel_size,
                         cfg.weight_dtype, cfg.kv_dtype)


def window(cost: StepCostModel, n: int, ctx: int, k: int) -> float:
    """A K-step decode pass of n sequences, written out from the rule."""
    steps = sum(cost.step_time_of(n, n, 0.0, ctx + j * n) for j in range(k))
    return steps - (k - 1) * (cost.coeffs.step_overhead_s + cost.coeffs.per_seq_overhead_s * n)


def ms_config(k: int, **kw):
    return tiny_config("vllm-v0", num_scheduler_steps=k, **kw)


def test_one_request_timeline_exact():
    """Prompt 10, 7 output tokens, K = 4: prefill (token 1), window of 4 (tokens 2-5), window of 4
    of which 2 tokens are kept (tokens 6-7): the request runs the whole second window."""
    cfg = ms_config(4)
    cost = cost_of(cfg)
    engine, records = run_engine(cfg, Workload(np.zeros(1), np.array([10]), np.array([7])))
    t1 = cost.step_time_of(10, 1, 10 * 11 / 2, 0, 10)
    t2 = t1 + window(cost, 1, 11, 4)
    t3 = t2 + window(cost, 1, 15, 4)
    df = records.to_frame()
    assert df.first_token_s[0] == pytest.approx(t1, rel=1e-12)
    assert df.finish_s[0] == pytest.approx(t3, rel=1e-12)
    assert df.output_tokens[0] == 7
    assert engine.num_steps == 1 + 4 + 4
    # one inter-token gap per streamed chunk: two chunks
    values, counts = engine.itl.arrays()
    gaps = sorted(np.repeat(values, counts))
    assert gaps == pytest.approx(sorted([t2 - t1, t3 - t2]), rel=1e-12)


def test_new_prefill_waits_for_the_window_to_end():
    """A request arriving during a window is prefilled only when the window is over."""
    cfg = ms_config(8)
    cost = cost_of(cfg)
    t1 = cost.step_time_of(10, 1, 55, 0, 10)
    w = window(cost, 1, 11, 8)
    arrive = t1 + w / 3
    engine, records = run_engine(cfg, Workload(np.array([0.0, arrive]), np.array([10, 12]), np.array([20, 3])))
    df = records.to_frame()
    assert df.first_scheduled_s[1] == pytest.approx(t1 + w, rel=1e-12)
    assert df.first_token_s[1] == pytest.approx(t1 + w + cost.step_time_of(12, 1, 12 * 13 / 2, 0, 12), rel=1e-12)


def test_decode_pass_reserves_lookahead_blocks():
    """Block size 16, prompt 15 (one block), K = 8: the first window's slots 16..23 need a second
    block, reserved when the pass is scheduled."""
    cfg = ms_config(8, num_gpu_blocks=64)
    env, engine, _ = build_engine(cfg, Workload(np.zeros(1), np.array([15]), np.array([30])), False, 0.2)
    sched = engine.scheduler
    engine._take_arrivals(0.0)
    first = sched.schedule(0.0)
    sched.update_from_output(first, 0.01)
    assert engine.kv.num_blocks_of(next(iter(sched.running.values()))) == 1
    out = sched.schedule(0.01)
    assert sched.is_window(out)
    assert engine.kv.num_blocks_of(next(iter(sched.running.values()))) == 2


@pytest.mark.parametrize("k", [2, 5, 10, 17])
def test_fast_path_matches_exact_with_multi_step(k):
    rng = np.random.default_rng(k)
    n = 60
    wl = Workload(np.sort(rng.uniform(0, 0.5, n)), rng.integers(5, 120, n), rng.integers(1, 90, n))
    cfg = ms_config(k, num_gpu_blocks=200, max_num_seqs=16)   # tight: preemptions happen
    fast = simulate(cfg, wl, SimOptions(exact=False))
    exact = simulate(cfg, wl, SimOptions(exact=True))
    assert_summaries_equal(fast.summary, exact.summary)
    assert_records_equal(fast, exact)
    assert int(fast.records.to_frame().output_tokens.sum()) == int(wl.output_tokens.sum())


def test_k1_is_the_default_and_unchanged():
    rng = np.random.default_rng(0)
    wl = Workload(np.zeros(40), rng.integers(5, 100, 40), rng.integers(1, 60, 40))
    a = simulate(tiny_config("vllm-v0", num_gpu_blocks=300), wl).summary
    b = simulate(ms_config(1, num_gpu_blocks=300), wl).summary
    assert_summaries_equal(a, b, rel=0.0)


def test_more_steps_per_pass_direction_of_effect():
    """With a per-pass CPU cost, more steps per pass finish a decode-heavy burst sooner, and the
    client's inter-token gap grows relative to its TPOT (tokens arrive in chunks)."""
    rng = np.random.default_rng(1)
    wl = Workload(np.zeros(32), rng.integers(20, 60, 32), rng.integers(100, 200, 32))
    results = {}
    for k in (1, 4, 10):
        cfg = ms_config(k, num_gpu_blocks=2000, max_num_seqs=32)
        cfg = replace(cfg, profile=replace(cfg.profile, step=replace(cfg.profile.step, step_overhead_s=4e-3)))
        results[k] = simulate(cfg, wl).summary
    assert results[1]["duration"] > results[4]["duration"] > results[10]["duration"]
    ratio = {k: s["median_itl_ms"] / s["median_tpot_ms"] for k, s in results.items()}
    assert ratio[1] == pytest.approx(1.0, abs=0.05)
    assert 3.0 < ratio[4] < 4.5 and 8.0 < ratio[10] < 10.5


def test_multi_step_refusals():
    with pytest.raises(ValueError, match="Chunked prefill is not supported with multi-step"):
        tiny_config("vllm-v0", num_scheduler_steps=4, enable_chunked_prefill=True)
    with pytest.raises(ValueError, match="multi-step scheduling is a vllm-v0"):
        tiny_config("vllm-v1", num_scheduler_steps=4)
    with pytest.raises(ValueError, match="num_scheduler_steps must be an integer"):
        tiny_config("vllm-v0", num_scheduler_steps=0)


def test_per_token_hook_sees_every_token_of_a_chunk():
    """``servesim serve`` streams through the per-token hook: a chunk of K tokens is K calls at
    the window's end."""
    from conftest import build_engine
    cfg = ms_config(4)
    seen: list[float] = []
    env, engine, records = build_engine(cfg, Workload(np.zeros(1), np.array([10]), np.array([7])), True, 0.2)
    engine.scheduler.on_token = lambda request, now: seen.append(now)
    env.run()
    assert len(seen) == 7 and len(set(seen)) == 3          # first token, then chunks of 4 and 2
    assert records.to_frame().output_tokens[0] == 7
