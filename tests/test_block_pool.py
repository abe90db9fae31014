"""Exact unit tests of the paged KV cache: :class:`BlockPool` and :class:`KVCacheManager`.

No SimPy, no scheduler: block ids, free-queue order, hashes and reference counts are asserted
exactly, as vLLM's ``tests/v1/core/test_prefix_caching.py`` does.
"""
from __future__ import annotations

import pytest

from servesim.sim.block_pool import BlockPool
from servesim.sim.kv_cache_manager import KVCacheManager, cdiv
from servesim.sim.request import Request


def free_queue(pool: BlockPool) -> list[int]:
    """The free queue, front (next handed out) first."""
    if pool.enable_caching:
        return list(pool.free_queue)
    return pool._free[pool._head:]


def req(request_id: int, prompt: int, max_tokens: int = 8, hashes: tuple | None = None) -> Request:
    return Request(request_id, 0.0, prompt, max_tokens, hashes)


# ----- BlockPool without caching ------------------------------------------------------------

def test_fifo_block_ids():
    pool = BlockPool(10)
    assert pool.get_new_blocks(3) == [0, 1, 2]
    assert pool.get_new_blocks(2) == [3, 4]
    assert pool.num_free_blocks == 5
    pool.free_blocks([4, 1])  # freed blocks go to the back, in the order given
    assert free_queue(pool) == [5, 6, 7, 8, 9, 4, 1]
    assert pool.get_new_blocks(7) == [5, 6, 7, 8, 9, 4, 1]
    assert pool.num_free_blocks == 0
    assert pool.usage() == 1.0


def test_usage_and_limits():
    pool = BlockPool(4)
    assert pool.usage() == 0.0
    pool.get_new_blocks(1)
    assert pool.usage() == 0.25
    with pytest.raises(RuntimeError, match="asked for 4 blocks with 3 free"):
        pool.get_new_blocks(4)
    assert pool.num_free_blocks == 3  # a refused request takes nothing
    assert pool.get_new_blocks(0) == []
    with pytest.raises(ValueError, match="at least one block"):
        BlockPool(0)


def test_fifo_survives_head_compaction():
    """The head index is compacted past 4096 blocks; the queue order must not change."""
    pool = BlockPool(10_000)
    taken = [pool.get_new_blocks(1)[0] for _ in range(6000)]
    assert taken == list(range(6000))
    pool.free_blocks([5, 3, 1])
    assert pool.num_free_blocks == 4003
    assert pool.get_new_blocks(4000) == list(range(6000, 10_000))
    assert pool.get_new_blocks(3) == [5, 3, 1]


def test_no_cache_lookups_without_caching():
    pool = BlockPool(4)
    assert pool.get_cached_block("h") is None


# ----- BlockPool with prefix caching --------------------------------------------------------

def test_cached_blocks_hit_and_refcount():
    pool = BlockPool(6, enable_caching=True)
    assert pool.get_new_blocks(3) == [0, 1, 2]
    assert pool.ref_cnt[:3] == [1, 1, 1]
    pool.cache_block(0, "h0")
    pool.cache_block(1, "h1")
    pool.cache_block(2, "h0")   # equal hashes are not de-duplicated (vLLM's BlockHashToBlockMap) ...
    pool.cache_block(0, "hx")   # ... but a block carries one hash
    assert pool.get_cached_block("h0") == 0  # the oldest block of a hash is the one hit
    assert pool.get_cached_block("h1") == 1
    assert pool.get_cached_block("hx") is None
    assert pool.block_hash[:3] == ["h0", "h1", "h0"]
    assert pool.cached == {"h0": {0: None, 2: None}, "h1": 1}  # a hash's only block is kept bare
    assert pool.blocks_of("h0") == [0, 2] and pool.blocks_of("h1") == [1] and pool.blocks_of("hx") == []

    pool.free_blocks([2, 1, 0])  # tail first, as KVCacheManager.free passes them
    assert free_queue(pool) == [3, 4, 5, 2, 1, 0]
    assert pool.get_cached_block("h1") == 1  # still hittable while free

    pool.touch([1])  # a hit on a free cached block takes it out of the free queue
    assert pool.ref_cnt[1] == 1
    assert free_queue(pool) == [3, 4, 5, 2, 0]
    pool.touch([1])
    assert pool.ref_cnt[1] == 2
    pool.free_blocks([1])
    assert pool.ref_cnt[1] == 1 and 1 not in pool.free_queue
    pool.free_blocks([1])
    assert pool.ref_cnt[1] == 0 and free_queue(pool)[-1] == 1


