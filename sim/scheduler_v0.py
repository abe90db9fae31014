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
``_schedule_chunked_prefill``.  Swap preemption is not simulated yet (recompute only).
"""
from __future__ import annotations

from collections import deque

from .kv_cache_manager import cdiv
from .request import Request, RequestStatus
from .scheduler import Scheduler, SchedulerOutput


class SchedulerV0(Scheduler):
    """vLLM v0 policy; shares state, preemption and output handling with :class:`Scheduler`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.watermark_blocks = int(self.sched.watermark * self.kv.num_gpu_blocks)
        self.rejected: list[Request] = []

    def schedule(self, now: float) -> SchedulerOutput:
        out = SchedulerOutput()
        if self.sched.enable_chunked_prefill:
            budget = self.sched.max_num_batched_tokens
            if self.batch.size > budget:
                self.materialize()
            self._schedule_batch(out, free_margin=1)
            budget = self._schedule_running(out, budget - out.num_batch_decodes)
            if budget is not None:
                self._schedule_prefills(out, budget, now, chunked=True)
            return out
        self._schedule_prefills(out, self.sched.max_num_batched_tokens, now, chunked=False)
        if out.is_empty:
            self._schedule_batch(out, free_margin=1)
            self._schedule_running(out, self.sched.max_num_batched_tokens)
        return out

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
            while kv.num_free_blocks < 1:  # can_append_slots: one free block per running sequence
                preempted = True
                if queue:
                    self.preempt(queue.pop())
                else:
                    self.preempt(request)
                    scheduled = False
                    break
            if not scheduled:
                break
            kv.allocate_slots(request, num_new)
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
                request.status = RequestStatus.FINISHED
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
