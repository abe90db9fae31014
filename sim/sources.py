"""Request sources: turn a workload into :class:`Request` objects as simulated time passes.

The engine pulls from a source between steps (vLLM likewise sees new requests only between
steps): ``next_time()`` is when the next request arrives (``None``: no more), ``pop_until(now)``
returns those that have arrived.  Requests are created lazily, so a million-request workload costs
only its numpy arrays until each request arrives.
"""
from __future__ import annotations

import heapq

import numpy as np

from .request import Request


def prompt_block_hashes(hash_ids, input_tokens: int, block_size: int, hash_block_tokens: int) -> tuple:
    """Hash keys of a prompt's full KV blocks from trace-level prefix ids (Mooncake ``hash_ids``,
    one per ``hash_block_tokens`` tokens, equal ids meaning equal prefixes): block ``j`` is keyed by
    the id of the trace block holding it and its offset inside that block."""
    per = hash_block_tokens // block_size
    full = min(input_tokens // block_size, len(hash_ids) * per)
    return tuple((hash_ids[j // per], j % per) for j in range(full))


class OpenLoopSource:
    """Arrivals at fixed times (burst, Poisson, gamma, trace replay)."""

    def __init__(self, workload, block_size: int, enable_caching: bool) -> None:
        self.arrival = np.asarray(workload.arrival_s, dtype=np.float64)
        self.input_tokens = np.asarray(workload.input_tokens, dtype=np.int64)
        self.output_tokens = np.asarray(workload.output_tokens, dtype=np.int64)
        self.prefix = workload.prefix_hashes if enable_caching else None
        self.has_prefix_hashes = self.prefix is not None
        self.hash_block_tokens = getattr(workload, "prefix_block_tokens", 512)
        self.block_size = block_size
        self.i = 0
        self.n = len(self.arrival)
        self._arrival_list = self.arrival.tolist()  # Python floats: cheaper to compare one at a time

    def __len__(self) -> int:
        return self.n

    def next_time(self) -> float | None:
        return self._arrival_list[self.i] if self.i < self.n else None

    def pop_until(self, now: float) -> list[Request]:
        arrivals = self._arrival_list
        out = []
        while self.i < self.n and arrivals[self.i] <= now:
            i = self.i
            hashes = None
            if self.prefix is not None and self.prefix[i]:
                hashes = prompt_block_hashes(self.prefix[i], int(self.input_tokens[i]), self.block_size,
                                             self.hash_block_tokens)
            out.append(Request(i, arrivals[i], int(self.input_tokens[i]), int(self.output_tokens[i]), hashes))
            self.i += 1
        return out

    def on_finish(self, request: Request, now: float) -> None:
        pass


class ClosedLoopSource:
    """``num_users`` users; each sends its next request a think time after the previous finished.

    Follows :class:`~servesim.sim.workload.ClosedLoop`'s contract: requests ``0..num_users-1`` go
    out at t=0, one per user; each finish hands the next unassigned index ``k`` to that user, who
    sends request ``k`` (lengths ``k``) at finish time + ``think_times()[k]``.  Finishes are
    processed in the engine's deterministic order, so the run is reproducible.
    """

    def __init__(self, closed_loop, block_size: int, enable_caching: bool) -> None:
        self.input_tokens = np.asarray(closed_loop.input_tokens, dtype=np.int64)
        self.output_tokens = np.asarray(closed_loop.output_tokens, dtype=np.int64)
        self.n = len(self.input_tokens)
        self.think = np.asarray(closed_loop.think_times(self.n), dtype=np.float64)
        users = min(closed_loop.num_users, self.n)
        self.heap: list[tuple[float, int, int]] = [(0.0, u, u) for u in range(users)]  # (time, index, user)
        self.next_index = users

    def __len__(self) -> int:
        return self.n

    def next_time(self) -> float | None:
        return self.heap[0][0] if self.heap else None

    def pop_until(self, now: float) -> list[Request]:
        out = []
        while self.heap and self.heap[0][0] <= now:
            t, k, user = heapq.heappop(self.heap)
            out.append(Request(k, t, int(self.input_tokens[k]), int(self.output_tokens[k]), user=user))
        return out

    def on_finish(self, request: Request, now: float) -> None:
        if request.user >= 0 and self.next_index < self.n:
            k = self.next_index
            self.next_index += 1
            heapq.heappush(self.heap, (now + float(self.think[k]), k, request.user))