def test_duplicate_hash_stays_hittable_after_the_oldest_is_evicted():
    pool = BlockPool(3, enable_caching=True)
    pool.get_new_blocks(3)
    pool.cache_block(0, "h")
    pool.cache_block(1, "h")
    pool.free_blocks([0, 1, 2])
    assert pool.get_new_blocks(1) == [0]   # evicts block 0's copy of "h" ...
    assert pool.get_cached_block("h") == 1  # ... block 1 still holds it
    assert pool.get_new_blocks(1) == [1]
    assert pool.get_cached_block("h") is None and "h" not in pool.cached


def test_unhashed_blocks_go_to_the_front_of_the_free_queue():
    """vLLM 0.27 ``BlockPool.free_blocks``: with caching, freed blocks without a hash are reused
    before any cached block (they can never be hit)."""
    pool = BlockPool(6, enable_caching=True)
    pool.get_new_blocks(4)
    pool.cache_block(0, "a")
    pool.cache_block(1, "b")
    pool.free_blocks([3, 2, 1, 0], num_unhashed=2)   # tail first: 3 and 2 hold no full block
    assert free_queue(pool) == [3, 2, 4, 5, 1, 0]
    plain = BlockPool(6)
    plain.get_new_blocks(4)
    plain.free_blocks([3, 2, 1, 0], num_unhashed=2)   # without caching every block goes to the back
    assert free_queue(plain) == [4, 5, 3, 2, 1, 0]


def test_eviction_takes_least_recently_freed_cached_block():
    pool = BlockPool(4, enable_caching=True)
    blocks = pool.get_new_blocks(4)
    for b, h in zip(blocks, "abcd"):
        pool.cache_block(b, h)
    pool.free_blocks([2])  # c freed first ...
    pool.free_blocks([0])  # ... then a, then d
    pool.free_blocks([3])
    assert free_queue(pool) == [2, 0, 3]
    assert pool.get_new_blocks(1) == [2]  # the least recently freed goes first
    assert pool.get_cached_block("c") is None  # its hash is evicted
    assert pool.block_hash[2] is None and pool.ref_cnt[2] == 1
    assert pool.get_cached_block("a") == 0 and pool.get_cached_block("d") == 3
    assert pool.get_cached_block("b") == 1  # in use, never evicted
    assert pool.get_new_blocks(1) == [0]
    assert pool.get_cached_block("a") is None
    pool.cache_block(0, "c")  # the freed hash can be written again
    assert pool.get_cached_block("c") == 0


def test_caching_pool_usage_counts_cached_free_blocks_as_free():
    pool = BlockPool(4, enable_caching=True)
    b = pool.get_new_blocks(2)
    pool.cache_block(b[0], "x")
    pool.free_blocks(b[::-1])
    assert pool.num_free_blocks == 4 and pool.usage() == 0.0


# ----- KVCacheManager ------------------------------------------------------------------------

def test_cdiv():
    assert [cdiv(a, 16) for a in (0, 1, 15, 16, 17, 32, 33)] == [0, 1, 1, 1, 2, 2, 3]


def test_allocate_slots_exact_block_ids():
    kv = KVCacheManager(10, 16)
    r = req(0, prompt=20)
    assert kv.allocate_slots(r, 20) == [0, 1]
    r.num_computed_tokens = 20
    assert kv.allocate_slots(r, 12) == []    # 32 tokens still fit in 2 blocks
    assert kv.allocate_slots(r, 13) == [2]   # 33 need a third
    assert kv.req_to_blocks[0] == [0, 1, 2]
    other = req(1, prompt=5)
    assert kv.allocate_slots(other, 5) == [3]
    assert kv.num_blocks_of(r) == 3 and kv.num_blocks_of(other) == 1
    assert kv.num_free_blocks == 6


