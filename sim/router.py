"""Routers: which replica of a pool serves the next request.

A router sees the replicas through a :class:`ReplicaLoad` snapshot that the cluster refreshes every
``staleness_s`` simulated seconds (real routers scrape ``/metrics`` that are seconds old), plus its
own dispatches since that snapshot (a real router knows what it sent).  So between refreshes a
request adds ``1`` to its replica's queue, ``prompt + max_tokens`` to its outstanding tokens and its
prompt's blocks to its KV usage.

Policies (:class:`RouterKind`), each with a deterministic tie-break (the lowest replica index):

* ``round-robin``: replicas in turn; ``random``: uniform, one seeded stream;
* ``join-shortest-queue``: fewest running + waiting requests;
* ``least-outstanding-tokens``: fewest prompt and output tokens not yet processed;
* ``least-kv-usage``: lowest KV-cache usage;
* ``prefix-aware``: the replica that most recently received the longest prefix of the request's
  Mooncake ``hash_ids`` (the router's own index, like SGLang's approximate radix tree: it does not
  see evictions), unless that replica's queue exceeds the shortest by more than
  ``prefix_balance_threshold`` requests, then join-shortest-queue.

Cost of a decision: O(1) for round-robin and random; O(log N) for the others (a min-heap with lazy
invalidation, one push per decision); ``prefix-aware`` adds O(log L) for a request of L prefix
blocks (binary search, valid because a request's blocks enter the index together, so indexed ids
form prefixes) and O(L) to index it.  A refresh costs O(N) (one heapify).
"""
from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass

import numpy as np


class RouterKind(enum.Enum):
    ROUND_ROBIN = "round-robin"
    RANDOM = "random"
    JOIN_SHORTEST_QUEUE = "join-shortest-queue"
    LEAST_OUTSTANDING_TOKENS = "least-outstanding-tokens"
    LEAST_KV_USAGE = "least-kv-usage"
    PREFIX_AWARE = "prefix-aware"

    @classmethod
    def parse(cls, value: str | RouterKind) -> RouterKind:
        if isinstance(value, RouterKind):
            return value
        aliases = {"rr": "round-robin", "jsq": "join-shortest-queue", "lot": "least-outstanding-tokens",
                   "kv": "least-kv-usage", "prefix": "prefix-aware"}
        try:
            return cls(aliases.get(value, value))
        except ValueError:
            raise ValueError(f"unknown router {value!r}; valid: {[k.value for k in cls]} "
                             f"(or {sorted(aliases)})") from None


@dataclass(frozen=True)
class RouterConfig:
    """A routing policy and how stale its view of the replicas is (0: refreshed at every arrival)."""

    kind: RouterKind = RouterKind.ROUND_ROBIN
    staleness_s: float = 1.0
    seed: int = 0
    prefix_balance_threshold: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", RouterKind.parse(self.kind))
        if not (self.staleness_s >= 0 and np.isfinite(self.staleness_s)):
            raise ValueError(f"router staleness must be >= 0 s and finite (got {self.staleness_s})")
        if self.prefix_balance_threshold < 0:
            raise ValueError(f"prefix_balance_threshold must be >= 0 (got {self.prefix_balance_threshold})")

    @property
    def needs_state(self) -> bool:
        return self.kind not in (RouterKind.ROUND_ROBIN, RouterKind.RANDOM)


@dataclass(slots=True)
class ReplicaLoad:
    """What a router reads of one replica: requests held, tokens still to process, KV usage."""

    num_requests: int = 0
    outstanding_tokens: int = 0
    kv_usage: float = 0.0


class Router:
    """Base: ``refresh(loads)`` installs a snapshot; ``choose(...)`` returns a replica index and
    counts the dispatch in the router's view."""

    def __init__(self, cfg: RouterConfig, num_replicas: int, num_gpu_blocks: list[int],
                 block_sizes: list[int]) -> None:
        if num_replicas < 1:
            raise ValueError("a router needs at least one replica")
        self.cfg, self.n = cfg, num_replicas
        self.num_gpu_blocks, self.block_sizes = num_gpu_blocks, block_sizes
        self.num_decisions = 0

    def refresh(self, loads: list[ReplicaLoad]) -> None:
        pass

    def choose(self, num_prompt_tokens: int, max_tokens: int, hash_ids: tuple | None = None) -> int:
        raise NotImplementedError


class RoundRobinRouter(Router):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.next = 0

    def choose(self, num_prompt_tokens: int, max_tokens: int, hash_ids: tuple | None = None) -> int:
        r = self.next
        self.next = r + 1 if r + 1 < self.n else 0
        self.num_decisions += 1
        return r


