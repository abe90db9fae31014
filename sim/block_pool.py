"""The pool of KV-cache blocks on a replica, with optional prefix caching.

Mirrors ``vllm/v1/core/block_pool.py``: blocks are handed out from the front of a free queue and
returned to its back; with prefix caching a freed block that holds a full, hashed block keeps
its hash and can be hit again until it is evicted (least recently freed first).  As in vLLM, equal
hashes are not de-duplicated: two requests computing the same prefix at once both cache their
blocks, a lookup returns the oldest of them, and evicting one leaves the others hittable.  Block ids
are plain ints.

With caching, vLLM puts freed blocks that carry no hash at the *front* of the free queue and hashed
ones at the back, so the queue is always [unhashed blocks][hashed blocks, least recently freed
first].  The pool keeps the two parts apart: the unhashed part as a stack (its top is the queue's
front), the hashed part as a FIFO list with tombstones for blocks taken out by a cache hit.  A
block that vLLM would hash but that no other request can ever hit (a finished request's own
blocks) goes to the hashed part without a key.  Reference counts above 1 (shared prefix blocks)
are kept in a dict.  Allocation and freeing stay slice operations unless keyed blocks are
involved, which matters at millions of blocks per run.  Without caching no block is ever shared
and every freed block goes to the back: one FIFO list through a head index.
"""
from __future__ import annotations