def test_allocate_slots_none_leaves_state_unchanged():
    kv = KVCacheManager(4, 16)
    a, b = req(0, prompt=48), req(1, prompt=17)
    assert kv.allocate_slots(a, 48) == [0, 1, 2]
    queue_before = free_queue(kv.block_pool)
    assert kv.allocate_slots(b, 17) is None  # needs 2, 1 free
    assert kv.num_free_blocks == 1
    assert free_queue(kv.block_pool) == queue_before
    assert kv.num_blocks_of(b) == 0
    assert kv.req_to_blocks[0] == [0, 1, 2]
    assert kv.allocate_slots(b, 16) == [3]   # what fits still gets the next block in order
    # a request that already holds blocks asks for more than is free: nothing changes either
    a.num_computed_tokens = 48
    assert kv.allocate_slots(a, 1) is None
    assert kv.req_to_blocks[0] == [0, 1, 2] and kv.num_free_blocks == 0


def test_free_returns_blocks_tail_first():
    kv = KVCacheManager(8, 16)
    a = req(0, prompt=40)
    kv.allocate_slots(a, 40)
    kv.free(a)
    assert free_queue(kv.block_pool) == [3, 4, 5, 6, 7, 2, 1, 0]
    assert kv.num_blocks_of(a) == 0
    kv.free(a)  # freeing twice is a no-op
    assert kv.num_free_blocks == 8


def test_null_block_is_reserved_for_v1():
    kv = KVCacheManager(4, 16, reserve_null_block=True)
    assert kv.null_block == 0
    assert kv.num_free_blocks == 3
    a = req(0, prompt=48)
    assert kv.allocate_slots(a, 48) == [1, 2, 3]
    kv.free(a)
    assert kv.allocate_slots(req(1, prompt=48), 48) == [3, 2, 1]  # block 0 never handed out
    assert KVCacheManager(4, 16).null_block is None


def test_append_blocks_in_order():
    kv = KVCacheManager(8, 4)
    a, b = req(0, prompt=4), req(1, prompt=4)
    kv.allocate_slots(a, 4)
    kv.allocate_slots(b, 4)
    kv.append_blocks([b, a])
    kv.append_blocks([a])
    assert kv.req_to_blocks == {0: [0, 3, 4], 1: [1, 2]}


# ----- prefix caching through the manager ----------------------------------------------------

HASHES = ("a", "b", "c")


def test_full_prompt_blocks_are_cached_as_scheduled():
    kv = KVCacheManager(8, 16, enable_caching=True)
    r = req(0, prompt=48, hashes=HASHES)
    assert kv.allocate_slots(r, 20) == [0, 1]
    assert kv.block_pool.cached == {"a": 0}  # only full blocks of scheduled tokens
    r.num_computed_tokens = 20
    assert kv.allocate_slots(r, 28) == [2]
    assert kv.block_pool.cached == {"a": 0, "b": 1, "c": 2}


def test_get_computed_blocks_never_hits_the_last_prompt_token():
    kv = KVCacheManager(8, 16, enable_caching=True)
    first = req(0, prompt=48, hashes=HASHES)
    kv.allocate_slots(first, 48)
    kv.free(first)
    same = req(1, prompt=48, hashes=HASHES)
    assert kv.get_computed_blocks(same) == ([0, 1], 32)  # 3 full blocks, the last is recomputed
    longer = req(2, prompt=49, hashes=HASHES)
    assert kv.get_computed_blocks(longer) == ([0, 1, 2], 48)
    diverging = req(3, prompt=49, hashes=("a", "z", "c"))
    assert kv.get_computed_blocks(diverging) == ([0], 16)  # hits stop at the first miss
    assert kv.get_computed_blocks(req(4, prompt=49)) == ([], 0)
    plain = KVCacheManager(8, 16)
    assert plain.get_computed_blocks(req(5, prompt=49, hashes=HASHES)) == ([], 0)


