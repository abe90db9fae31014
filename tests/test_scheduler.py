"""Exact unit tests of the scheduling policies, without SimPy.

A :class:`conftest.Harness` holds a scheduler over its own KV cache; each test adds requests
directly, calls ``schedule(now)`` / ``update_from_output(out, now)`` and asserts the batch (request
ids and token counts, in order), the queues, and the block ids, as vLLM's scheduler tests do.
The reference (``exact=True``) path is used unless a test says otherwise.
"""
from __future__ import annotations

import pytest
from conftest import Harness, scheduled, tiny_config

from servesim.sim.request import RequestStatus

# ----- vLLM v1 -------------------------------------------------------------------------------

def test_v1_fcfs_admission_up_to_max_num_seqs():
    h = Harness(tiny_config("vllm-v1", max_num_seqs=2, max_num_batched_tokens=16))
    for i in range(3):
        h.add(i, prompt=4)
    out = h.step()
    assert scheduled(out) == [(0, 4), (1, 4)]
    assert h.running_ids == [0, 1] and h.waiting_ids == [2]
    assert h.requests[0].first_scheduled_time == 0.0
    assert h.requests[2].status is RequestStatus.WAITING


def test_v1_running_first_then_a_chunk_of_the_long_prompt():
    h = Harness(tiny_config("vllm-v1", max_num_batched_tokens=16))
    h.add(0, prompt=4, max_tokens=10)
    h.step()                                  # r0 prefills and starts decoding
    h.add(1, prompt=40)
    out = h.step()
    assert scheduled(out) == [(0, 1), (1, 15)]   # the decode first, the prompt gets the rest
    assert (out.num_decode_seqs, out.num_prefill_seqs, out.num_prefill_tokens) == (1, 1, 15)
    assert out.decode_context_tokens == 4 + 1   # r0: its 4 computed prompt tokens + the new one
    assert out.prefill_attn_pairs == 15 * 16 / 2
    h.add(2, prompt=3)
    out = h.step()
    assert scheduled(out) == [(0, 1), (1, 15)]   # r2 waits: no budget left
    assert out.prefill_attn_pairs == 15 * 15 + 15 * 16 / 2   # the chunk attends to the 15 before it
    out = h.step()
    assert scheduled(out) == [(0, 1), (1, 10), (2, 3)]  # the last chunk, then FCFS admission
    assert h.requests[1].num_output_tokens == 1 and h.requests[1].first_token_time == h.now


def test_v1_decodes_take_the_budget_before_prefill_chunks():
    h = Harness(tiny_config("vllm-v1", max_num_batched_tokens=4, max_num_seqs=4))
    for i in range(3):
        h.add(i, prompt=1, max_tokens=5)
    h.add(3, prompt=10)
    assert scheduled(h.step()) == [(0, 1), (1, 1), (2, 1), (3, 1)]
    assert scheduled(h.step()) == [(0, 1), (1, 1), (2, 1), (3, 1)]   # a 1-token chunk each step
    assert h.requests[3].num_computed_tokens == 2


def test_scheduler_config_rejects_fewer_batched_tokens_than_seqs():
    """Mirrors vLLM's SchedulerConfig check (a decode step of max_num_seqs must fit the budget)."""
    with pytest.raises(ValueError, match="max_num_seqs"):
        tiny_config("vllm-v1", max_num_batched_tokens=8, max_num_seqs=16)


def preempting_harness(**kw) -> Harness:
    """Two requests of 31-token prompts that fill the 4 usable blocks (block 0 is the null block);
    after two steps each needs a third block."""
    h = Harness(tiny_config("vllm-v1", num_gpu_blocks=5, max_num_batched_tokens=64, max_model_len=64, **kw))
    h.add(0, prompt=31, max_tokens=10)
    h.add(1, prompt=31, max_tokens=10)
    assert scheduled(h.step()) == [(0, 31), (1, 31)]
    assert h.kv.req_to_blocks == {0: [1, 2], 1: [3, 4]}
    assert scheduled(h.step()) == [(0, 1), (1, 1)]   # 32 tokens: still two blocks each
    return h


