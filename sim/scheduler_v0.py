"""The vLLM v0 scheduling policy (vLLM 0.5.x/0.6.x ``core/scheduler.py``).

Differences from v1 that change results:

* prefill first: with chunked prefill off, a step holds either new prefills (admitted FCFS while
  the token budget, ``max_num_seqs`` and the free-block watermark allow) or decodes of every
  running request, never both;
* admission allocates blocks for the whole prompt and keeps ``watermark * num_gpu_blocks`` blocks
  free (``BlockSpaceManager.can_allocate``); a prompt that could never fit is rejected;
* decodes are checked conservatively: a sequence may append only while at least one block is free
  (``can_append_slots``); otherwise the running request that arrived last is preempted;
* running requests are served in arrival order (FCFS ``sort_by_priority``).

With ``enable_chunked_prefill`` the step holds running requests first (decodes and prefill chunks,
arrival order), then new prefill chunks, under one token budget, as in 0.5.x
``_schedule_chunked_prefill``.

With ``preemption_mode=swap`` a victim's blocks are copied to CPU swap space instead of being
dropped; it waits in ``swapped`` and is swapped back in (FCFS, watermark permitting) in a step with
no preemption, resuming its decode without recompute.  While anything is swapped out, no new
prefill is admitted (as in 0.5.x ``_schedule_default``).  The copies cost PCIe time in the step
that makes them (``SchedulerOutput.swap_bytes``).  Running out of swap space is an error, as in vLLM.

Multi-step scheduling (vLLM 0.6 ``--num-scheduler-steps K``; ``core/scheduler.py``,
``engine/llm_engine.py``, ``engine/output_processor/multi_step.py`` of 0.6.1):

* a prefill pass is one step (``init_multi_step(num_scheduler_steps=0 + 1)``: no lookahead for
  prefills); a decode pass runs K steps back to back, the scheduler not being called again until
  the window is over (``_has_remaining_steps``), so requests arriving meanwhile wait for its end;
* a decode pass reserves KV room for the K tokens up front: ``append_slots(seq, K - 1)`` lookahead
  slots, admitted by the v2 block manager's ``can_append_slots``: the blocks the K slots touch
  (counting the partly filled last block as touched) must not exceed the free blocks, else the
  newest running request is preempted;
* the window's outputs are processed, and streamed, once at its end: the client gets one chunk of
  up to K tokens per sequence (its ITL is the window, its TPOT the per-token time);
* a sequence reaching ``max_tokens`` inside the window still runs the window's remaining steps
  (the batch is fixed for the window); its surplus tokens are dropped when outputs are processed
  and it finishes at the window's end.

Multi-step needs chunked prefill off (vLLM 0.6 refuses the combination; so does the config).
"""
from __future__ import annotations

from collections import deque

from .config import PreemptionMode
from .kv_cache_manager import cdiv
from .metrics import NoLatencies
from .request import Request, RequestStatus
from .scheduler import Scheduler, SchedulerOutput