def test_allocate_with_hits_touches_them_and_takes_new_blocks_after():
    kv = KVCacheManager(6, 16, enable_caching=True)
    first = req(0, prompt=48, hashes=HASHES)
    kv.allocate_slots(first, 48)               # blocks 0, 1, 2
    kv.free(first)                              # free queue: 3 4 5 2 1 0
    second = req(1, prompt=49, hashes=HASHES)
    hits, num_cached = kv.get_computed_blocks(second)
    assert (hits, num_cached) == ([0, 1, 2], 48)
    assert kv.allocate_slots(second, 1, hits) == [3]
    assert kv.req_to_blocks[1] == [0, 1, 2, 3]
    assert [kv.block_pool.ref_cnt[b] for b in range(6)] == [1, 1, 1, 1, 0, 0]
    assert free_queue(kv.block_pool) == [4, 5]
    # a third request sharing the prefix takes references on the same blocks
    third = req(2, prompt=33, hashes=HASHES[:2])
    hits, _ = kv.get_computed_blocks(third)
    assert hits == [0, 1]
    assert kv.allocate_slots(third, 1, hits) == [4]
    assert kv.block_pool.ref_cnt[:2] == [2, 2]
    second.num_computed_tokens = 49
    kv.free(second)
    assert kv.block_pool.ref_cnt[:4] == [1, 1, 0, 0]
    assert free_queue(kv.block_pool) == [3, 5, 2]  # block 3 holds no full block: reused first


def test_allocate_with_hits_counts_evictable_hits_and_refuses_cleanly():
    kv = KVCacheManager(4, 16, enable_caching=True)
    first = req(0, prompt=48, hashes=HASHES)
    kv.allocate_slots(first, 48)
    kv.free(first)                              # free queue: 3 2 1 0, blocks 0-2 cached
    big = req(1, prompt=49 + 32, hashes=HASHES)
    hits, _ = kv.get_computed_blocks(big)
    assert hits == [0, 1, 2]
    # 3 hits + 3 new blocks needed, but touching the hits leaves only block 3 free
    assert kv.allocate_slots(big, 33, hits) is None
    assert free_queue(kv.block_pool) == [3, 2, 1, 0]
    assert kv.block_pool.ref_cnt == [0, 0, 0, 0]
    assert kv.block_pool.cached == {"a": 0, "b": 1, "c": 2}
    assert kv.num_blocks_of(big) == 0
    fits = req(2, prompt=49, hashes=HASHES)
    assert kv.allocate_slots(fits, 1, kv.get_computed_blocks(fits)[0]) == [3]


# ----- fast paths of the prefix cache against a fresh walk --------------------------------------

def walk_hits(kv: KVCacheManager, r: Request) -> list[int]:
    """The cache hits of ``r`` looked up from scratch (vLLM's ``find_longest_cache_hit``)."""
    hashes = r.block_hashes or ()
    if not (hashes or r.num_preemptions):
        return []
    max_hit = (r.num_tokens - 1) // kv.block_size
    num_hashed = len(hashes) if r.num_preemptions == 0 else max_hit
    hits = []
    for j in range(min(max_hit, num_hashed)):
        same = kv.block_pool.blocks_of(kv._block_key(r, j))
        if not same:
            break
        hits.append(same[0])
    return hits


def test_own_block_keys_never_equal_a_workload_hash():
    r = req(7, prompt=64, hashes=(0, 1))
    keys = [KVCacheManager._block_key(r, j) for j in range(4)]
    assert keys[:2] == [0, 1]
    assert all(isinstance(k, int) and k < 0 for k in keys[2:]) and len(set(keys)) == 4