def test_v1_preempts_the_newest_running_request():
    h = preempting_harness()
    h.add(2, prompt=2)                 # would fit after the preemption, but is not admitted
    out = h.step()
    assert scheduled(out) == [(0, 1)]
    r1 = h.requests[1]
    assert r1.status is RequestStatus.PREEMPTED
    assert r1.num_computed_tokens == 0 and r1.num_output_tokens == 2 and r1.num_preemptions == 1
    assert h.waiting_ids == [1, 2]     # to the FRONT of waiting
    assert h.running_ids == [0]
    assert h.kv.req_to_blocks[0] == [1, 2, 4]   # r1's blocks came back tail first: 4, then 3
    assert h.kv.num_free_blocks == 1
    assert h.sched.num_preemptions == 1
    # Next step: r0 decodes; r1 (head of waiting) needs 3 blocks for its 33 tokens, only 1 is free,
    # and FCFS keeps r2 behind it.
    assert scheduled(h.step()) == [(0, 1)]
    assert h.waiting_ids == [1, 2]


def test_v1_readmitted_request_recomputes_prompt_and_outputs():
    h = Harness(tiny_config("vllm-v1", num_gpu_blocks=7, max_num_batched_tokens=96, max_model_len=64))
    h.add(0, prompt=31, max_tokens=3)
    h.add(1, prompt=31, max_tokens=10)
    h.add(2, prompt=31, max_tokens=10)  # 6 usable blocks: all three fit, 32 tokens each
    h.step()
    h.step()
    out = h.step()                      # r0 needs a block: r2 (newest) is preempted
    assert scheduled(out) == [(0, 1), (1, 1)]
    assert h.waiting_ids == [2] and h.requests[2].num_output_tokens == 2
    assert h.finished == [(0, 3.0)]     # r0 produced its 3rd token and freed its 3 blocks
    out = h.step()
    assert scheduled(out) == [(1, 1), (2, 33)]   # r2 re-prefills its prompt and its 2 outputs
    assert h.requests[2].status is RequestStatus.RUNNING
    assert h.running_ids == [1, 2]


def test_v1_victims_newest_first_until_the_request_fits():
    h = Harness(tiny_config("vllm-v1", num_gpu_blocks=5, max_num_batched_tokens=64, max_model_len=64))
    h.add(0, prompt=16, max_tokens=40)
    h.add(1, prompt=16, max_tokens=10)
    h.add(2, prompt=16, max_tokens=10)
    h.add(3, prompt=16, max_tokens=10)   # one block each: the 4 usable blocks are taken
    h.step()
    out = h.step()                       # every request needs a second block
    assert scheduled(out) == [(0, 1), (1, 1)]   # r0 takes r3's block, r1 takes r2's
    assert h.waiting_ids == [2, 3]       # r3 went first; r2, preempted after it, is in front
    assert [h.requests[i].num_preemptions for i in range(4)] == [0, 0, 1, 1]
    assert h.kv.req_to_blocks == {0: [1, 4], 1: [2, 3]}


def test_v1_request_that_is_newest_preempts_itself():
    h = Harness(tiny_config("vllm-v1", num_gpu_blocks=3, max_num_batched_tokens=64, max_model_len=32))
    h.add(0, prompt=16, max_tokens=10)
    h.add(1, prompt=16, max_tokens=10)
    h.step()                              # 2 usable blocks, one each
    out = h.step()                        # r0: r1 is preempted and r0 gets its block
    assert scheduled(out) == [(0, 1)]
    h2 = Harness(tiny_config("vllm-v1", num_gpu_blocks=2, max_num_batched_tokens=64, max_model_len=32))
    h2.add(0, prompt=16, max_tokens=10)
    h2.step()
    out = h2.step()                       # r0 alone needs a second block: it is the newest
    assert out.is_empty
    assert h2.waiting_ids == [0] and h2.running_ids == []
    assert h2.requests[0].status is RequestStatus.PREEMPTED


def test_v1_prefix_cache_hit_schedules_only_the_uncached_tail():
    h = Harness(tiny_config("vllm-v1", num_gpu_blocks=16, max_num_batched_tokens=64, max_model_len=128,
                            enable_prefix_caching=True))
    h.add(0, prompt=48, max_tokens=1, block_hashes=("a", "b", "c"))
    assert scheduled(h.step()) == [(0, 48)]
    assert h.finished == [(0, 1.0)]
    r1 = h.add(1, prompt=49, max_tokens=2, block_hashes=("a", "b", "c"))
    assert scheduled(h.step()) == [(1, 1)]
    assert r1.num_cached_tokens == 48 and r1.num_computed_tokens == 49
    assert h.kv.req_to_blocks[1] == [1, 2, 3, 4]   # the cached blocks, then one new block


