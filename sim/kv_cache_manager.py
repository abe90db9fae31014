"""Per-request KV-cache bookkeeping on top of the :class:`BlockPool`.

The scheduler and this manager meet at one narrow call, as in vLLM v1: the scheduler asks
``allocate_slots(request, num_new_tokens)`` and gets the new blocks or ``None`` (not enough free
blocks); it never touches block ids.  ``free(request)`` returns a finished or preempted request's
blocks.  Prefix caching (``enable_caching``) looks up a new request's full blocks by hash.

Which blocks vLLM caches: every full block of a request, prompt and generated tokens alike, each
keyed by a hash chained over the whole prefix.  Here a prompt block the workload hashes (shared
prefixes) is keyed by its workload hash as soon as it is allocated; any other full block can only
ever be hit by its own request, after a preemption, so it is keyed by (request, index) when the
request is preempted (the only moment that key can matter) rather than on every decode step.
"""
from __future__ import annotations

from .block_pool import BlockPool
from .request import Request

# Tags the key of a block only its own request can hit; no workload hash can equal such a key.
_OWN_BLOCK = object()


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
        """Cached blocks matching the request's token prefix, and the tokens they cover.

        At least the last token is always recomputed (vLLM needs its logits), so a full hit stops
        one block short when the tokens fill a whole number of blocks.  A resumed request can hit
        its own blocks (prompt and output) cached when it was preempted.
        """
        hashes = request.block_hashes or ()
        if not self.enable_caching or not (hashes or request.num_preemptions):
            return [], 0
        max_hit_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[int] = []
        pool = self.block_pool
        num_hashed = len(hashes) if request.num_preemptions == 0 else max_hit_blocks
        for j in range(min(max_hit_blocks, num_hashed)):
            b = pool.get_cached_block(self._block_key(request, j))
            if b is None:
                break
            hits.append(b)
        return hits, len(hits) * self.block_size

    @staticmethod
    def _block_key(request: Request, j: int) -> object:
        """The cache key of the request's ``j``-th full block (see the module docstring)."""
        hashes = request.block_hashes
        if hashes is not None and j < len(hashes):
            return hashes[j]
        return (_OWN_BLOCK, request.request_id, j)

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       new_computed_blocks: list[int] | None = None,
                       full_num_tokens: int | None = None) -> list[int] | None:
        """Give ``request`` room for ``num_new_tokens`` more tokens (after any cache hits).

        Returns the newly allocated blocks, or ``None`` when the free blocks (less cache hits that
        would themselves be taken out of the free queue) do not suffice; nothing changes then.
        With ``full_num_tokens`` (vLLM's ``full_sequence_must_fit`` admission gate) it is also
        ``None`` unless blocks for that many tokens would fit, though only the chunk is allocated.
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
        evictable = sum(1 for b in computed if pool.is_free(b)) if computed else 0  # hits in the free queue
        if full_num_tokens is not None:
            num_full = cdiv(full_num_tokens, self.block_size) - len(req_blocks) - len(computed)
            if max(num_full, 0) + evictable > pool.num_free_blocks:
                return None
        if computed:
            if num_new_blocks > pool.num_free_blocks - evictable:
                return None
            pool.touch(computed)
            req_blocks.extend(computed)
        elif num_new_blocks > pool.num_free_blocks:
            return None
        new_blocks = pool.get_new_blocks(num_new_blocks) if num_new_blocks > 0 else []
        req_blocks.extend(new_blocks)
        if self.enable_caching and request.block_hashes:
            self._cache_full_prompt_blocks(request.block_hashes, req_blocks, num_computed + num_new_tokens)
        return new_blocks

    def can_allocate_slots(self, request: Request, num_new_tokens: int,
                           new_computed_blocks: list[int] | None = None,
                           full_num_tokens: int | None = None) -> bool:
        """Whether :meth:`allocate_slots` with these arguments would return blocks; changes nothing
        (the scheduler's bulk decode asks it of the waiting head: ``tests/test_bulk_waiting.py``
        checks it against ``allocate_slots``)."""
        req_blocks = self.req_to_blocks.get(request.request_id) or ()
        computed = new_computed_blocks or []
        bs = self.block_size
        num_computed = request.num_computed_tokens + len(computed) * bs
        num_new_blocks = cdiv(num_computed + num_new_tokens, bs) - len(req_blocks) - len(computed)
        pool = self.block_pool
        evictable = sum(1 for b in computed if pool.is_free(b)) if computed else 0
        if full_num_tokens is not None:
            num_full = cdiv(full_num_tokens, bs) - len(req_blocks) - len(computed)
            if max(num_full, 0) + evictable > pool.num_free_blocks:
                return False
        return num_new_blocks <= pool.num_free_blocks - evictable

    def append_block(self, request: Request) -> None:
        """Fast path for a decoding request whose blocks are full: one more block.

        The caller has checked that enough blocks are free for every request it appends to.
        """
        assert request.blocks is not None, "append_block needs a request that holds blocks"
        request.blocks.append(self.block_pool.get_new_blocks(1)[0])

    def append_blocks(self, requests) -> None:
        """:meth:`append_block` for several requests (a sized iterable), in order, one pool call."""
        for request, block in zip(requests, self.block_pool.get_new_blocks(len(requests))):
            request.blocks.append(block)

    def _cache_full_prompt_blocks(self, block_hashes: tuple, req_blocks: list[int], num_tokens: int) -> None:
        full = min(num_tokens // self.block_size, len(block_hashes))
        pool = self.block_pool
        for i in range(full):
            pool.cache_block(req_blocks[i], block_hashes[i])

    def free(self, request: Request, preempted: bool = False) -> None:
        """Return the request's blocks, tail first (so tails are evicted first from the cache).

        With caching, a preempted request's full blocks (``num_computed_tokens`` still set) keep
        their keys, so the request can hit them when it resumes, as in vLLM; blocks not full of
        computed tokens are reused first."""
        blocks = self.req_to_blocks.pop(request.request_id, None)
        request.blocks = None
        if not blocks:
            return
        pool = self.block_pool
        if not self.enable_caching:
            pool.free_blocks(blocks[::-1])
            return
        # vLLM hashes every block full of computed tokens; the others go to the free queue's front.
        num_full = min(request.num_computed_tokens // self.block_size, len(blocks))
        if preempted:
            for j in range(num_full):
                pool.cache_block(blocks[j], self._block_key(request, j))
        pool.free_blocks(blocks[::-1], num_unhashed=len(blocks) - num_full)
