"""The request sources of a cluster's replicas (see :mod:`servesim.sim.cluster`).

* :class:`RoutedSource`: a collocated replica's share of an open-loop workload, routed ahead in
  windows; it behaves like :class:`~servesim.sim.sources.OpenLoopSource` over that share.
* :class:`PushedSource`: requests pushed when they become available (prefill and decode replicas,
  and every replica of a closed-loop workload), with the engine's live-source protocol.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np
import simpy

from .cluster_config import ReplicaRole
from .request import Request
from .sources import prompt_block_hashes

if TYPE_CHECKING:
    from .cluster import Cluster, Replica


class _Arrivals:
    """The workload's columns as Python lists (cheap to index one at a time)."""

    def __init__(self, workload) -> None:
        self.time = np.asarray(workload.arrival_s, dtype=np.float64).tolist()
        self.input = np.asarray(workload.input_tokens, dtype=np.int64).tolist()
        self.output = np.asarray(workload.output_tokens, dtype=np.int64).tolist()
        self.prefix = workload.prefix_hashes
        self.prefix_block_tokens = getattr(workload, "prefix_block_tokens", 512)
        self.n = len(self.time)


class RoutedSource:
    """A collocated replica's share of the workload, routed ahead in windows (module docstring).

    Invariant: ``inbox`` holds request indices in arrival order, all arriving before
    ``cluster.routed_until``."""

    live = False

    def __init__(self, cluster: Cluster, replica: Replica, caching: bool) -> None:
        self.cluster, self.replica = cluster, replica
        self.inbox: deque[int] = deque()
        a = cluster.arrivals
        assert a is not None  # routed sources serve open loops
        self.arrivals = a
        self._time, self._n = a.time, a.n
        self.prefix = a.prefix if caching else None
        self.has_prefix_hashes = self.prefix is not None
        self.block_size = replica.group.engine.cache.block_size

    def next_time(self) -> float | None:
        inbox = self.inbox
        if inbox:
            return self._time[inbox[0]]
        c = self.cluster
        return c.routed_until if c.next_index < self._n else None

    def pop_until(self, now: float) -> list[Request]:
        c = self.cluster
        if now >= c.routed_until and c.next_index < self.arrivals.n:
            c.route(now)
        a, inbox, out = self.arrivals, self.inbox, []
        while inbox and a.time[inbox[0]] <= now:
            i = inbox.popleft()
            hashes = None
            if self.prefix is not None and self.prefix[i]:
                hashes = prompt_block_hashes(self.prefix[i], a.input[i], self.block_size, a.prefix_block_tokens)
            out.append(Request(i, a.time[i], a.input[i], a.output[i], hashes))
        return out

    def on_finish(self, request: Request, now: float) -> None:
        # A collocated open-loop request that ran: nothing to hand on (Cluster.on_finish's common case).
        if request.first_token_time >= 0:
            self.cluster.num_done += 1
            return
        self.cluster.on_finish(self.replica, request, now)

    def pending(self) -> int:
        return len(self.inbox)


class PushedSource:
    """Requests pushed as they become available (live-source protocol: ``wait`` while empty)."""

    live = True

    def __init__(self, cluster: Cluster, replica: Replica, caching: bool) -> None:
        self.cluster, self.replica = cluster, replica
        self.has_prefix_hashes = caching and cluster.arrivals is not None and cluster.arrivals.prefix is not None
        self.inbox: deque[Request] = deque()
        self._event: simpy.Event | None = None
        self.num_reorders = 0

    def push(self, request: Request | None) -> None:
        """Hand ``request`` over now (``None``: only wake the engine, e.g. blocks were freed)."""
        if request is not None:
            self.inbox.append(request)
        if self._event is not None and not self._event.triggered:
            self._event.succeed()

    def wait(self, env: simpy.Environment) -> simpy.Event:
        """The event an idle engine sleeps on.  A decode replica idle with a recompute-preempted
        request at the head of ``waiting`` that cannot fit, while requests whose KV landed hold
        blocks behind it, would wait forever: those requests move to the front (in order) and the
        engine goes on at once."""
        if self.replica.role is ReplicaRole.DECODE:
            waiting = self.replica.engine.scheduler.waiting
            if waiting and waiting[0].num_computed_tokens == 0 and any(r.num_computed_tokens for r in waiting):
                landed = [r for r in waiting if r.num_computed_tokens]
                rest = [r for r in waiting if not r.num_computed_tokens]
                waiting.clear()
                waiting.extend(landed + rest)
                self.num_reorders += 1
                now = env.event()
                now.succeed()
                return now
        if self._event is None or self._event.triggered:
            self._event = env.event()
        return self._event

    def next_time(self) -> float | None:
        return self.cluster.env.now if self.inbox else None

    def pop_until(self, now: float) -> list[Request]:
        out = list(self.inbox)
        self.inbox.clear()
        return out

    def on_finish(self, request: Request, now: float) -> None:
        self.cluster.on_finish(self.replica, request, now)

    def pending(self) -> int:
        return len(self.inbox) + len(self.replica.reserve_queue)