class BlockPool:
    """``num_blocks`` blocks handed out from the front of a free queue.

    Invariants, with caching: the free queue is ``reversed(_front)`` then the live (non-tombstone)
    entries of ``_back[_back_head:]``; blocks in ``_front`` carry no hash; ``_pos`` maps each free
    block carrying a hash to its index in ``_back``; ``cached[h]`` is exactly the blocks carrying
    hash ``h``, oldest first: the block id itself while it is the first and only one (most hashes:
    no dict to build per cached block), else a ``{block: None}`` dict (never empty); ``_shared`` holds the reference count of blocks
    referenced more than once; ``num_free_blocks`` is the free queue's length.
    """

    def __init__(self, num_blocks: int, enable_caching: bool = False) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.watch: set = set()     # hashes whose lookups a caller memoized (see watch_hashes)
        self.watch_valid = False
        if enable_caching:
            self.block_hash: list[object | None] = [None] * num_blocks
            self.cached: dict[object, int | dict[int, None]] = {}
            self._front: list[int] = list(range(num_blocks - 1, -1, -1))
            self._back: list[int] = []
            self._back_head = 0
            self._tombstones = 0
            self._pos: dict[int, int] = {}
            self._shared: dict[int, int] = {}
            self._num_free = num_blocks
        else:
            self._free = list(range(num_blocks))
            self._head = 0

    @property
    def num_free_blocks(self) -> int:
        if self.enable_caching:
            return self._num_free
        return len(self._free) - self._head

    def usage(self) -> float:
        """Fraction of blocks in use (``vllm:kv_cache_usage_perc``; cached free blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    # ----- views for tests and invariant checks (O(num_blocks)) ------------------------------
    @property
    def free_queue(self) -> list[int]:
        """The free queue, front (next handed out) first."""
        if not self.enable_caching:
            return self._free[self._head:]
        return self._front[::-1] + [b for b in self._back[self._back_head:] if b >= 0]

    @property
    def ref_cnt(self) -> list[int]:
        """Reference count of every block (0: free)."""
        free = set(self.free_queue)
        shared = self._shared if self.enable_caching else {}
        return [0 if b in free else shared.get(b, 1) for b in range(self.num_blocks)]

    # ----- allocation ------------------------------------------------------------------------
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
        self._num_free -= n
        front = self._front
        take = min(n, len(front))
        blocks = front[len(front) - take:][::-1]
        del front[len(front) - take:]
        rest = n - take
        if rest:
            back, head = self._back, self._back_head
            if not self._pos and not self._tombstones:
                blocks += back[head:head + rest]
                head += rest
            else:
                # The next ``rest`` live entries of the back part, skipping tombstones.
                end = head + rest
                seg = back[head:end]
                if self._tombstones:
                    missing = seg.count(-1)
                    while missing:
                        more = back[end:end + missing]
                        end += missing
                        seg += more
                        missing = more.count(-1)
                    if len(seg) > rest:
                        self._tombstones -= len(seg) - rest
                        seg = [b for b in seg if b >= 0]
                head = end
                pos = self._pos
                evicted = [b for b in seg if b in pos]
                if evicted:
                    block_hash, cached = self.block_hash, self.cached
                    hashes = [block_hash[b] for b in evicted]
                    for b, h in zip(evicted, hashes):
                        del pos[b]
                        block_hash[b] = None
                        same = cached[h]
                        if isinstance(same, int):
                            del cached[h]
                        else:
                            del same[b]
                            if not same:
                                del cached[h]
                    if self.watch and not self.watch.isdisjoint(hashes):
                        self.watch_valid = False
                blocks += seg
            self._back_head = head
            if head > 4096 and head * 2 > len(back):
                del back[:head]
                self._back_head = 0
                if self._pos:
                    self._pos = {b: i - head for b, i in self._pos.items()}
        return blocks

    def get_cached_block(self, block_hash: object) -> int | None:
        """The oldest block carrying ``block_hash`` (vLLM's ``get_one_block``), or ``None``."""
        if not self.enable_caching:
            return None
        same = self.cached.get(block_hash)
        if same is None or isinstance(same, int):
            return same
        return next(iter(same))

    def blocks_of(self, block_hash: object) -> list[int]:
        """Every block carrying ``block_hash``, oldest first (empty if none)."""
        same = self.cached.get(block_hash) if self.enable_caching else None
        if same is None:
            return []
        return [same] if isinstance(same, int) else list(same)

    def is_free(self, block: int) -> bool:
        """Whether a block carrying a hash sits in the free queue (an evictable cache hit)."""
        return block in self._pos

    def num_free_among(self, blocks: list[int]) -> int:
        """How many of ``blocks`` (cache hits) sit in the free queue."""
        return sum(map(self._pos.__contains__, blocks))

    def touch(self, blocks: list[int]) -> None:
        """Take a reference on cache hits, pulling free ones out of the free queue."""
        pos, shared, back = self._pos, self._shared, self._back
        for b in blocks:
            i = pos.pop(b, None)
            if i is not None:
                back[i] = -1
                self._tombstones += 1
                self._num_free -= 1
            else:
                shared[b] = shared.get(b, 1) + 1

    def cache_block(self, block: int, block_hash: object) -> None:
        """Record that the in-use ``block`` holds the full block ``block_hash`` (a block keeps its
        first hash)."""
        if self.block_hash[block] is None:
            self.block_hash[block] = block_hash
            same = self.cached.get(block_hash)
            if same is None:
                self.cached[block_hash] = block
                if block_hash in self.watch:
                    self.watch_valid = False
            elif isinstance(same, int):
                self.cached[block_hash] = {same: None, block: None}
            else:
                same[block] = None

    def cache_blocks(self, blocks: list[int], block_hashes) -> None:
        """:meth:`cache_block` for each pair of ``blocks`` and ``block_hashes``, in order."""
        block_hash, cached, watch = self.block_hash, self.cached, self.watch
        for b, h in zip(blocks, block_hashes):
            if block_hash[b] is None:
                block_hash[b] = h
                same = cached.get(h)
                if same is None:
                    cached[h] = b
                    if h in watch:
                        self.watch_valid = False
                elif isinstance(same, int):
                    cached[h] = {same: None, b: None}
                else:
                    same[b] = None

    def watch_hashes(self, hashes: set) -> None:
        """Start watching ``hashes``: :attr:`watch_valid` turns False as soon as the block a lookup
        of one of them returns can change (its oldest block evicted, or a first block cached).

        Lookups (:meth:`get_cached_block`) depend on nothing else: freeing and touching blocks
        leave ``cached`` alone, and a second block cached under a hash is not the oldest."""
        self.watch = hashes
        self.watch_valid = True

    def free_blocks(self, blocks: list[int], num_unhashed: int = 0) -> None:
        """Drop one reference from each block, given in eviction order (callers pass a request's
        blocks tail first, so tails are evicted first).  Blocks reaching 0 go to the back of the
        free queue in that order, except, with caching, the first ``num_unhashed`` of them (blocks
        holding no full block of tokens: vLLM gives them no hash), which go to the front, to be
        reused before any block that could still be hit (vLLM's ``BlockPool.free_blocks``)."""
        if not self.enable_caching:
            self._free.extend(blocks)
            return
        shared = self._shared
        if shared and not shared.keys().isdisjoint(blocks):
            still_held = {b for b in blocks if b in shared}  # referenced by another request too
            for b in still_held:
                c = shared[b]
                if c == 2:
                    del shared[b]
                else:
                    shared[b] = c - 1
            front = [b for b in blocks[:num_unhashed] if b not in still_held]
            back = [b for b in blocks[num_unhashed:] if b not in still_held]
        else:
            front, back = blocks[:num_unhashed], blocks[num_unhashed:]
        if self.cached:
            block_hash = self.block_hash
            moved = [b for b in front if block_hash[b] is not None]  # a hashed block never goes to the front
            if moved:
                front = [b for b in front if block_hash[b] is None]
                back = moved + back
        self._front.extend(reversed(front))
        base = len(self._back)
        self._back.extend(back)
        if self.cached:
            block_hash = self.block_hash
            self._pos.update({b: i for i, b in enumerate(back, base) if block_hash[b] is not None})
        self._num_free += len(front) + len(back)
