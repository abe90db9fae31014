"""Per-request KV-cache bookkeeping on top of the :class:`BlockPool`.

The scheduler and this manager meet at one narrow call, as in vLLM v1: the scheduler asks
``allocate_slots(request, num_new_tokens)`` and gets the new blocks or ``None`` (not enough free
blocks); it never touches block ids.  ``free(request)`` returns a finished or preempted request's
blocks.  Prefix caching (``enable_caching``) looks up a new request's full prompt blocks by hash.
"""
from __future__ import annotations

from .block_pool import BlockPool
from .request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    """Owns ``req_to_blocks``: the blocks of every request that holds KV cache.

    Invariant: a request holds ``cdiv(num_computed_tokens + scheduled tokens, block_size)`` blocks
    after a successful ``allocate_slots``, and none after ``free``.
    """

    def __init__(self, num_gpu_blocks: int, block_size: int, enable_caching: bool = False,
                 reserve_null_block: bool = False) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.block_pool = BlockPool(num_gpu_blocks, enable_caching)
        self.num_gpu_blocks = num_gpu_blocks
        # vLLM v1 keeps block 0 as a placeholder "null block" that is never allocated.
        self.null_block = self.block_pool.get_new_blocks(1)[0] if reserve_null_block else None
        self.req_to_blocks: dict[int, list[int]] = {}

    @property
    def num_free_blocks(self) -> int:
        return self.block_pool.num_free_blocks

    @property
    def usage(self) -> float:
        return self.block_pool.usage()

    def num_blocks_of(self, request: Request) -> int:
        blocks = self.req_to_blocks.get(request.request_id)
        return len(blocks) if blocks else 0

    def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
        """Cached blocks matching the request's prompt prefix, and the tokens they cover.

        At least the last prompt token is always recomputed (vLLM needs its logits), so a full hit
        stops one block short when the prompt is a whole number of blocks.
        """
        if not self.enable_caching or not request.block_hashes:
            return [], 0
        max_hit_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[int] = []
        pool = self.block_pool
        for h in request.block_hashes[:max_hit_blocks]:
            b = pool.get_cached_block(h)
            if b is None:
                break
            hits.append(b)
        return hits, len(hits) * self.block_size

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       new_computed_blocks: list[int] | None = None) -> list[int] | None:
        """Give ``request`` room for ``num_new_tokens`` more tokens (after any cache hits).

        Returns the newly allocated blocks, or ``None`` when the free blocks (less cache hits that
        would themselves be taken out of the free queue) do not suffice; nothing changes then.
        """
        rid = request.request_id
        req_blocks = self.req_to_blocks.get(rid)
        if req_blocks is None:
            req_blocks = self.req_to_blocks[rid] = request.blocks = []
        computed = new_computed_blocks or []
        num_computed = request.num_computed_tokens + len(computed) * self.block_size
        num_required = cdiv(num_computed + num_new_tokens, self.block_size)
        num_new_blocks = num_required - len(req_blocks) - len(computed)
        pool = self.block_pool
        if computed:
            evictable = sum(1 for b in computed if pool.ref_cnt[b] == 0)  # hits sitting in the free queue
            if num_new_blocks > pool.num_free_blocks - evictable:
                return None
            pool.touch(computed)
            req_blocks.extend(computed)
        elif num_new_blocks > pool.num_free_blocks:
            return None
        new_blocks = pool.get_new_blocks(num_new_blocks) if num_new_blocks > 0 else []
        req_blocks.extend(new_blocks)
        if self.enable_caching and request.block_hashes:
            self._cache_full_prompt_blocks(request, req_blocks, num_computed + num_new_tokens)
        return new_blocks

    def append_block(self, request: Request) -> None:
        """Fast path for a decoding request whose blocks are full: one more block.

        The caller has checked that enough blocks are free for every request it appends to.
        """
        request.blocks.append(self.block_pool.get_new_blocks(1)[0])

    def append_blocks(self, requests) -> None:
        """:meth:`append_block` for several requests (a sized iterable), in order, one pool call."""
        for request, block in zip(requests, self.block_pool.get_new_blocks(len(requests))):
            request.blocks.append(block)

    def _cache_full_prompt_blocks(self, request: Request, req_blocks: list[int], num_tokens: int) -> None:
        full = min(num_tokens // self.block_size, len(request.block_hashes))
        pool = self.block_pool
        for i in range(full):
            pool.cache_block(req_blocks[i], request.block_hashes[i])

    def free(self, request: Request) -> None:
        """Return the request's blocks, tail first (so tails are evicted first from the cache)."""
        blocks = self.req_to_blocks.pop(request.request_id, None)
        request.blocks = None
        if blocks:
            self.block_pool.free_blocks(reversed(blocks))