class SchedulerV0(Scheduler):
    """vLLM v0 policy; shares state, preemption and output handling with :class:`Scheduler`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.watermark_blocks = int(self.sched.watermark * self.kv.num_gpu_blocks)
        self.swap = self.sched.preemption_mode is PreemptionMode.SWAP
        cfg = self.cfg
        self.block_bytes = (cfg.model.kv_bytes_per_token(cfg.kv_dtype, cfg.parallel.tensor_parallel_size)
                            * cfg.cache.block_size)
        self.num_cpu_blocks = int(cfg.cache.swap_space_bytes // self.block_bytes)
        self.swapped: deque[Request] = deque()
        self.swapped_blocks: dict[int, int] = {}
        self._swap_bytes = 0.0
        self.num_scheduler_steps = self.sched.num_scheduler_steps
        self.lookahead = self.num_scheduler_steps - 1  # lookahead slots of a decode pass
        self._quiet = NoLatencies()

    def has_unfinished(self) -> bool:
        return super().has_unfinished() or bool(self.swapped)

    @property
    def num_swapped(self) -> int:
        return len(self.swapped)

    def preempt(self, request: Request) -> None:
        if not self.swap:
            super().preempt(request)
            return
        if request.in_batch:
            self.batch.remove(request)
        n_blocks = self.kv.num_blocks_of(request)
        if sum(self.swapped_blocks.values()) + n_blocks > self.num_cpu_blocks:
            raise ValueError(f"request {request.request_id} cannot be swapped out: {n_blocks} blocks "
                               f"exceed the {self.num_cpu_blocks}-block CPU swap space "
                               "(vLLM aborts here too; raise swap_space or use recompute)")
        del self.running[request.request_id]
        self.scalar_running.pop(request.request_id, None)
        self.kv.free(request)
        self.swapped_blocks[request.request_id] = n_blocks
        self._swap_bytes += n_blocks * self.block_bytes
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.swapped.append(request)

    def abort_request(self, request_id: int) -> Request | None:
        request = super().abort_request(request_id)
        if request is None:
            request = next((r for r in self.swapped if r.request_id == request_id), None)
            if request is not None:
                self.swapped.remove(request)
                del self.swapped_blocks[request_id]
                request.status = RequestStatus.FINISHED_ABORTED
        return request

    def _schedule_swapped(self, out: SchedulerOutput, budget: int, now: float) -> None:
        """Swap requests back in, FCFS, while blocks above the watermark and budget allow."""
        kv = self.kv
        while self.swapped and budget > 0 and len(self.running) < self.sched.max_num_seqs:
            request = self.swapped[0]
            n_blocks = self.swapped_blocks[request.request_id]
            if kv.num_free_blocks - n_blocks - 1 < self.watermark_blocks:
                break
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if kv.allocate_slots(request, num_new + self.lookahead) is None:  # swapped blocks + this pass's tokens
                break
            self.swapped.popleft()
            del self.swapped_blocks[request.request_id]
            self._swap_bytes += n_blocks * self.block_bytes
            request.status = RequestStatus.RUNNING
            self.running[request.request_id] = request
            self.scalar_running[request.request_id] = request
            out.add(request, num_new)
            budget -= num_new

    def schedule(self, now: float) -> SchedulerOutput:
        out = SchedulerOutput()
        self._swap_bytes = 0.0
        budget: int | None
        if self.sched.enable_chunked_prefill:
            budget = self.sched.max_num_batched_tokens
            if len(self.batch.members) > budget or (self.scalar_running and not self._batch_leads()):
                # v0 serves running requests in arrival order under one budget: with prefill chunks
                # in flight the batch can go first only if it is first in that order.
                self.materialize()
            self._schedule_batch(out, free_margin=1)
            budget = self._schedule_running(out, budget - out.num_batch_decodes)
            if budget is not None and self.swapped:
                self._schedule_swapped(out, budget, now)
                budget = self.sched.max_num_batched_tokens - out.num_tokens
            if budget is not None:
                self._schedule_prefills(out, budget, now, chunked=True)
        else:
            if not self.swapped:
                self._schedule_prefills(out, self.sched.max_num_batched_tokens, now, chunked=False)
            if out.is_empty:
                if self.lookahead:
                    self._schedule_batch_window(out)
                else:
                    self._schedule_batch(out, free_margin=1)
                budget = self._schedule_running(out, self.sched.max_num_batched_tokens)
                if budget is not None and self.swapped:
                    self._schedule_swapped(out, budget - out.num_batch_decodes, now)
        out.swap_bytes = self._swap_bytes
        if self.lookahead and self.is_window(out):
            out.num_steps = self.num_scheduler_steps
        return out

    def _batch_leads(self) -> bool:
        """Whether every batch member arrived before every running request off the batch, so
        the batch going first is the arrival order (budget, can_append_slots checks and
        preemption victims are then those of the per-request path)."""
        first = min((r.arrival_time, r.request_id) for r in self.scalar_running.values())
        return self.batch.max_arrival < first

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int | None:
        """Running requests off the batch, in arrival order; returns the budget left, or ``None``
        when something was preempted (then nothing new is admitted this step)."""
        if not self.scalar_running:
            return budget
        queue = deque(sorted(self.scalar_running.values(), key=lambda r: (r.arrival_time, r.request_id)))
        kv = self.kv
        preempted = False
        while queue:
            request = queue[0]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if num_new <= 0:
                break
            queue.popleft()
            scheduled = True
            need = self._touched_blocks(request) if self.lookahead else 1
            while kv.num_free_blocks < need:  # can_append_slots: one free block per running sequence (v1
                # block manager); with lookahead the blocks the pass's slots touch (v2 block manager)
                preempted = True
                if queue:
                    self.preempt(queue.pop())
                else:
                    self.preempt(request)
                    scheduled = False
                    break
            if not scheduled:
                break
            if kv.allocate_slots(request, num_new + self.lookahead) is None:
                raise RuntimeError(f"request {request.request_id} passed can_append_slots but got no blocks "
                                   f"for {num_new} tokens: a scheduler bug")
            out.add(request, num_new)
            budget -= num_new
        return None if preempted else budget

    def _schedule_prefills(self, out: SchedulerOutput, budget: int, now: float, chunked: bool) -> None:
        kv, waiting = self.kv, self.waiting
        block_size = kv.block_size
        while waiting:
            request = waiting[0]
            num_tokens = request.num_tokens
            required = cdiv(num_tokens, block_size)
            if kv.num_gpu_blocks - required < self.watermark_blocks:
                waiting.popleft()  # AllocStatus.NEVER: vLLM ignores the request with an error
                request.status = RequestStatus.FINISHED_REJECTED
                self.rejected.append(request)
                continue
            if kv.num_free_blocks - required < self.watermark_blocks:
                break  # AllocStatus.LATER
            num_new = min(num_tokens, budget) if chunked else num_tokens
            if num_new <= 0 or num_new > budget or len(self.running) + 1 > self.sched.max_num_seqs:
                break
            kv.allocate_slots(request, num_tokens)  # v0 allocates the whole prompt at admission
            self._admit(request, now)
            out.add(request, num_new)
            budget -= num_new

    # ----- multi-step scheduling (vLLM 0.6 --num-scheduler-steps) ------------------------------
    def _touched_blocks(self, request: Request) -> int:
        """Blocks a decode pass of K slots touches: ``BlockTable.get_num_blocks_touched_by_append_slots``
        (the partly filled last block counts, as a worst-case copy-on-write)."""
        bs = self.kv.block_size
        first_chunk = bs - request.num_computed_tokens % bs
        return 1 + max(0, cdiv(self.num_scheduler_steps - first_chunk, bs))

    def _schedule_batch_window(self, out: SchedulerOutput) -> bool:
        """The decode batch with K slots per member, when that surely passes ``can_append_slots``
        for every member in turn; otherwise the members go to the per-request path."""
        batch, kv = self.batch, self.kv
        size = len(batch.members)
        if not size:
            return True
        bs, g = batch.block_size, batch.g
        needing = [r for j in range(self.num_scheduler_steps) for r in batch.buckets[-(g + j) % bs].values()]
        # Sufficient for every member's check: all new blocks plus the most any one member touches.
        if self.exact or len(needing) + 1 + cdiv(self.num_scheduler_steps, bs) > kv.num_free_blocks:
            self.materialize()
            return False
        if needing:
            kv.append_blocks(needing)
        out.num_batch_decodes = size
        out.num_decode_seqs += size
        out.decode_context_tokens += batch.context_sum()
        return True

    def is_window(self, out: SchedulerOutput) -> bool:
        """Whether ``out`` is a multi-step decode pass (K > 1 and no prefill in it)."""
        return self.lookahead > 0 and out.num_prefill_seqs == 0 and out.num_decode_seqs > 0

    bulk_free_margin = 1

    def _waiting_blocked(self, num_batch: int) -> bool:
        """v0's admission test for the waiting head (:meth:`_schedule_prefills`), true for a whole
        decode run: ``max_num_seqs`` running, no budget, or the watermark not kept (free blocks
        only fall during the run).  A head that can never fit is not blocked: it is rejected."""
        request, kv = self.waiting[0], self.kv
        required = cdiv(request.num_tokens, kv.block_size)
        if kv.num_gpu_blocks - required < self.watermark_blocks:
            return False  # the next schedule() rejects it
        if len(self.running) + 1 > self.sched.max_num_seqs:
            return True
        if kv.num_free_blocks - required < self.watermark_blocks:
            return True
        budget = self.sched.max_num_batched_tokens
        if self.sched.enable_chunked_prefill:
            return budget - num_batch <= 0
        # prefill first: the prompt is scheduled whole (a step holds prefills or decodes) if it fits the budget
        return request.num_tokens > budget

    def update_from_output(self, out: SchedulerOutput, now: float) -> None:
        if out.num_steps > 1:
            self.update_from_window(out, now)
        else:
            super().update_from_output(out, now)

    def update_from_window(self, out: SchedulerOutput, now: float) -> None:
        """Apply a K-step decode pass that ended at ``now``: every sequence gains up to K tokens,
        all streamed at ``now`` as one chunk (one inter-token gap each); sequences reaching
        ``max_tokens`` inside the window finish at ``now`` with exactly ``max_tokens`` tokens."""
        k = self.num_scheduler_steps
        batch = self.batch
        if out.num_batch_decodes:
            for j in range(k):
                size = len(batch.members)
                if not size:
                    break
                self.generation_tokens_total += size
                for request in batch.advance(now, self.itl if j == 0 else self._quiet):
                    batch.remove(request)
                    self._finish(request, now)
        for request, _ in out.scheduled:
            if request.status is not RequestStatus.RUNNING:
                continue
            n = min(k, request.max_tokens - request.num_output_tokens)
            request.num_computed_tokens += n
            if self.on_token is not None:        # a live stream gets every token of the chunk
                for _ in range(n - 1):
                    request.num_output_tokens += 1
                    self.generation_tokens_total += 1
                    self.on_token(request, now)
            else:
                request.num_output_tokens += n - 1   # the last of the chunk is emitted below
                self.generation_tokens_total += n - 1
            self._emit_token(request, now)