def test_v1_fast_path_batches_decoders():
    h = Harness(tiny_config("vllm-v1", max_num_batched_tokens=16), exact=False)
    h.add(0, prompt=4, max_tokens=3)
    h.add(1, prompt=4, max_tokens=5)
    h.step()
    assert h.sched.batch.size == 2 and not h.sched.scalar_running
    out = h.step()
    assert out.num_batch_decodes == 2 and out.scheduled == []
    assert out.decode_context_tokens == 2 * (4 + 1)
    h.step()
    assert h.finished == [(0, 3.0)]
    assert h.requests[0].num_output_tokens == 3 and h.requests[0].last_token_time == 3.0
    assert h.sched.batch.size == 1


# ----- vLLM v0 -------------------------------------------------------------------------------

def test_v0_prefill_first():
    h = Harness(tiny_config("vllm-v0"))
    h.add(0, prompt=10, max_tokens=5)
    assert scheduled(h.step()) == [(0, 10)]
    assert scheduled(h.step()) == [(0, 1)]
    h.add(1, prompt=10, max_tokens=5)
    out = h.step()
    assert scheduled(out) == [(1, 10)]          # prefills only: r0 does not decode this step
    assert out.num_decode_seqs == 0
    assert scheduled(h.step()) == [(0, 1), (1, 1)]


def test_v1_mixes_the_same_steps():
    h = Harness(tiny_config("vllm-v1"))
    h.add(0, prompt=10, max_tokens=5)
    h.step()
    h.step()
    h.add(1, prompt=10, max_tokens=5)
    assert scheduled(h.step()) == [(0, 1), (1, 10)]


def test_v0_watermark_keeps_blocks_free():
    cfg = tiny_config("vllm-v0", num_gpu_blocks=200, max_model_len=3200)
    h = Harness(cfg)
    assert h.sched.watermark_blocks == 2           # 1% of 200 blocks
    h.add(0, prompt=190 * 16)
    assert scheduled(h.step()) == [(0, 3040)]       # 10 blocks left
    h.add(1, prompt=9 * 16)                         # would leave 1 < 2 free: later
    h.add(2, prompt=1)
    out = h.step()
    assert scheduled(out) == [(0, 1)]              # nothing admitted (FCFS), so r0 decodes
    assert h.waiting_ids == [1, 2]
    h2 = Harness(cfg)
    h2.add(0, prompt=190 * 16)
    h2.add(1, prompt=8 * 16)                        # leaves exactly the watermark: admitted
    assert scheduled(h2.step()) == [(0, 3040), (1, 128)]
    assert h2.kv.num_free_blocks == 2


def test_v0_rejects_a_prompt_that_could_never_fit_above_the_watermark():
    h = Harness(tiny_config("vllm-v0", num_gpu_blocks=200, max_model_len=3200))
    h.add(0, prompt=199 * 16, max_tokens=1)        # 200 - 199 < 2 watermark blocks: never
    h.add(1, prompt=16)
    out = h.step()
    assert scheduled(out) == [(1, 16)]
    assert [r.request_id for r in h.sched.rejected] == [0]
    assert h.requests[0].status is RequestStatus.FINISHED_REJECTED
    assert h.waiting_ids == []


def test_v0_allocates_the_whole_prompt_at_admission():
    h = Harness(tiny_config("vllm-v0", num_gpu_blocks=64, max_model_len=256, max_num_batched_tokens=32,
                            enable_chunked_prefill=True))
    h.add(0, prompt=100)
    assert scheduled(h.step()) == [(0, 32)]        # a chunk of the prompt ...
    assert h.kv.num_blocks_of(h.requests[0]) == 7  # ... but blocks for all 100 tokens
    assert scheduled(h.step()) == [(0, 32)]
    assert h.kv.num_blocks_of(h.requests[0]) == 7


def test_v0_preempts_the_latest_arrival_not_the_newest_admission():
    h = Harness(tiny_config("vllm-v0", num_gpu_blocks=6, max_model_len=96))
    assert h.sched.watermark_blocks == 0
    h.add(0, prompt=32, arrival=0.0)
    h.add(1, prompt=32, arrival=1.0)
    h.add(2, prompt=32, arrival=0.5)                # admitted last, arrived second
    assert scheduled(h.step()) == [(0, 32), (1, 32), (2, 32)]
    assert h.kv.num_free_blocks == 0
    out = h.step()
    assert scheduled(out) == [(0, 1), (2, 1)]       # served in arrival order
    assert h.requests[1].status is RequestStatus.PREEMPTED
    assert h.waiting_ids == [1] and h.requests[1].num_computed_tokens == 0
    # v1 in the same situation preempts the newest admission (r2) instead
    v1 = Harness(tiny_config("vllm-v1", num_gpu_blocks=7, max_num_batched_tokens=96, max_model_len=96))
    v1.add(0, prompt=32, arrival=0.0)
    v1.add(1, prompt=32, arrival=1.0)
    v1.add(2, prompt=32, arrival=0.5)
    v1.step()
    assert scheduled(v1.step()) == [(0, 1), (1, 1)]
    assert v1.waiting_ids == [2]


