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
* a **closed-loop** workload (users who send their next request a think time after the previous
  one finished) is routed request by request as it is sent, and every replica reads a
  :class:`PushedSource`; the router's snapshot is then refreshed at the first decision at least
  ``staleness_s`` after the previous refresh.

Every request finishes on exactly one replica (the decode replica when disaggregated); the records
gain ``replica``, ``prefill_replica``, ``kv_wait_s`` and ``transfer_s`` columns.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import simpy

from .cluster_config import ClusterConfig, ReplicaGroup, ReplicaRole
from .cluster_sources import PushedSource, RoutedSource, _Arrivals
from .cost_model import StepCostModel
from .engine import LLMEngine
from .kv_transfer import LinkSchedule, kv_transfer_bytes, transfer_time_s
from .metrics import RequestRecords
from .observers import CallbackObserver
from .power import CappedStepCostModel, PowerCap
from .request import Request, RequestStatus
from .router import ReplicaLoad, Router, RouterKind, make_router
from .sources import ClosedLoopSource, prompt_block_hashes


@dataclass(eq=False)
class Replica:
    """One engine of the cluster and what the cluster knows about it."""

    index: int
    group: ReplicaGroup
    cap: PowerCap
    # Set by Cluster right after construction (the source needs the replica): always present after.
    engine: LLMEngine = field(init=False)
    source: RoutedSource | PushedSource = field(init=False)
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

    share_environment = False  # True: never run replicas in their own environments (tests compare both)

    def __init__(self, cfg: ClusterConfig, workload, sample_interval_s: float = 0.2, exact: bool = False) -> None:
        self.cfg, self.env = cfg, simpy.Environment()
        self.closed = hasattr(workload, "num_users")  # closed loop: users send their next request on a finish
        self.arrivals: _Arrivals | None  # open loop only
        if self.closed:
            self.arrivals, self.users = None, ClosedLoopSource(workload, 16, False)
            n, self.output_tokens = len(self.users), self.users.output_tokens.tolist()
        else:
            self.arrivals = _Arrivals(workload)
            n, self.output_tokens = self.arrivals.n, self.arrivals.output
        self.records = RequestRecords(n)
        self.replica_of = np.full(n, -1, dtype=np.int32)
        self.prefill_replica_of = np.full(n, -1, dtype=np.int32)
        self.kv_wait_s = np.full(n, np.nan)
        self.transfer_s = np.full(n, np.nan)
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
        # Collocated replicas of an open loop behind a router that reads no state (or one replica)
        # share nothing once the workload is routed at t = 0: each runs alone in its own environment,
        # one after another (the same events in the same order per replica; each replica's data stays
        # in the CPU caches while it runs).
        # With a stale router they share only the snapshot: each window [T, T + staleness) is routed
        # at T, then every replica runs alone up to T + staleness (``_run_windows``).
        alone = not self.share_environment and not self.closed and not self.back
        self.independent = alone and (not cfg.router.needs_state or len(self.front) == 1)
        self.windowed = alone and not self.independent and cfg.router.staleness_s > 0
        if not self.closed and not (self.independent or self.windowed) and not any(
                r.role is ReplicaRole.PREFILL for r in self.front):
            self.env.process(self._refresher())  # first process: routes before any replica looks
        for rep in self.replicas:
            engine_cfg = rep.group.engine
            routed = rep.role is ReplicaRole.COLLOCATED and not self.closed
            source_cls = RoutedSource if routed else PushedSource
            rep.source = source_cls(self, rep, engine_cfg.cache.enable_prefix_caching and rep.role is not ReplicaRole.DECODE)
            hooks = [CallbackObserver(on_token=self._prefill_hook(rep))] if rep.role is ReplicaRole.PREFILL else []
            env = simpy.Environment() if self.independent or self.windowed else self.env
            rep.engine = LLMEngine(env, engine_cfg, rep.source, self.records, sample_interval_s, exact,
                                   observers=hooks)
            if rep.cap.cap_w is not None:
                rep.engine.cost = CappedStepCostModel(cast(StepCostModel, rep.engine.cost), engine_cfg.profile.power, rep.cap)
        self.router = self._make_router(cfg.router, self.front)
        self.decode_router = self._make_router(cfg.decode_router or cfg.router, self.back) if self.back else None
        self._decode_refresh_at = self._front_refresh_at = 0.0
        self.num_done = 0
        if self.back:
            self.max_decode_tokens = min(r.engine.max_request_tokens for r in self.back)
        if self.closed:
            self._schedule_arrival(0.0)
        elif self.back:
            self.env.process(self._push_arrivals())
        elif self.independent or self.windowed:
            self.route(0.0)  # the first window (everything when independent), before any replica looks

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
        a, choose, front = self.arrivals, self.router.choose, self.front
        assert a is not None  # routing windows ahead is for open loops
        prefix = a.prefix if rc.kind is RouterKind.PREFIX_AWARE else None
        inboxes = [cast(RoutedSource, rep.source).inbox for rep in front]
        assigned = [0] * len(front)
        times, inputs, outputs, n = a.time, a.input, a.output, a.n
        start = i = self.next_index
        chosen = []
        while i < n and times[i] < until:
            prompt, out = inputs[i], outputs[i]
            k = choose(prompt, out, prefix[i] if prefix is not None else None)
            assigned[k] += prompt + out
            inboxes[k].append(i)
            chosen.append(k)
            i += 1
        if chosen:  # the replica ids of the routed window, in one numpy write
            ids = np.asarray([rep.index for rep in front], dtype=np.int32)
            self.replica_of[start:i] = ids[np.asarray(chosen, dtype=np.intp)]
            for rep, tokens in zip(front, assigned):
                rep.assigned_tokens += tokens
        self.next_index = i
        self.routed_until = a.time[i] if fresh and i < a.n else until

    def _refresher(self):
        """Collocated pools: route each window at its refresh instant (replicas stop there too)."""
        assert self.arrivals is not None
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
        assert a is not None
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
        assert a is not None
        self._push_request(Request(i, a.time[i], a.input[i], a.output[i]), a.prefix[i] if a.prefix is not None else None)

    def _push_request(self, request: Request, hash_ids: tuple | None) -> None:
        """Route ``request`` now and push it to its replica (a prefill replica runs it with
        ``max_tokens = 1``, as vLLM's P/D proxy does)."""
        rid, prompt, out = request.request_id, request.num_prompt_tokens, request.max_tokens
        disaggregated = bool(self.back)
        if disaggregated and prompt + out > self.max_decode_tokens:
            # The API server would refuse it: prompt plus max_tokens exceed the decode replicas' limit.
            request.status = RequestStatus.FINISHED_REJECTED
            self.records.record(request)
            self.num_rejected_at_router += 1
            self._final(request, self.env.now)
            return
        prefix = hash_ids if self.cfg.router.kind is RouterKind.PREFIX_AWARE else None
        rep = self.front[self.router.choose(prompt, 1 if disaggregated else out, prefix)]
        if disaggregated:
            hashes = None
            if rep.source.has_prefix_hashes and hash_ids:
                assert self.arrivals is not None  # prefix hashes come with an open-loop workload
                hashes = prompt_block_hashes(hash_ids, prompt, rep.group.engine.cache.block_size,
                                             self.arrivals.prefix_block_tokens)
            self.prefill_replica_of[rid] = rep.index
            rep.assigned_tokens += prompt + 1
            request = Request(rid, request.arrival_time, prompt, 1, hashes, request.user)
        else:
            self.replica_of[rid] = rep.index
            rep.assigned_tokens += prompt + out
        cast(PushedSource, rep.source).push(request)

    # ----- closed loops -------------------------------------------------------------------
    def _schedule_arrival(self, t: float) -> None:
        event = self.env.timeout(max(t - self.env.now, 0.0))
        event.callbacks.append(self._dispatch_users)

    def _dispatch_users(self, _event=None) -> None:
        """Route the users' requests due now; the snapshot is refreshed at the first decision at
        least ``staleness_s`` after the previous one (every decision when 0)."""
        now = self.env.now
        due = self.users.pop_until(now)
        if not due:
            return
        rc = self.cfg.router
        if rc.needs_state and (rc.staleness_s == 0 or now >= self._front_refresh_at):
            self.router.refresh([r.load() for r in self.front])
            self._front_refresh_at = now + rc.staleness_s
        for request in due:
            self._push_request(request, None)

    def _final(self, request: Request, now: float) -> None:
        """A request is done (finished or refused): a closed-loop user thinks, then sends the next."""
        self.num_done += 1
        if self.closed:
            k = self.users.next_index
            self.users.on_finish(request, now)
            if self.users.next_index > k:
                self._schedule_arrival(now + float(self.users.think[k]))

    # ----- finishes and KV transfers ----------------------------------------------------
    def on_finish(self, rep: Replica, request: Request, now: float) -> None:
        if request.first_token_time < 0:  # refused by the replica (too long): never ran
            rep.rejected_tokens += request.num_prompt_tokens + request.max_tokens
            held = self._held.pop(request.request_id, None)
            if held:
                rep.engine.kv.block_pool.free_blocks(held[::-1])
            self._final(request, now)
            return
        if rep.role is ReplicaRole.PREFILL:
            self._start_transfer(rep, request, now)
            return
        if rep.role is ReplicaRole.DECODE:
            self._reserve(rep)
        self._final(request, now)

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
        assert self.decode_router is not None  # only prefill replicas start transfers: there is a decode pool
        if rc.needs_state and (rc.staleness_s == 0 or now >= self._decode_refresh_at):
            self.decode_router.refresh([r.load() for r in self.back])
            self._decode_refresh_at = now + rc.staleness_s
        out = self.output_tokens[rid]
        drep = self.back[self.decode_router.choose(done.num_prompt_tokens, out, None)]
        request = Request(rid, done.arrival_time, done.num_prompt_tokens, out, None, done.user)
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

            def land(_event: object, r: Request = request, p: Replica = prep, h: list[int] | None = held,
                     d: Replica = drep) -> None:
                self._land(r, p, h, d)
            landing.callbacks.append(land)

    def _land(self, request: Request, prep: Replica, held: list[int] | None, drep: Replica) -> None:
        if held:
            prep.engine.kv.block_pool.free_blocks(held[::-1])
        cast(PushedSource, prep.source).push(None)  # freed blocks may let a waiting prefill in
        cast(PushedSource, drep.source).push(request)

    # ----- running ----------------------------------------------------------------------
    def _run_windows(self) -> None:
        """Every replica alone up to the next refresh instant, then the next window routed there
        (what ``_refresher`` does on one clock: a replica reaching the instant first would route the
        same window from the same snapshot, since waking idle changes nothing a snapshot reads)."""
        assert self.arrivals is not None
        envs, n = [r.engine.env for r in self.replicas], self.arrivals.n
        while self.next_index < n:
            until = self.routed_until
            for env in envs:
                if env.now < until:
                    env.run(until=until)  # events at ``until`` itself wait for the refresh
            self.route(until)

    def run(self) -> None:
        if self.windowed:
            self._run_windows()
        if self.independent or self.windowed:
            for rep in self.replicas:
                rep.engine.env.run()
        else:
            self.env.run()
        end = self.env.now
        for rep in self.replicas:
            if rep.source.live:  # pushed sources never end their engine: close its time series here
                rep.engine.series.close(max(end, rep.engine.clock), rep.engine.state())
        if self._held:
            raise RuntimeError(f"{len(self._held)} prefilled requests never started their KV transfer: a bug")
        stuck = sum(len(r.reserve_queue) for r in self.back)
        if stuck:
            raise RuntimeError(f"{stuck} transfers still wait for decode blocks at the end: a bug")


__all__ = ["Cluster", "PushedSource", "Replica", "RoutedSource"]
