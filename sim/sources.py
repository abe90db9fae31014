"""Request sources: turn a workload into :class:`Request` objects as simulated time passes.

The engine pulls from a source between steps (vLLM likewise sees new requests only between
steps): ``next_time()`` is when the next request arrives (``None``: no more), ``pop_until(now)``
returns those that have arrived.  Requests are created lazily, so a million-request workload costs
only its numpy arrays until each request arrives.
"""
from __future__ import annotations

import heapq
from itertools import chain, islice
from typing import cast

import numpy as np

from .request import Request


def prompt_block_hashes(hash_ids, input_tokens: int, block_size: int, hash_block_tokens: int) -> tuple[int, ...]:
    """Hash keys of a prompt's full KV blocks from trace-level prefix ids (Mooncake ``hash_ids``,
    one per ``hash_block_tokens`` tokens, equal ids meaning equal prefixes): block ``j`` is keyed by
    the id ``h`` of the trace block holding it and its offset ``r = j % per`` inside that block, as
    the one int ``h * per + r`` (``per`` blocks to a trace block).

    Invariant: the key is non-negative and injective in ``(h, r)`` because ``h >= 0`` and
    ``0 <= r < per`` (so no two trace positions share a key, and no key equals the negative ints
    the KV cache manager gives blocks only their own request can hit).  Ints hash and compare
    faster than the ``(h, r)`` tuples they replace (1.4-1.6x on the Mooncake mode)."""
    if hash_ids and min(hash_ids) < 0:
        raise ValueError(f"hash_ids must be non-negative ints; got {min(hash_ids)} in a request's hash_ids")
    per = hash_block_tokens // block_size
    full = min(input_tokens // block_size, len(hash_ids) * per)
    ids = hash_ids[:-(-full // per)]  # the trace blocks holding a full KV block
    # Per trace id one range of ``per`` consecutive keys, chained and cut at ``full`` in C (the
    # same keys, in the same order, as one ``(j // per) * per + j % per`` per block).
    return tuple(islice(chain.from_iterable(range(int(h) * per, int(h) * per + per) for h in ids), full))


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
    out first, one per user (user ``u`` at ``u * ramp_up_s / num_users``); each finish hands the
    next unassigned index ``k`` to that user, who sends request ``k`` (lengths ``k``) at finish
    time + ``think_times()[k]``.  The engine sees request ``k`` ``overheads[k]`` after it was sent
    (the client's request path); its ``arrival_time`` is the send time.  With a drained warm-up,
    users that finish once every warm-up index is handed out wait until the last warm-up request
    returns, then all send at that instant (the counted phase starts as a burst, as aiperf's does).
    Finishes are processed in the engine's deterministic order, so the run is reproducible.
    """

    def __init__(self, closed_loop, block_size: int, enable_caching: bool) -> None:
        self.input_tokens = np.asarray(closed_loop.input_tokens, dtype=np.int64)
        self.output_tokens = np.asarray(closed_loop.output_tokens, dtype=np.int64)
        self.n = len(self.input_tokens)
        self.think = np.asarray(closed_loop.think_times(self.n), dtype=np.float64)
        client = getattr(closed_loop, "client", None)
        self.overhead = None
        if client is not None and not client.is_ideal:
            # Latency part (parallel across requests) and the API server's serial part per request.
            self.overhead = client.latencies(self.n, closed_loop.seed).tolist()
            self.frontend = (client.per_prompt_token_s * self.input_tokens.astype(np.float64)).tolist()
        self.pending: list[tuple[float, int, int]] = []  # sent, not yet through the front end: (send, index, user)
        self.frontend_free_s = 0.0
        self.num_warmup = closed_loop.num_warmup_requests if client is not None else 0
        self.drain = bool(client is not None and client.drain_after_warmup and self.num_warmup > 0)
        self.ramp_s = client.ramp_up_s if client is not None else 0.0
        self.num_users = users = min(closed_loop.num_users, self.n)
        self.heap: list[tuple[float, int, int, float]] = []  # (engine arrival, index, user, send time)
        self.next_index = 0
        self.warmup_left = self.num_warmup
        self.parked: list[int] = []  # users waiting for the warm-up phase to drain
        for u in range(users):
            if self.drain and self.next_index >= self.num_warmup:
                self.parked.append(u)
            else:
                self._send(u, self._ramp(u, 0.0))

    def _ramp(self, user: int, start: float) -> float:
        return start + self.ramp_s * user / self.num_users if self.ramp_s else start

    def _send(self, user: int, send_time: float) -> None:
        k = self.next_index
        self.next_index += 1
        if self.overhead is None:
            heapq.heappush(self.heap, (send_time, k, user, send_time))
        else:
            heapq.heappush(self.pending, (send_time, k, user))

    def _through_frontend(self, now: float) -> None:
        """Pass the requests sent by ``now`` through the API server, one at a time in send order
        (vLLM's front end tokenises on one event loop); a later send is never earlier than
        ``now``, so their order is final."""
        pending, free = self.pending, self.frontend_free_s
        overhead = cast("list[float]", self.overhead)  # pending fills only when there is an overhead
        while pending and pending[0][0] <= now:
            sent, k, user = heapq.heappop(pending)
            free = max(free, sent) + self.frontend[k]
            heapq.heappush(self.heap, (free + overhead[k], k, user, sent))
        self.frontend_free_s = free

    def __len__(self) -> int:
        return self.n

    def next_time(self) -> float | None:
        heap_t = self.heap[0][0] if self.heap else None
        if not self.pending:
            return heap_t
        sent, k, _ = self.pending[0]
        # A lower bound (the request's latency draw is >= 0); exact once it is through the front end.
        bound = max(self.frontend_free_s, sent) + self.frontend[k]
        return bound if heap_t is None else min(heap_t, bound)

    def pop_until(self, now: float) -> list[Request]:
        out = []
        if self.pending:
            self._through_frontend(now)
        while self.heap and self.heap[0][0] <= now:
            _, k, user, sent = heapq.heappop(self.heap)
            out.append(Request(k, sent, int(self.input_tokens[k]), int(self.output_tokens[k]), user=user))
        return out

    def on_finish(self, request: Request, now: float) -> None:
        if request.user < 0:
            return
        if request.request_id < self.num_warmup:
            self.warmup_left -= 1
        if self.next_index >= self.n:
            return
        if self.drain and self.next_index >= self.num_warmup:
            self.parked.append(request.user)
            if self.warmup_left == 0:
                parked, self.parked = sorted(self.parked), []
                for i, user in enumerate(parked):
                    if self.next_index < self.n:
                        self._send(user, self._ramp(i, now))
            return
        k = self.next_index
        self._send(request.user, now + float(self.think[k]))
