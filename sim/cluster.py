"""Many replicas on one simulated clock behind a router (collocated or prefill/decode pools).

Each replica is an unchanged :class:`~servesim.sim.engine.LLMEngine` in the same SimPy
environment, fed by a per-replica source that the cluster fills:

* **collocated** replicas read a :class:`RoutedSource`.  The router's view is a snapshot refreshed
  every ``staleness_s`` plus its own dispatches since, so every arrival of ``[T, T + staleness_s)``
  can be routed at the refresh instant ``T`` with the decision it would get at its arrival time;
  the source then behaves like an open-loop source over its share (the engine keeps advancing runs
  of decode steps at once), and reports the next refresh instant as a possible arrival so that no
  replica runs past it.  A router that reads no state (round-robin, random), and any router of a
  single replica, routes the whole workload at t = 0: one replica then is today's ``simulate``.
* **prefill** and **decode** replicas read a :class:`PushedSource` (the engine's live-source
  protocol): requests are pushed at the moment they arrive (prefill) or their KV lands (decode),
  and the push wakes an idle engine.  The transfer itself is :mod:`servesim.sim.kv_transfer`.

Every request finishes on exactly one replica (the decode replica when disaggregated); the records
gain ``replica``, ``prefill_replica``, ``kv_wait_s`` and ``transfer_s`` columns.
"""
from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import simpy

from .cluster_config import ClusterConfig, ReplicaGroup, ReplicaRole
from .engine import LLMEngine
from .kv_transfer import LinkSchedule, kv_transfer_bytes, transfer_time_s
from .metrics import RequestRecords
from .power import CappedStepCostModel, PowerCap
from .request import Request
from .router import ReplicaLoad, Router, RouterKind, make_router
from .sources import prompt_block_hashes


class _Arrivals:
    """The workload's columns as Python lists (cheap to index one at a time)."""

    def __init__(self, workload) -> None:
        if hasattr(workload, "num_users"):
            raise ValueError("closed-loop workloads (--concurrency) are not supported on a cluster yet: "
                             "use an open-loop workload (--rate, --burst, --trace)")
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

    def __init__(self, cluster: "Cluster", replica: "Replica", caching: bool) -> None:
        self.cluster, self.replica = cluster, replica
        self.inbox: deque[int] = deque()
        a = cluster.arrivals
        self.prefix = a.prefix if caching else None
        self.has_prefix_hashes = self.prefix is not None
        self.block_size = replica.group.engine.cache.block_size

    def next_time(self) -> float | None:
        c = self.cluster
        if self.inbox:
            return c.arrivals.time[self.inbox[0]]
        return c.routed_until if c.next_index < c.arrivals.n else None

    def pop_until(self, now: float) -> list[Request]:
        c = self.cluster
        if now >= c.routed_until and c.next_index < c.arrivals.n:
            c.route(now)
        a, inbox, out = c.arrivals, self.inbox, []
        while inbox and a.time[inbox[0]] <= now:
            i = inbox.popleft()
            hashes = None
            if self.prefix is not None and self.prefix[i]:
                hashes = prompt_block_hashes(self.prefix[i], a.input[i], self.block_size, a.prefix_block_tokens)
            out.append(Request(i, a.time[i], a.input[i], a.output[i], hashes))
        return out

    def on_finish(self, request: Request, now: float) -> None:
        self.cluster.on_finish(self.replica, request, now)

    def pending(self) -> int:
        return len(self.inbox)


class PushedSource:
    """Requests pushed as they become available (live-source protocol: ``wait`` while empty)."""

    live = True

    def __init__(self, cluster: "Cluster", replica: "Replica", caching: bool) -> None:
        self.cluster, self.replica = cluster, replica
        self.has_prefix_hashes = caching and cluster.arrivals.prefix is not None
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


