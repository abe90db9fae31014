"""The pool of KV-cache blocks on a replica, with optional prefix caching.

Mirrors ``vllm/v1/core/block_pool.py``: blocks are handed out from the front of a free queue and
returned to its back; with prefix caching a freed block that holds a full, hashed prompt block
keeps its hash and can be hit again until it is evicted (least recently freed first).  Block ids
are plain ints.  Without prefix caching no block is ever shared, so the queue is a plain list
(FIFO through a head index) and reference counts are not kept: allocation and freeing are slice
operations, which matters at millions of blocks per run.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable


class BlockPool:
    """``num_blocks`` blocks handed out FIFO.

    Invariants: with caching, a block is in the free queue iff its ``ref_cnt`` is 0 and a hash maps
    to at most one block, which carries that hash; ``num_free_blocks`` is the free queue's length.
    """

    def __init__(self, num_blocks: int, enable_caching: bool = False) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        if enable_caching:
            self.ref_cnt = [0] * num_blocks
            self.block_hash: list[object | None] = [None] * num_blocks
            self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
            self.cached: dict[object, int] = {}
        else:
            self._free = list(range(num_blocks))
            self._head = 0

    @property
    def num_free_blocks(self) -> int:
        if self.enable_caching:
            return len(self.free_queue)
        return len(self._free) - self._head

    def usage(self) -> float:
        """Fraction of blocks in use (``vllm:kv_cache_usage_perc``; cached free blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def get_new_blocks(self, n: int) -> list[int]:
        """Take ``n`` blocks from the front of the free queue (evicting their cached hashes)."""
        if n > self.num_free_blocks:
            raise RuntimeError(f"asked for {n} blocks with {self.num_free_blocks} free")
        if not self.enable_caching:
            head = self._head
            blocks = self._free[head:head + n]
            self._head = head + n
            if self._head > 4096 and self._head * 2 > len(self._free):
                del self._free[:self._head]
                self._head = 0
            return blocks
        popitem, ref_cnt, block_hash = self.free_queue.popitem, self.ref_cnt, self.block_hash
        blocks = [popitem(last=False)[0] for _ in range(n)]
        for b in blocks:
            ref_cnt[b] = 1
            h = block_hash[b]
            if h is not None:
                del self.cached[h]
                block_hash[b] = None
        return blocks

    def get_cached_block(self, block_hash: object) -> int | None:
        return self.cached.get(block_hash) if self.enable_caching else None

    def touch(self, blocks: list[int]) -> None:
        """Take a reference on cache hits, pulling free ones out of the free queue."""
        for b in blocks:
            if self.ref_cnt[b] == 0:
                del self.free_queue[b]
            self.ref_cnt[b] += 1

    def cache_block(self, block: int, block_hash: object) -> None:
        """Record that ``block`` holds the full prompt block ``block_hash`` (first writer wins)."""
        if block_hash not in self.cached and self.block_hash[block] is None:
            self.cached[block_hash] = block
            self.block_hash[block] = block_hash

    def free_blocks(self, blocks: Iterable[int]) -> None:
        """Drop one reference from each block; blocks reaching 0 go to the back of the free queue
        in the order given (callers pass a request's blocks tail first, so tails are evicted first)."""
        if not self.enable_caching:
            self._free.extend(blocks)
            return
        ref_cnt, free_queue = self.ref_cnt, self.free_queue
        for b in blocks:
            ref_cnt[b] -= 1
            if ref_cnt[b] == 0:
                free_queue[b] = None