def test_memoized_hits_are_dropped_when_a_hit_block_is_evicted_or_a_missing_one_cached():
    kv = KVCacheManager(6, 4, enable_caching=True)
    first = req(0, prompt=8, hashes=("a", "b"))
    kv.allocate_slots(first, 8)
    first.num_computed_tokens = 8
    kv.free(first)                                    # free queue: 2 3 4 5 | 1 0 (cached b, a)
    waiting = req(1, prompt=13, hashes=("a", "b", "c"))
    assert kv.get_computed_blocks(waiting) == ([0, 1], 8)
    kv.block_pool.get_new_blocks(4)                   # the unhashed blocks: nothing evicted
    assert kv.block_pool.watch_valid
    assert kv.get_computed_blocks(waiting) == ([0, 1], 8)
    kv.block_pool.get_new_blocks(1)                   # evicts block 1 ("b")
    assert not kv.block_pool.watch_valid
    assert kv.get_computed_blocks(waiting) == ([0], 4)
    kv.block_pool.free_blocks([2, 3, 4, 5])          # free queue: 0 (cached a) 2 3 4 5
    other = req(2, prompt=12, hashes=("a", "b", "c"))
    assert kv.get_computed_blocks(other) == ([0], 4)
    assert kv.allocate_slots(other, 8, [0]) == [2, 3]  # caches "b" and "c" in blocks 2 and 3
    assert not kv.block_pool.watch_valid
    assert kv.get_computed_blocks(waiting) == ([0, 2, 3], 12)


@pytest.mark.parametrize("seed", range(12))
def test_prefix_cache_fast_paths_agree_with_a_fresh_walk(seed):
    """Random arrivals, chunked prefills, decodes, finishes and preemptions on a small caching
    pool: every lookup (memoized or not) equals a fresh walk, incremental caching leaves every
    full prompt block of a running request cached, and the pool's bookkeeping stays consistent."""
    import random
    rng = random.Random(seed)
    bs = 4
    kv = KVCacheManager(40, bs, enable_caching=True, reserve_null_block=seed % 2 == 0)
    prefixes = [tuple(f"p{k}.{j}" for j in range(12)) for k in range(3)]
    waiting: list[Request] = []
    running: list[Request] = []
    next_id = 0
    for _ in range(400):
        op = rng.random()
        if op < 0.25:
            prompt = rng.randint(1, 40)
            base = rng.choice(prefixes)
            cut = rng.randint(0, prompt // bs)
            hashes = base[:cut] + tuple(f"u{next_id}.{j}" for j in range(prompt // bs - cut))
            waiting.append(req(next_id, prompt, max_tokens=rng.randint(1, 12), hashes=hashes or None))
            next_id += 1
        elif op < 0.55 and waiting:
            r = waiting[0]
            for _ in range(rng.randint(1, 3)):       # asked again while blocked: the memo answers
                hits, num_cached = kv.get_computed_blocks(r)
                assert hits == walk_hits(kv, r) and num_cached == len(hits) * bs
            num_new = min(r.num_tokens - num_cached, rng.choice([bs, 2 * bs, 64]))
            if kv.allocate_slots(r, num_new, hits) is not None:
                r.num_computed_tokens = num_cached + num_new
                waiting.pop(0)
                running.append(r)
        elif op < 0.85 and running:
            r = rng.choice(running)
            if r.num_computed_tokens < r.num_tokens:          # prefill chunk
                num_new = min(r.num_tokens - r.num_computed_tokens, 2 * bs)
            else:                                             # a decode step
                r.num_output_tokens += 1
                num_new = 1
            if kv.allocate_slots(r, num_new) is None:
                victim = running.pop()                        # recompute preemption
                kv.free(victim, preempted=True)
                victim.num_computed_tokens = 0
                victim.num_preemptions += 1
                waiting.insert(0, victim)
                continue
            r.num_computed_tokens += num_new
            if r.num_output_tokens >= r.max_tokens:
                running.remove(r)
                kv.free(r)
        for r in running:   # every full, hashed prompt block of a running request is cached
            full = min(r.num_computed_tokens // bs, len(r.block_hashes or ()))
            for j in range(full):
                b = kv.req_to_blocks[r.request_id][j]
                assert kv.block_pool.block_hash[b] is not None
        pool = kv.block_pool
        assert pool.num_free_blocks == len(pool.free_queue)
        assert all(pool.block_hash[b] == h for h in pool.cached for b in pool.blocks_of(h))