def test_v0_can_append_needs_a_free_block_per_running_sequence():
    """v0 preempts when no block is free even though no running request needs a new block."""
    h = Harness(tiny_config("vllm-v0", num_gpu_blocks=4, max_model_len=64))
    h.add(0, prompt=20, arrival=0.0)
    h.add(1, prompt=20, arrival=0.1)
    h.step()                                        # two blocks each; 21 tokens still fit
    assert h.kv.num_free_blocks == 0
    out = h.step()
    assert scheduled(out) == [(0, 1)]
    assert h.waiting_ids == [1] and h.sched.num_preemptions == 1
    v1 = Harness(tiny_config("vllm-v1", num_gpu_blocks=5, max_num_batched_tokens=64, max_model_len=64))
    v1.add(0, prompt=20)
    v1.add(1, prompt=20)
    v1.step()
    assert scheduled(v1.step()) == [(0, 1), (1, 1)]  # v1 checks what is actually needed
    assert v1.sched.num_preemptions == 0


def test_v0_max_num_seqs_limits_admission():
    h = Harness(tiny_config("vllm-v0", max_num_seqs=2))
    for i in range(3):
        h.add(i, prompt=8)
    assert scheduled(h.step()) == [(0, 8), (1, 8)]
    assert h.waiting_ids == [2]


@pytest.mark.parametrize("engine", ["vllm-v1", "vllm-v0"])
def test_finish_frees_blocks_and_reports_once(engine):
    h = Harness(tiny_config(engine, num_gpu_blocks=8, max_model_len=64, max_num_batched_tokens=64))
    h.add(0, prompt=20, max_tokens=3)
    h.add(1, prompt=5, max_tokens=1)
    h.step()
    assert h.finished == [(1, 1.0)]                 # one output token: done at the prefill
    h.step()
    h.step()
    assert h.finished == [(1, 1.0), (0, 3.0)]
    assert not h.sched.has_unfinished()
    usable = 7 if engine == "vllm-v1" else 8
    assert h.kv.num_free_blocks == usable
    assert h.sched.generation_tokens_total == 4 and h.sched.prompt_tokens_total == 25


# ----- vLLM v0 swap preemption ------------------------------------------------------------------

def test_v0_swap_preemption_keeps_computed_tokens_and_resumes():
    h = Harness(tiny_config("vllm-v0", num_gpu_blocks=4, max_model_len=64, preemption_mode="swap"))
    h.add(0, prompt=20, arrival=0.0)
    h.add(1, prompt=20, arrival=0.1)
    h.step()
    out = h.step()                                  # no free block: r1 (latest arrival) is swapped out
    assert scheduled(out) == [(0, 1)]
    r1 = h.requests[1]
    assert [r.request_id for r in h.sched.swapped] == [1] and h.waiting_ids == []
    assert r1.status is RequestStatus.PREEMPTED and r1.num_computed_tokens == 20  # kept, not recomputed
    assert out.swap_bytes == 2 * h.sched.block_bytes
    assert h.kv.num_blocks_of(r1) == 0


def test_v0_swap_in_mid_prefill_holds_blocks_for_the_scheduled_chunk():
    from servesim.sim.kv_cache_manager import cdiv
    h = Harness(tiny_config("vllm-v0", num_gpu_blocks=44, block_size=8, max_num_seqs=2, max_num_batched_tokens=3,
                            max_model_len=194, enable_chunked_prefill=True, preemption_mode="swap"))
    h.add(0, prompt=142, max_tokens=4, arrival=0.0)
    h.add(1, prompt=193, max_tokens=1, arrival=0.0)
    swapped_in = 0
    for _ in range(200):
        was_swapped = {r.request_id for r in h.sched.swapped}
        out = h.schedule()
        for r, n in out.scheduled:
            if r.request_id in was_swapped:
                swapped_in += 1
            assert h.kv.num_blocks_of(r) >= cdiv(r.num_computed_tokens + n, 8), \
                f"request {r.request_id} computes {r.num_computed_tokens}+{n} tokens in {h.kv.num_blocks_of(r)} blocks"
        h.finish_step(out)
        if not h.sched.has_unfinished():
            break
    assert swapped_in  # the scenario does exercise a swap-in