@dataclass(eq=False)
class Replica:
    """One engine of the cluster and what the cluster knows about it."""

    index: int
    group: ReplicaGroup
    cap: PowerCap
    engine: LLMEngine | None = None
    source: RoutedSource | PushedSource | None = None
    assigned_tokens: int = 0
    rejected_tokens: int = 0
    reserve_queue: deque = field(default_factory=deque)  # disaggregated decode: (request, prefill replica, held, t)
    num_transfers_out: int = 0

    @property
    def role(self) -> ReplicaRole:
        return self.group.role

    def load(self) -> ReplicaLoad:
        s, kv = self.engine.scheduler, self.engine.kv
        done = s.prompt_tokens_total + s.generation_tokens_total + self.rejected_tokens
        return ReplicaLoad(s.num_running + s.num_waiting + self.source.pending(), self.assigned_tokens - done,
                           kv.usage)


class Cluster:
    """Builds the replicas, routes the workload and moves KV between pools (module docstring)."""

    def __init__(self, cfg: ClusterConfig, workload, sample_interval_s: float = 0.2, exact: bool = False) -> None:
        self.cfg, self.env = cfg, simpy.Environment()
        self.arrivals = a = _Arrivals(workload)
        self.records = RequestRecords(a.n)
        self.replica_of = np.full(a.n, -1, dtype=np.int32)
        self.prefill_replica_of = np.full(a.n, -1, dtype=np.int32)
        self.kv_wait_s = np.full(a.n, np.nan)
        self.transfer_s = np.full(a.n, np.nan)
        self.next_index = 0
        self.routed_until = 0.0
        self.replicas: list[Replica] = []
        for group in cfg.groups:
            for _ in range(group.num_replicas):
                self.replicas.append(Replica(len(self.replicas), group, PowerCap(
                    cfg.gpu_cap_w(group), cfg.power.exponent, cfg.power.memory_clock_sensitivity,
                    cfg.power.min_clock_ratio)))
        self.front = [r for r in self.replicas if r.role is not ReplicaRole.DECODE]
        self.back = [r for r in self.replicas if r.role is ReplicaRole.DECODE]
        self._held: dict[int, list[int] | None] = {}
        self.links = LinkSchedule([0.0] * len(self.replicas))
        self.num_rejected_at_router = 0
        if not any(r.role is ReplicaRole.PREFILL for r in self.front):
            self.env.process(self._refresher())  # first process: routes before any replica looks
        for rep in self.replicas:
            engine_cfg = rep.group.engine
            source_cls = RoutedSource if rep.role is ReplicaRole.COLLOCATED else PushedSource
            rep.source = source_cls(self, rep, engine_cfg.cache.enable_prefix_caching and rep.role is not ReplicaRole.DECODE)
            on_token = self._prefill_hook(rep) if rep.role is ReplicaRole.PREFILL else None
            rep.engine = LLMEngine(self.env, engine_cfg, rep.source, self.records, sample_interval_s, exact,
                                   on_token=on_token)
            if rep.cap.cap_w is not None:
                rep.engine.cost = CappedStepCostModel(rep.engine.cost, engine_cfg.profile.power, rep.cap)
        self.router = self._make_router(cfg.router, self.front)
        self.decode_router = self._make_router(cfg.decode_router or cfg.router, self.back) if self.back else None
        self._decode_refresh_at = 0.0
        if self.back:
            self.max_decode_tokens = min(r.engine.max_request_tokens for r in self.back)
            self.env.process(self._push_arrivals())

    @staticmethod
    def _make_router(cfg, replicas: list[Replica]) -> Router:
        return make_router(cfg, [r.engine.kv.block_pool.num_blocks for r in replicas],
                           [r.group.engine.cache.block_size for r in replicas])

    # ----- routing arrivals -------------------------------------------------------------
    def _fresh(self) -> bool:
        rc = self.cfg.router
        return rc.needs_state and rc.staleness_s == 0 and len(self.front) > 1

    def route(self, now: float) -> None:
        """Refresh the router's snapshot at ``now`` and route the arrivals of the window it covers:
        ``[now, now + staleness_s)``; everything if the router reads no state or there is one
        replica; only the arrivals at ``now`` if the router is fresh (staleness 0)."""
        rc = self.cfg.router
        if rc.needs_state:
            self.router.refresh([r.load() for r in self.front])
        fresh = self._fresh()
        if not rc.needs_state or len(self.front) == 1:
            until = math.inf
        else:
            until = math.nextafter(now, math.inf) if fresh else now + rc.staleness_s
        a, router, front = self.arrivals, self.router, self.front
        prefix = a.prefix if rc.kind is RouterKind.PREFIX_AWARE else None
        i = self.next_index
        while i < a.n and a.time[i] < until:
            prompt, out = a.input[i], a.output[i]
            k = router.choose(prompt, out, prefix[i] if prefix is not None else None)
            rep = front[k]
            rep.assigned_tokens += prompt + out
            rep.source.inbox.append(i)
            self.replica_of[i] = rep.index
            i += 1
        self.next_index = i
        self.routed_until = a.time[i] if fresh and i < a.n else until

    def _refresher(self):
        """Collocated pools: route each window at its refresh instant (replicas stop there too)."""
        env, n = self.env, self.arrivals.n
        while self.next_index < n:
            if env.now >= self.routed_until:
                self.route(env.now)
            if self.next_index >= n or self.routed_until == math.inf:
                return
            yield env.timeout(max(self.routed_until - env.now, 0.0))

    def _push_arrivals(self):
        """Disaggregated front pool: route each arrival when it arrives and push it to its prefill
        replica; snapshots refresh every ``staleness_s`` (at every arrival when 0)."""
        a, env, rc = self.arrivals, self.env, self.cfg.router
        next_refresh = 0.0
        while self.next_index < a.n:
            i = self.next_index
            t = a.time[i]
            if rc.needs_state and rc.staleness_s > 0 and next_refresh <= t:
                if next_refresh > env.now:
                    yield env.timeout(next_refresh - env.now)
                self.router.refresh([r.load() for r in self.front])
                next_refresh += rc.staleness_s * max(1, math.floor((env.now - next_refresh) / rc.staleness_s) + 1)
                continue
            if t > env.now:
                yield env.timeout(t - env.now)
            if rc.needs_state and rc.staleness_s == 0:
                self.router.refresh([r.load() for r in self.front])
            while self.next_index < a.n and a.time[self.next_index] <= env.now:
                self._push_one(self.next_index)
                self.next_index += 1

    def _push_one(self, i: int) -> None:
        a = self.arrivals
        prompt, out = a.input[i], a.output[i]
        if prompt + out > self.max_decode_tokens:
            # The API server would refuse it: prompt plus max_tokens exceed the decode replicas' limit.
            request = Request(i, a.time[i], prompt, out)
            self.records.record(request, status=2)
            self.num_rejected_at_router += 1
            return
        prefix = a.prefix if self.cfg.router.kind is RouterKind.PREFIX_AWARE else None
        k = self.router.choose(prompt, 1, prefix[i] if prefix is not None else None)
        rep = self.front[k]
        hashes = None
        if rep.source.has_prefix_hashes and a.prefix[i]:
            hashes = prompt_block_hashes(a.prefix[i], prompt, rep.group.engine.cache.block_size, a.prefix_block_tokens)
        rep.assigned_tokens += prompt + 1
        self.prefill_replica_of[i] = rep.index
        rep.source.push(Request(i, a.time[i], prompt, 1, hashes))  # the prefill runs with max_tokens = 1

    # ----- finishes and KV transfers ----------------------------------------------------
    def on_finish(self, rep: Replica, request: Request, now: float) -> None:
        if request.first_token_time < 0:  # refused by the replica (too long): never ran
            rep.rejected_tokens += request.num_prompt_tokens + request.max_tokens
            held = self._held.pop(request.request_id, None)
            if held:
                rep.engine.kv.block_pool.free_blocks(reversed(held))
            return
        if rep.role is ReplicaRole.PREFILL:
            self._start_transfer(rep, request, now)
        elif rep.role is ReplicaRole.DECODE:
            self._reserve(rep)

    def _prefill_hook(self, rep: Replica):
        def on_token(request: Request, now: float) -> None:
            # Runs just before the prefill replica finishes the request: keep its blocks (the KV is
            # still to be sent) by taking them out of the manager, which then frees nothing.
            kv = rep.engine.kv
            self._held[request.request_id] = kv.req_to_blocks.pop(request.request_id, None)
            request.blocks = None
        return on_token

    def _start_transfer(self, prep: Replica, done: Request, now: float) -> None:
        rid = done.request_id
        rc = self.cfg.decode_router or self.cfg.router
        if rc.needs_state and (rc.staleness_s == 0 or now >= self._decode_refresh_at):
            self.decode_router.refresh([r.load() for r in self.back])
            self._decode_refresh_at = now + rc.staleness_s
        a = self.arrivals
        drep = self.back[self.decode_router.choose(done.num_prompt_tokens, a.output[rid], None)]
        request = Request(rid, done.arrival_time, done.num_prompt_tokens, a.output[rid])
        request.first_scheduled_time = done.first_scheduled_time
        request.num_cached_tokens = done.num_cached_tokens
        request.num_preemptions = done.num_preemptions
        drep.assigned_tokens += request.num_prompt_tokens + request.max_tokens
        self.replica_of[rid] = drep.index
        drep.reserve_queue.append((request, prep, self._held.pop(rid, None), now))
        self._reserve(drep)

    def _reserve(self, drep: Replica) -> None:
        """Give waiting transfers to ``drep`` their blocks, FIFO, and start them on the link."""
        kv, env, queue = drep.engine.kv, self.env, drep.reserve_queue
        dcfg = drep.group.engine
        while queue:
            request, prep, held, t_ready = queue[0]
            if kv.allocate_slots(request, request.num_prompt_tokens) is None:
                return
            queue.popleft()
            request.num_computed_tokens = request.num_prompt_tokens - 1
            pcfg = prep.group.engine
            nbytes = kv_transfer_bytes(pcfg.model, pcfg.kv_dtype, request.num_prompt_tokens)
            links = min(pcfg.parallel.tensor_parallel_size, dcfg.parallel.tensor_parallel_size)
            now = env.now
            _, end = self.links.book(now, prep.index, drep.index, transfer_time_s(nbytes, self.cfg.link, links))
            rid = request.request_id
            self.kv_wait_s[rid] = now - t_ready
            self.transfer_s[rid] = end - now
            prep.num_transfers_out += 1
            landing = env.timeout(end - now)
            landing.callbacks.append(lambda _, r=request, p=prep, h=held, d=drep: self._land(r, p, h, d))

    def _land(self, request: Request, prep: Replica, held: list[int] | None, drep: Replica) -> None:
        if held:
            prep.engine.kv.block_pool.free_blocks(reversed(held))
        prep.source.push(None)  # freed blocks may let a waiting prefill in
        drep.source.push(request)

    # ----- running ----------------------------------------------------------------------
    def run(self) -> None:
        self.env.run()
        end = self.env.now
        for rep in self.replicas:
            if rep.source.live:  # pushed sources never end their engine: close its time series here
                rep.engine.series.close(max(end, rep.engine.clock), rep.engine._state())
        if self._held:
            raise RuntimeError(f"{len(self._held)} prefilled requests never started their KV transfer: a bug")
        stuck = sum(len(r.reserve_queue) for r in self.back)
        if stuck:
            raise RuntimeError(f"{stuck} transfers still wait for decode blocks at the end: a bug")


__all__ = ["Cluster", "PushedSource", "Replica", "RoutedSource"]
