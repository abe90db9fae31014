"""The scheduler: which requests run in the next step, with how many tokens.

Pure and synchronous: it never sees SimPy.  ``schedule(now)`` returns a :class:`SchedulerOutput`
(the batch and what it costs to compute), the engine runs the step, then
``update_from_output(output, now)`` applies its results (tokens produced, requests finished).

:class:`Scheduler` holds the state every policy shares and the vLLM v1 policy (``vllm/v1/core/
sched/scheduler.py``): one token budget per step shared by decodes and prefill chunks, running
requests first in admission order, then waiting ones FCFS, chunked prefill, and recompute
preemption of the newest running request when blocks run out.  The v0 policy is in
:mod:`servesim.sim.scheduler_v0`.

Decoding requests normally sit in a :class:`DecodeBatch` and are stepped with array operations;
``exact=True`` keeps every request on the per-request path (the reference the fast path is tested
against).  Invariant used by the fast path: in running order, batch members precede all other
running requests (a request joins the batch only when every request admitted before it decodes).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import EngineConfig
from .cost_model import BatchShape
from .decode_batch import DecodeBatch, DecodeRun
from .kv_cache_manager import KVCacheManager
from .metrics import InterTokenLatencies
from .request import Request, RequestStatus


@dataclass(slots=True)
class SchedulerOutput(BatchShape):
    """One step: the requests scheduled with their token counts, and (as a :class:`BatchShape`)
    what the step costs to compute."""

    num_batch_decodes: int = 0
    num_steps: int = 1                               # > 1: a multi-step decode window (vLLM 0.6, v0)
    scheduled: list = field(default_factory=list)   # (request, num_new_tokens) on the per-request path
    swap_bytes: float = 0.0                          # KV copied between GPU and CPU (v0 swap preemption)

    @property
    def is_empty(self) -> bool:
        return self.num_decode_seqs == 0 and self.num_prefill_seqs == 0 and self.swap_bytes == 0

    def add(self, request: Request, num_new_tokens: int) -> None:
        computed = request.num_computed_tokens
        self.scheduled.append((request, num_new_tokens))
        if num_new_tokens == 1 and computed > 0:
            self.num_decode_seqs += 1
            self.decode_context_tokens += computed + 1
        else:
            self.add_prefill_chunk(computed, num_new_tokens)


class Scheduler:
    """vLLM v1 scheduling policy over a paged KV cache (see the module docstring)."""

    def __init__(self, cfg: EngineConfig, kv: KVCacheManager, itl: InterTokenLatencies,
                 on_finish: Callable[[Request, float], None], exact: bool = False) -> None:
        self.cfg = cfg
        self.sched = cfg.scheduler
        self.kv = kv
        self.itl = itl
        self.on_finish = on_finish
        self.exact = exact
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}         # all running requests, in running order
        self.scalar_running: dict[int, Request] = {}  # running requests not in the batch, same order
        self.batch = DecodeBatch(cfg.cache.block_size)
        # Runs of decode steps are taken at once (``schedule_bulk``) unless every step must be exact;
        # the engine turns this off for a live source (requests may come at any wall-clock moment).
        self.bulk_decode = not exact and cfg.scheduler.num_scheduler_steps == 1
        self.max_bulk_steps = 4096
        self.rejected: list[Request] = []  # requests the policy refused (v0: could never fit); engine drains it
        self.on_token: Callable[[Request, float], None] | None = None  # per-token hook (exact mode only)
        self.num_preemptions = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0

    # ----- queue state -------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_swapped(self) -> int:
        """Requests swapped out to CPU (only vLLM v0's swap preemption has any)."""
        return 0

    def has_unfinished(self) -> bool:
        return bool(self.running) or bool(self.waiting)

    def add_request(self, request: Request) -> None:
        self.waiting.append(request)

    def _admit(self, request: Request, now: float) -> None:
        """Move the head of ``waiting`` into running."""
        self.waiting.popleft()
        request.status = RequestStatus.RUNNING
        self.running[request.request_id] = request
        self.scalar_running[request.request_id] = request
        if request.first_scheduled_time < 0:
            request.first_scheduled_time = now

    def materialize(self) -> None:
        """Put every batch member back on the per-request path (for a step needing per-request care)."""
        batch = self.batch
        for request in list(batch.members.values()):
            batch.remove(request)
        self.scalar_running = dict(self.running)

    def preempt(self, request: Request) -> None:
        """Recompute preemption: free the blocks, forget computed tokens, back to the front of waiting."""
        if request.in_batch:
            self.batch.remove(request)
        del self.running[request.request_id]
        self.scalar_running.pop(request.request_id, None)
        self.kv.free(request, preempted=True)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def abort_request(self, request_id: int) -> Request | None:
        """Remove a waiting or running request and free its blocks; ``None`` if it is neither."""
        request = self.running.get(request_id)
        if request is not None:
            if request.in_batch:
                self.batch.remove(request)
            del self.running[request_id]
            self.scalar_running.pop(request_id, None)
            self.kv.free(request)
        else:
            request = next((r for r in self.waiting if r.request_id == request_id), None)
            if request is None:
                return None
            self.waiting.remove(request)
        request.status = RequestStatus.FINISHED_ABORTED
        return request

    # ----- the v1 policy -----------------------------------------------------------------
    def _schedule_batch(self, out: SchedulerOutput, free_margin: int,
                        needing: dict[int, Request] | None = None) -> bool:
        """Schedule the whole decode batch if it needs no per-request care; return success.

        ``free_margin`` blocks must stay free after the batch's new blocks (v0 checks conservatively);
        ``needing`` is :meth:`DecodeBatch.needing_blocks` if the caller has it already.
        """
        batch = self.batch
        size = len(batch.members)
        if not size:
            return True
        if needing is None:
            needing = batch.needing_blocks()
        if self.exact or len(needing) > self.kv.num_free_blocks - free_margin:
            self.materialize()
            return False
        if needing:
            self.kv.append_blocks(needing.values())
        out.num_batch_decodes = size
        out.num_decode_seqs += size
        out.decode_context_tokens += batch.context_sum()
        return True

    def schedule(self, now: float) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.sched.max_num_batched_tokens
        batch = self.batch
        if len(batch.members) > budget:
            self.materialize()
        preempted = False
        if batch.members:  # (an empty batch schedules nothing)
            needing = batch.needing_blocks()
            if (needing and not self.scalar_running and len(needing) > self.kv.num_free_blocks
                    and list(self.running) == list(batch.members)):
                self._preempt_from_tail(out)
                preempted = True
            else:
                self._schedule_batch(out, 0, needing)
        budget -= out.num_batch_decodes
        kv = self.kv
        threshold = self.sched.long_prefill_token_threshold
        for request in list(self.scalar_running.values()) if self.scalar_running else ():
            if budget <= 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_new = request.num_tokens - request.num_computed_tokens
            if 0 < threshold < num_new:
                num_new = threshold
            num_new = min(num_new, budget)
            if num_new <= 0:
                continue
            while kv.allocate_slots(request, num_new) is None:
                victim = self.running[next(reversed(self.running))]
                self.preempt(victim)
                preempted = True
                if victim is request:
                    break
            if request.status is not RequestStatus.RUNNING:
                break
            out.add(request, num_new)
            budget -= num_new
        if not preempted:
            self._schedule_waiting(out, budget, now)
        return out

    def _preempt_from_tail(self, out: SchedulerOutput) -> None:
        """Schedule the batch's decode step when its new blocks do not all fit and only batch
        members run, in the same running order: the per-request walk's outcome without taking
        the batch apart.  That walk hands the members needing a block one each, in running order,
        and whenever none is free preempts the newest running request (the tail), stopping when
        it reaches the request asking; so blocks go out in runs as long as the free queue, between
        preemptions of tail members, in the walk's order (same block ids, same free-queue order),
        and only the victims leave the batch.  Cost: the needing members and the victims, not the
        whole batch (``tests/test_engine.py`` checks it against ``exact``)."""
        batch, kv, running = self.batch, self.kv, self.running
        needing = list(batch.needing_blocks().values())  # in running order (batch order is)
        i, n = 0, len(needing)
        while i < n:
            free = kv.num_free_blocks
            if free:
                take = min(free, n - i)
                kv.append_blocks(needing[i:i + take])
                i += take
                continue
            victim = running[next(reversed(running))]
            self.preempt(victim)
            if victim is needing[n - 1]:
                n -= 1  # a victim needing a block gets none (the asking one itself ends the walk)
        size = len(batch.members)
        if size:
            out.num_batch_decodes = size
            out.num_decode_seqs += size
            out.decode_context_tokens += batch.context_sum()

    def _schedule_waiting(self, out: SchedulerOutput, budget: int, now: float) -> None:
        kv, waiting, max_seqs = self.kv, self.waiting, self.sched.max_num_seqs
        full_isl = self.sched.scheduler_reserve_full_isl
        threshold = self.sched.long_prefill_token_threshold
        while waiting and budget > 0 and len(self.running) < max_seqs:
            request = waiting[0]
            hits, num_cached = kv.get_computed_blocks(request)
            if request.num_computed_tokens > num_cached:
                # Hook for disaggregated decode (sim/kv_transfer.py): the KV of these tokens came from
                # a prefill replica into blocks already allocated here; a waiting request otherwise
                # always has num_computed_tokens == 0 (new, or reset by preemption).
                hits, num_cached = [], request.num_computed_tokens
            num_new = request.num_tokens - num_cached
            if 0 < threshold < num_new:
                num_new = threshold
            num_new = min(num_new, budget)
            if kv.allocate_slots(request, num_new, hits, request.num_tokens if full_isl else None) is None:
                break
            if request.first_scheduled_time < 0:
                request.num_cached_tokens = num_cached
            request.num_computed_tokens = num_cached
            self._admit(request, now)
            out.add(request, num_new)
            budget -= num_new

    # ----- runs of decode steps ----------------------------------------------------------
    bulk_free_margin = 0  # blocks a decode step must leave free (v0's can_append_slots keeps one)

    def schedule_bulk(self, now: float) -> DecodeRun | None:
        """A run of decode steps of the whole batch, when the next steps provably are just that:
        only batch members are running and no waiting request can be admitted (none waits, or
        :meth:`_waiting_blocked`), so until a member finishes, a request arrives or blocks run out
        every step is the same decode step.  ``None`` when that does not hold or fewer than two
        steps are free of a finish.  Changes no state."""
        if not self.bulk_decode or self.scalar_running:
            return None
        batch = self.batch
        size = len(batch.members)
        if not size or size > self.sched.max_num_batched_tokens:
            return None
        max_steps = min(batch.steps_to_next_finish() - 1, self.max_bulk_steps)  # the finishing step runs alone
        if max_steps < 2 or self.num_swapped or (self.waiting and not self._waiting_blocked(size)):
            return None
        return DecodeRun(size, batch.context_sum(), max_steps, batch.g)

    def _waiting_blocked(self, num_batch: int) -> bool:
        """Whether the waiting queue's head can be admitted in none of the steps of a decode run
        (and so, FCFS, no waiting request): no token budget beside the batch, ``max_num_seqs``
        running, or its blocks do not fit.  The last stays true through the run: the batch only
        takes blocks (nothing is freed before the first finish, which ends the run), and the
        head's cache hits can only be evicted, never gained (running requests cache no block
        carrying its keys), so it needs at least as many blocks as now from fewer free ones."""
        budget = self.sched.max_num_batched_tokens - num_batch
        if budget <= 0 or len(self.running) >= self.sched.max_num_seqs:
            return True
        request, kv = self.waiting[0], self.kv
        if kv.num_free_blocks * kv.block_size >= request.num_tokens:
            return False  # room for its whole prompt without any cache hit: it is admitted
        hits, num_cached = kv.get_computed_blocks(request)
        if request.num_computed_tokens > num_cached:
            hits, num_cached = [], request.num_computed_tokens
        num_new = request.num_tokens - num_cached
        threshold = self.sched.long_prefill_token_threshold
        if 0 < threshold < num_new:
            num_new = threshold
        num_new = min(num_new, budget)
        full = request.num_tokens if self.sched.scheduler_reserve_full_isl else None
        return not kv.can_allocate_slots(request, num_new, hits, full)

    def update_from_decode_run(self, run: DecodeRun, ends: list[float]) -> bool:
        """Apply the decode steps of ``run`` that end at ``ends`` (cut to those whose new blocks
        are free); ``False``, changing nothing, when fewer than two remain.

        Equivalent to scheduling and applying the steps one at a time: blocks are handed out in
        step order, the same ITLs are recorded and the counters end where the steps leave them."""
        batch, kv = self.batch, self.kv
        buckets, g, bs = batch.buckets, batch.g, batch.block_size
        free = kv.num_free_blocks - self.bulk_free_margin
        num_steps = len(ends)
        needing: list[Request] = []
        k = 0
        q, r = divmod(num_steps, bs)
        if q >= 2:
            # A long run: step j hands a block to each member of bucket -(g + j) % bs and any bs
            # consecutive steps serve every member once, so it needs q cycles plus r buckets.
            order = [buckets[-(g + j) % bs] for j in range(bs)]
            if q * run.num_seqs + sum(len(b) for b in order[:r]) <= free:
                k = num_steps
                cycle = [request for b in order for request in b.values()]
                needing = cycle * q + [request for b in order[:r] for request in b.values()]
        if not k:  # step by step, cut before the first step short of blocks
            for j in range(num_steps):
                bucket = buckets[-(g + j) % bs]
                if len(needing) + len(bucket) > free:
                    break
                needing.extend(bucket.values())
                k = j + 1
        if k < 2:
            return False
        if k < len(ends):
            del ends[k:]
        run.ends = ends
        run.free_blocks_before = kv.num_free_blocks
        run.generation_tokens_before = self.generation_tokens_total
        if needing:
            kv.append_blocks(needing)
        batch.advance_run(ends, self.itl)
        self.generation_tokens_total += run.num_seqs * k
        return True

    # ----- applying a step's results -----------------------------------------------------
    def update_from_output(self, out: SchedulerOutput, now: float) -> None:
        if out.num_batch_decodes:
            self.generation_tokens_total += out.num_batch_decodes
            for request in self.batch.advance(now, self.itl):
                self.batch.remove(request)
                self._finish(request, now)
        for request, num_new in out.scheduled:
            if request.status is not RequestStatus.RUNNING:
                continue
            request.num_computed_tokens += num_new
            if request.num_computed_tokens >= request.num_tokens:
                self._emit_token(request, now)

    def _emit_token(self, request: Request, now: float) -> None:
        request.num_output_tokens += 1
        self.generation_tokens_total += 1
        if request.first_token_time < 0:
            request.first_token_time = now
            self.prompt_tokens_total += request.num_prompt_tokens
        else:
            self.itl.add(now - request.last_token_time, 1)
        request.last_token_time = now
        if self.on_token is not None:
            self.on_token(request, now)
        if request.num_output_tokens >= request.max_tokens:
            self._finish(request, now)
        elif not self.exact:
            del self.scalar_running[request.request_id]
            self.batch.add(request)

    def _finish(self, request: Request, now: float) -> None:
        request.status = RequestStatus.FINISHED
        del self.running[request.request_id]
        self.scalar_running.pop(request.request_id, None)
        self.kv.free(request)
        self.on_finish(request, now)
