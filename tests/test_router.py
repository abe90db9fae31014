"""Routers: exact choices on hand-made snapshots, tie-breaks, local accounting between refreshes."""
from __future__ import annotations

import pytest

from servesim.sim.router import ReplicaLoad, RouterConfig, RouterKind, make_router


def _router(kind: str, n: int = 3, blocks: int = 100, block_size: int = 16, **kw):
    return make_router(RouterConfig(kind, **kw), [blocks] * n, [block_size] * n)


def test_round_robin_cycles_from_replica_zero():
    r = _router("round-robin")
    assert [r.choose(10, 10) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_random_is_seeded_and_uniform_enough():
    r1, r2 = _router("random", n=4, seed=7), _router("random", n=4, seed=7)
    seq1 = [r1.choose(1, 1) for _ in range(5000)]
    assert seq1 == [r2.choose(1, 1) for _ in range(5000)]
    assert seq1 != [_router("random", n=4, seed=8).choose(1, 1) for _ in range(5000)]
    counts = [seq1.count(k) for k in range(4)]
    assert min(counts) > 1100  # 1250 expected each


def test_join_shortest_queue_counts_its_own_dispatches_and_breaks_ties_low():
    r = _router("jsq")
    r.refresh([ReplicaLoad(3), ReplicaLoad(1), ReplicaLoad(1)])
    # 1 and 2 tie at 1: the lower index wins; then 2 (1 < 2); then 1 and 2 tie at 2 -> 1 ...
    assert [r.choose(5, 5) for _ in range(5)] == [1, 2, 1, 2, 0]
    r.refresh([ReplicaLoad(0), ReplicaLoad(5), ReplicaLoad(5)])  # a new snapshot replaces the view
    assert r.choose(5, 5) == 0


def test_least_outstanding_tokens_adds_prompt_and_max_tokens():
    r = _router("least-outstanding-tokens")
    r.refresh([ReplicaLoad(0, 1000), ReplicaLoad(9, 400), ReplicaLoad(0, 700)])
    assert r.choose(500, 200) == 1   # 400 -> 1100
    assert r.choose(100, 100) == 2   # 700 -> 900
    assert r.choose(100, 100) == 2   # 900 < 1000: 900 -> 1100
    assert r.choose(1, 1) == 0       # 1000 < 1100 = 1100


def test_least_kv_usage_adds_the_prompt_blocks():
    r = _router("least-kv-usage", blocks=100, block_size=16)
    r.refresh([ReplicaLoad(0, 0, 0.50), ReplicaLoad(0, 0, 0.40), ReplicaLoad(0, 0, 0.45)])
    assert r.choose(160, 1) == 1     # 0.40 + 10/100 = 0.50
    assert r.choose(17, 1) == 2      # 0.45 + 2/100 = 0.47
    assert r.choose(16, 1) == 2      # 0.47 + 0.01 = 0.48
    assert r.choose(16, 1) == 2      # 0.48 -> 0.49
    assert r.choose(16, 1) == 2      # 0.49 < 0.50 = 0.50 -> 0.50
    assert r.choose(16, 1) == 0      # all at 0.50: lowest index


def test_prefix_aware_follows_the_longest_indexed_prefix():
    r = _router("prefix-aware", prefix_balance_threshold=2)
    r.refresh([ReplicaLoad(0), ReplicaLoad(0), ReplicaLoad(0)])
    assert r.choose(100, 1, (1, 2, 3)) == 0       # nothing indexed: shortest queue (tie -> 0)
    assert r.choose(100, 1, (9, 8)) == 1          # unrelated prefix: shortest queue
    assert r.choose(100, 1, (1, 2, 7)) == 0       # shares (1, 2) with replica 0
    assert r.choose(100, 1, (9, 8, 5, 4)) == 1    # shares (9, 8) with replica 1
    assert r.num_prefix_hits == 2
    assert r.matched_owner((1, 2, 3, 99)) == 0 and r.matched_owner((42,)) is None
    # replica 0 now holds 2 requests, replica 2 none: within the threshold of 2 it still wins
    assert r.choose(100, 1, (1, 2)) == 0
    # now 3 > 0 + 2: too loaded, the request goes to the shortest queue and moves the prefix there
    assert r.choose(100, 1, (1, 2)) == 2
    assert r.matched_owner((1, 2)) == 2
    assert r.key == [3.0, 2.0, 1.0]
    assert r.choose(100, 1, None) == 2            # no hashes: shortest queue


def test_prefix_aware_without_hashes_is_join_shortest_queue():
    p, j = _router("prefix-aware"), _router("jsq")
    loads = [ReplicaLoad(4), ReplicaLoad(2), ReplicaLoad(3)]
    p.refresh(loads)
    j.refresh(loads)
    assert [p.choose(10, 10) for _ in range(20)] == [j.choose(10, 10) for _ in range(20)]


def test_heap_stays_bounded_between_refreshes():
    r = _router("jsq", n=8)
    r.refresh([ReplicaLoad(k) for k in range(8)])
    for _ in range(10_000):
        r.choose(1, 1)
    assert len(r.heap) <= 4 * 8 + 64


def test_router_config_validation():
    assert RouterConfig("jsq").kind is RouterKind.JOIN_SHORTEST_QUEUE
    with pytest.raises(ValueError, match="unknown router"):
        RouterConfig("fastest")
    with pytest.raises(ValueError, match="staleness"):
        RouterConfig("jsq", staleness_s=-1)
    assert not RouterConfig("random").needs_state and RouterConfig("least-kv-usage").needs_state