class RandomRouter(Router):
    """Uniform choice from one seeded stream (drawn in blocks of 4096 for speed)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.rng = np.random.default_rng(np.random.SeedSequence(self.cfg.seed).spawn(1)[0])
        self._draws: list[int] = []

    def choose(self, num_prompt_tokens: int, max_tokens: int, hash_ids: tuple | None = None) -> int:
        if not self._draws:
            self._draws = self.rng.integers(0, self.n, 4096).tolist()[::-1]
        self.num_decisions += 1
        return self._draws.pop()


class LeastLoadRouter(Router):
    """Min-heap over ``(key, replica)`` with lazy invalidation: ``key[r]`` is the current view;
    heap entries whose key differs from it are stale and skipped."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.key: list[float] = [0.0] * self.n
        self.heap: list[tuple[float, int]] = [(0.0, r) for r in range(self.n)]

    def metric(self, load: ReplicaLoad, r: int) -> float:
        kind = self.cfg.kind
        if kind is RouterKind.LEAST_OUTSTANDING_TOKENS:
            return float(load.outstanding_tokens)
        if kind is RouterKind.LEAST_KV_USAGE:
            return load.kv_usage
        return float(load.num_requests)

    def increment(self, r: int, num_prompt_tokens: int, max_tokens: int) -> float:
        kind = self.cfg.kind
        if kind is RouterKind.LEAST_OUTSTANDING_TOKENS:
            return float(num_prompt_tokens + max_tokens)
        if kind is RouterKind.LEAST_KV_USAGE:
            return -(-num_prompt_tokens // self.block_sizes[r]) / self.num_gpu_blocks[r]
        return 1.0

    def refresh(self, loads: list[ReplicaLoad]) -> None:
        self.key = [self.metric(load, r) for r, load in enumerate(loads)]
        self.heap = [(k, r) for r, k in enumerate(self.key)]
        heapq.heapify(self.heap)

    def least(self) -> int:
        heap, key = self.heap, self.key
        while heap[0][0] != key[heap[0][1]]:
            heapq.heappop(heap)
        return heap[0][1]

    def add(self, r: int, amount: float) -> None:
        k = self.key[r] = self.key[r] + amount
        heapq.heappush(self.heap, (k, r))
        if len(self.heap) > 4 * self.n + 64:  # bound the stale entries
            self.heap = [(k, r) for r, k in enumerate(self.key)]
            heapq.heapify(self.heap)

    def choose(self, num_prompt_tokens: int, max_tokens: int, hash_ids: tuple | None = None) -> int:
        r = self.least()
        self.add(r, self.increment(r, num_prompt_tokens, max_tokens))
        self.num_decisions += 1
        return r


class PrefixAwareRouter(LeastLoadRouter):
    """Longest indexed prefix of ``hash_ids`` wins unless its replica is too loaded (see module)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.owner: dict[int, int] = {}
        self.num_prefix_hits = 0

    def metric(self, load: ReplicaLoad, r: int) -> float:
        return float(load.num_requests)

    def increment(self, r: int, num_prompt_tokens: int, max_tokens: int) -> float:
        return 1.0

    def matched_owner(self, hash_ids: tuple) -> int | None:
        """Replica holding the longest indexed prefix of ``hash_ids`` (binary search)."""
        owner = self.owner
        if not hash_ids or hash_ids[0] not in owner:
            return None
        lo, hi = 0, len(hash_ids) - 1  # invariant: hash_ids[lo] indexed
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if hash_ids[mid] in owner:
                lo = mid
            else:
                hi = mid - 1
        return owner[hash_ids[lo]]

    def choose(self, num_prompt_tokens: int, max_tokens: int, hash_ids: tuple | None = None) -> int:
        shortest = self.least()
        r = shortest
        if hash_ids:
            hit = self.matched_owner(hash_ids)
            if hit is not None and self.key[hit] <= self.key[shortest] + self.cfg.prefix_balance_threshold:
                r = hit
                self.num_prefix_hits += 1
            owner = self.owner
            for h in hash_ids:
                owner[h] = r
        self.add(r, 1.0)
        self.num_decisions += 1
        return r


ROUTERS: dict[RouterKind, type[Router]] = {
    RouterKind.ROUND_ROBIN: RoundRobinRouter,
    RouterKind.RANDOM: RandomRouter,
    RouterKind.JOIN_SHORTEST_QUEUE: LeastLoadRouter,
    RouterKind.LEAST_OUTSTANDING_TOKENS: LeastLoadRouter,
    RouterKind.LEAST_KV_USAGE: LeastLoadRouter,
    RouterKind.PREFIX_AWARE: PrefixAwareRouter,
}


def make_router(cfg: RouterConfig, num_gpu_blocks: list[int], block_sizes: list[int]) -> Router:
    """The router of ``cfg.kind`` over ``len(num_gpu_blocks)`` replicas."""
    return ROUTERS[cfg.kind](cfg, len(num_gpu_blocks), num_gpu_blocks, block_sizes)


__all__ = ["ReplicaLoad", "Router", "RouterConfig", "RouterKind", "make_router"]
