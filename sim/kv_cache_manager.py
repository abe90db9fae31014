"""Per-request KV-cache bookkeeping on top of the :class:`BlockPool`.

The scheduler and this manager meet at one narrow call, as in vLLM v1: the scheduler asks
``allocate_slots(request, num_new_tokens)`` and gets the new blocks or ``None`` (not enough free
blocks); it never touches block ids.  ``free(request)`` returns a finished or preempted request's
blocks.  Prefix caching (``enable_caching``) looks up a new request's full blocks by hash.

Which blocks vLLM caches: every full block of a request, prompt and generated tokens alike, each
keyed by a hash chained over the whole prefix.  Here a prompt block the workload hashes (shared
prefixes) is keyed by its workload hash as soon as it is allocated; any other full block can only
ever be hit by its own request, after a preemption, so it is keyed by (request, index), packed in
a negative int, when the request is preempted (the only moment that key can matter) rather than
on every decode step.

Fast paths, each giving vLLM's answer exactly (docs/performance.md): a prompt block is cached once,
when it becomes full (``num_cached_block`` says how far each request got, as in vLLM's
``SingleTypeKVCacheManager``), not re-offered at every allocation; and the cache hits of the
request at the head of the waiting queue, which asks again every step until it is admitted, are
memoized until the pool changes a lookup they depend on (``BlockPool.watch_hashes``).
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
        # How many of a request's leading blocks already went through cache_block: each full
        # prompt block is cached once, not again at every later allocation.
        self.num_cached_block: dict[int, int] = {}
        self._hits_of: tuple[int, int, int] | None = None  # the request get_computed_blocks memoized
        self._hits: list[int] = []

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
        pool = self.block_pool
        memo = (request.request_id, request.num_tokens, request.num_preemptions)
        if pool.watch_valid and memo == self._hits_of:
            hits = list(self._hits)
            return hits, len(hits) * self.block_size
        max_hit_blocks = (request.num_tokens - 1) // self.block_size
        num_hashed = len(hashes) if request.num_preemptions == 0 else max_hit_blocks
        hits = []
        keys = []
        cached = pool.cached
        for j in range(min(max_hit_blocks, num_hashed)):
            key = hashes[j] if j < len(hashes) else self._block_key(request, j)
            keys.append(key)
            same = cached.get(key)
            if same is None:
                break
            # the oldest block carrying the hash (vLLM's get_one_block; see BlockPool.cached)
            hits.append(same if isinstance(same, int) else next(iter(same)))
        # The same request at the head of the waiting queue asks again every step until admitted;
        # its answer stays valid until the pool changes one of these lookups (BlockPool.watch_hashes).
        pool.watch_hashes(set(keys))
        self._hits_of, self._hits = memo, hits
        return list(hits), len(hits) * self.block_size

    @staticmethod
    def _block_key(request: Request, j: int) -> object:
        """The cache key of the request's ``j``-th full block (see the module docstring).

        A block only its own request can hit gets a negative int (``j < 2**20`` always: a request
        holds fewer than 2**20 blocks), which no workload hash (a non-negative int: ``sources.prompt_block_hashes``) equals."""
        hashes = request.block_hashes
        if hashes is not None and j < len(hashes):
            return hashes[j]
        return ~((request.request_id << 20) | j)

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
            if request.block_hashes and self.enable_caching:
                self.num_cached_block[rid] = 0
        computed = new_computed_blocks or []
        num_computed = request.num_computed_tokens + len(computed) * self.block_size
        num_required = cdiv(num_computed + num_new_tokens, self.block_size)
        num_new_blocks = num_required - len(req_blocks) - len(computed)
        pool = self.block_pool
        # Hits still in the free queue (taking them shrinks it):
        evictable = pool.num_free_among(computed) if computed else 0
        if full_num_tokens is not None:
            num_full = cdiv(full_num_tokens, self.block_size) - len(req_blocks) - len(computed)
            if max(num_full, 0) + evictable > pool.num_free_blocks:
                return None
        if computed:
            if num_new_blocks > pool.num_free_blocks - evictable:
                return None
            pool.touch(computed)
            if rid in self.num_cached_block and self.num_cached_block[rid] == len(req_blocks):
                # The hits carry their hashes already (caching would skip them): start after them.
                self.num_cached_block[rid] = len(req_blocks) + len(computed)
            req_blocks.extend(computed)
        elif num_new_blocks > pool.num_free_blocks:
            return None
        new_blocks = pool.get_new_blocks(num_new_blocks) if num_new_blocks > 0 else []
        req_blocks.extend(new_blocks)
        hashes = request.block_hashes
        if hashes and self.enable_caching:
            # Cache the prompt blocks that became full, from where the last call stopped (vLLM's
            # num_cached_block); the earlier ones hold their hash already (in use: not evictable).
            full = min((num_computed + num_new_tokens) // self.block_size, len(hashes))
            done = self.num_cached_block.get(rid, 0)
            if full > done:
                pool.cache_blocks(req_blocks[done:full], hashes[done:full])
                self.num_cached_block[rid] = full
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
        evictable = pool.num_free_among(computed) if computed else 0
        if full_num_tokens is not None:
            num_full = cdiv(full_num_tokens, bs) - len(req_blocks) - len(computed)
            if max(num_full, 0) + evictable > pool.num_free_blocks:
                return False
        return num_new_blocks <= pool.num_free_blocks - evictable

    def append_blocks(self, requests) -> None:
        """One more block for each decoding request whose blocks are full (a sized iterable), in
        order, in one pool call.  The caller has checked that enough blocks are free."""
        for request, block in zip(requests, self.block_pool.get_new_blocks(len(requests))):
            request.blocks.append(block)

    def free(self, request: Request, preempted: bool = False) -> None:
        """Return the request's blocks, tail first (so tails are evicted first from the cache).

        With caching, a preempted request's full blocks (``num_computed_tokens`` still set) keep
        their keys, so the request can hit them when it resumes, as in vLLM; blocks not full of
        computed tokens are reused first."""
        blocks = self.req_to_blocks.pop(request.request_id, None)
        request.blocks = None
        counts = self.num_cached_block
        num_cached = counts.pop(request.request_id, None) if counts else None
        if num_cached is not None:
            if len(counts) > 2 * len(self.req_to_blocks) + 4096:
                # Blocks taken out of req_to_blocks by a caller (a disaggregated prefill keeps them
                # for the KV transfer) leave a count behind: drop those.
                self.num_cached_block = {r: c for r, c in counts.items() if r in self.req_to_blocks}
        if not blocks:
            return
        pool = self.block_pool
        if not self.enable_caching:
            pool.free_blocks(blocks[::-1])
            return
        # vLLM hashes every block full of computed tokens; the others go to the free queue's front.
        num_full = min(request.num_computed_tokens // self.block_size, len(blocks))
        if preempted:
            done = min(num_cached or 0, num_full)  # these carry their prompt hashes already
            pool.cache_blocks(blocks[done:num_full], [self._block_key(request, j) for j in range(done, num_full)])
        pool.free_blocks(blocks[::-1], num_unhashed=len(blocks) - num_full)
