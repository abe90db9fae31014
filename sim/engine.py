"""The engine loop: one SimPy process per replica, the only place that knows simulated time.

Each iteration mirrors ``EngineCore.step()``: take in the requests that arrived, ``schedule``,
run the batch (advance the clock by the step-cost model's time), ``update_from_output``.  When
there is nothing to run the process sleeps until the next arrival.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import simpy

from .api_server import ApiServerQueue
from .config import EngineConfig, EngineVersion
from .cost_model import StepCostModel
from .kv_cache_manager import KVCacheManager
from .memory import kv_capacity
from .metrics import InterTokenLatencies, NoLatencies, RequestRecords, TimeSeries
from .request import Request, RequestStatus
from .scheduler import Scheduler
from .scheduler_v0 import SchedulerV0

if TYPE_CHECKING:
    from .power import CappedStepCostModel


class LLMEngine:
    """A simulated vLLM replica fed by a request source (see :mod:`servesim.sim.sources`)."""

    def __init__(self, env: simpy.Environment, cfg: EngineConfig, source, records: RequestRecords,
                 sample_interval_s: float = 0.2, exact: bool = False,
                 on_progress: Callable[[int], None] | None = None,
                 on_token: Callable[[Request, float], None] | None = None, record_itl: bool = True) -> None:
        api_s = cfg.profile.step.api_server_request_s
        if api_s > 0 and not getattr(source, "live", False):
            source = ApiServerQueue(source, api_s)  # requests reach the scheduler one after another
        self.env, self.cfg, self.source, self.records = env, cfg, source, records
        self.memory = kv_capacity(cfg)
        # v1 caches every full block, so even without prefix hashes in the workload a preempted
        # request hits its own blocks when it resumes.  For v0 without hashes no block can ever be
        # hit: the cheaper pool behaves identically, so caching is only switched on where it matters.
        caching = cfg.cache.enable_prefix_caching and (
            cfg.engine is EngineVersion.V1 or getattr(source, "has_prefix_hashes", False))
        self.kv = KVCacheManager(self.memory.num_gpu_blocks, cfg.cache.block_size, caching,
                                 reserve_null_block=cfg.engine is EngineVersion.V1)
        self.itl = InterTokenLatencies() if record_itl else NoLatencies()
        scheduler_cls = Scheduler if cfg.engine is EngineVersion.V1 else SchedulerV0
        if on_token is not None:
            exact = True  # tokens of batch members are not produced one by one on the fast path
        self.scheduler = scheduler_cls(cfg, self.kv, self.itl, self._on_finish, exact=exact)
        self.scheduler.on_token = on_token
        self.cost: StepCostModel | CappedStepCostModel = StepCostModel(cfg.model, cfg.gpu, cfg.profile.step, cfg.parallel.tensor_parallel_size,
                                  cfg.weight_dtype, cfg.kv_dtype)
        self.series = TimeSeries(sample_interval_s)
        self.on_progress = on_progress
        self.on_step: Callable[[object, float], None] | None = None  # (SchedulerOutput, seconds) per step
        self.num_steps = 0
        self.busy_s = 0.0
        self.prefill_busy_s = 0.0
        self.running_integral = 0.0
        self.peak_kv_usage = 0.0
        self.num_finished = 0
        self.num_rejected = 0
        self.rejection_reason = ""  # why the first rejected request was refused (vLLM's 400 message)
        self.clock = 0.0
        # Longest request accepted: max_model_len, and at the edge where that equals the cache, the
        # blocks left beside v1's null block.
        usable = (self.kv.block_pool.num_blocks - (1 if self.kv.null_block is not None else 0)) * self.kv.block_size
        self.max_request_tokens = min(cfg.scheduler.max_model_len, usable)
        # advance runs of decode steps at once (a multi-step window is already run in one go)
        self.bulk = not exact and not getattr(source, "live", False) and cfg.scheduler.num_scheduler_steps == 1
        self.multi_step = cfg.engine is EngineVersion.V0 and cfg.scheduler.num_scheduler_steps > 1
        self.max_bulk_steps = 4096
        self.process = env.process(self.run())

    def _state(self) -> tuple:
        s = self.scheduler
        return (s.num_running, s.num_waiting, self.kv.usage, s.num_preemptions,
                s.prompt_tokens_total, s.generation_tokens_total)

    def _on_finish(self, request: Request, now: float) -> None:
        self.records.record(request)
        self.source.on_finish(request, now)
        self.num_finished += 1
        if self.on_progress is not None:
            self.on_progress(1)

    def _take_arrivals(self, now: float) -> None:
        max_len = self.max_request_tokens
        for request in self.source.pop_until(now):
            if request.num_prompt_tokens + request.max_tokens > max_len:
                # vLLM's API server answers 400: prompt plus max_tokens exceed max_model_len (or,
                # at the edge where max_model_len equals the cache, the blocks left beside v1's null block).
                request.status = RequestStatus.FINISHED
                if not self.rejection_reason:
                    self.rejection_reason = self._too_long(request)
                self.records.record(request, status=2)
                self.source.on_finish(request, now)
                self.num_rejected += 1
                continue
            self.scheduler.add_request(request)

    def _too_long(self, request: Request) -> str:
        need = request.num_prompt_tokens + request.max_tokens
        limit = self.max_request_tokens
        why = (f"max_model_len {limit}" if limit == self.cfg.scheduler.max_model_len
               else f"the {limit} tokens the KV cache holds beside the null block")
        return (f"prompt ({request.num_prompt_tokens}) + max_tokens ({request.max_tokens}) = {need} tokens "
                f"exceed {why}")

    def run(self):
        """The engine process.  ``self.clock`` is the authoritative simulated time (SimPy's clock
        follows it); keeping it separate lets a bulk advance land on exactly the time that the
        same steps taken one by one would reach."""
        env, scheduler, cost, kv = self.env, self.scheduler, self.cost, self.kv
        while True:
            now = self.clock
            next_arrival = self.source.next_time()
            if next_arrival is not None and next_arrival <= now:
                self._take_arrivals(now)
            if self.bulk and self._can_bulk():
                end = self._bulk_decode(now)
                if end is not None:
                    yield env.timeout(max(end - env.now, 0.0))
                    continue
            out = scheduler.schedule(now)
            self._collect_rejected()
            if out.is_empty:
                next_t = self.source.next_time()
                if next_t is None and getattr(self.source, "live", False):
                    # A live source (``servesim serve``) may still receive requests: sleep until it does.
                    self.series.sample_before(env.now, self._state())
                    yield self.source.wait(env)
                    self.clock = max(self.clock, env.now)
                    continue
                if next_t is None:
                    if scheduler.has_unfinished():
                        raise RuntimeError(
                            f"deadlock at t={now:.3f}s: {scheduler.num_waiting} waiting requests can never be "
                            f"scheduled with {kv.num_free_blocks} free blocks")
                    self.series.close(now, self._state())
                    break
                next_t = max(next_t, now)
                self.series.sample_before(next_t, self._state())
                self.clock = next_t
                yield env.timeout(max(next_t - env.now, 0.0))
                continue
            if self.multi_step and scheduler.is_window(out):
                yield from self._run_window(out, now)
                continue
            dt = cost.step_time(out)
            if out.swap_bytes:
                dt += out.swap_bytes / self.cfg.profile.step.swap_bandwidth_bytes_per_s
            usage = kv.usage
            if usage > self.peak_kv_usage:
                self.peak_kv_usage = usage
            self.running_integral += scheduler.num_running * dt
            self.busy_s += dt
            if out.num_prefill_tokens and out.num_tokens:
                self.prefill_busy_s += dt * out.num_prefill_tokens / out.num_tokens
            self.num_steps += 1
            if self.on_step is not None:
                self.on_step(out, dt)
            end = self.clock = now + dt
            if self.series.next_t < end:
                self.series.sample_before(end, self._state())
            yield env.timeout(max(end - env.now, 0.0))
            scheduler.update_from_output(out, end)

    def _run_window(self, out, now: float):
        """A multi-step decode pass (vLLM 0.6): K steps back to back, outputs applied at the end."""
        k = self.cfg.scheduler.num_scheduler_steps
        dt = self.cost.window_time(out.num_decode_seqs, out.decode_context_tokens, k)
        if out.swap_bytes:
            dt += out.swap_bytes / self.cfg.profile.step.swap_bandwidth_bytes_per_s
        usage = self.kv.usage
        if usage > self.peak_kv_usage:
            self.peak_kv_usage = usage
        self.running_integral += self.scheduler.num_running * dt
        self.busy_s += dt
        self.num_steps += k
        end = self.clock = now + dt
        if self.series.next_t < end:
            self.series.sample_before(end, self._state())
        yield self.env.timeout(max(end - self.env.now, 0.0))
        cast(SchedulerV0, self.scheduler).update_from_window(out, end)  # multi-step is v0 only

    def abort(self, request_id: int) -> bool:
        """Abort a request (a client went away): free what it holds, record it as aborted.

        Returns ``False`` if the request is not waiting or running (finished, or never arrived).
        Takes effect between steps, as vLLM's ``abort_requests``."""
        request = self.scheduler.abort_request(request_id)
        if request is None:
            return False
        self.records.record(request, status=3)
        self.source.on_finish(request, self.clock)
        return True

    def _collect_rejected(self) -> None:
        rejected = self.scheduler.rejected
        if rejected:
            for request in rejected:
                if not self.rejection_reason:
                    self.rejection_reason = (f"a {request.num_prompt_tokens}-token prompt can never fit in "
                                             f"the {self.memory.num_gpu_blocks} KV-cache blocks")
                self.records.record(request, status=2)
                self.source.on_finish(request, self.clock)
                self.num_rejected += 1
            rejected.clear()

    # ----- advancing many decode steps at once ----------------------------------------------
    def _can_bulk(self) -> bool:
        """Only decoders in the batch, nothing waiting: the next steps are identical decode steps
        until something arrives, finishes or runs out of blocks."""
        s = self.scheduler
        size = len(s.batch.members)
        return (not s.waiting and not s.scalar_running and size > 0 and not s.num_swapped
                and size <= s.sched.max_num_batched_tokens)

    def _bulk_decode(self, now: float) -> float | None:
        """Run the decode steps up to the next event in one go; return the new time, or ``None``
        when fewer than two steps are free of events (the per-step path then takes over).

        Equivalent to taking the steps one at a time: each step's time comes from the same
        :meth:`StepCostModel.step_time_of` call, times are summed in the same order, blocks are
        handed out in the same order, and the same ITLs and samples are recorded.
        """
        s, batch, kv, cost = self.scheduler, self.scheduler.batch, self.kv, self.cost
        size, g, bs = len(batch.members), batch.g, batch.block_size
        k_max = min(batch.steps_to_next_finish() - 1, self.max_bulk_steps)  # the finishing step runs alone
        if k_max < 2:
            return None
        next_arrival = self.source.next_time()
        if next_arrival is None:
            next_arrival = float("inf")
        free = kv.num_free_blocks - (1 if self.cfg.engine is EngineVersion.V0 else 0)
        buckets = batch.buckets
        ctx = batch.context_sum()
        a, b, fixed, c1, c2 = cost.decode_terms(size)  # step time = step_time_of(size, size, 0.0, ctx)
        ends: list[float] = []
        needing: list = []
        t = now
        for j in range(k_max):
            bucket = buckets[-(g + j) % bs]
            if len(needing) + len(bucket) > free:
                break
            t = t + ((((a + b * ctx) + fixed) + c1) + c2)
            ctx += size
            needing.extend(bucket.values())
            ends.append(t)
            if t >= next_arrival:
                break
        k = len(ends)
        if k < 2:
            return None
        # Apply: blocks (in step order), counters, records.
        free_before = kv.num_free_blocks
        if needing:
            kv.append_blocks(needing)
        itl = self.itl
        fresh = batch.fresh
        if size > len(fresh):
            itl.add(ends[0] - batch.last_step_end, size - len(fresh))
        for request in fresh:
            itl.add(ends[0] - request.last_token_time, 1)
        itl.add_steps(ends, size)
        batch.fresh = []
        batch.g = g + k
        end = ends[-1]
        batch.last_step_end = end
        gen0 = s.generation_tokens_total
        s.generation_tokens_total = gen0 + size * k
        usage = kv.usage
        if usage > self.peak_kv_usage:
            self.peak_kv_usage = usage
        total = end - now
        self.running_integral += size * total
        self.busy_s += total
        self.num_steps += k
        series = self.series
        if series.next_t < end:
            # As on the per-step path, a sample during a step sees the state after that step was
            # scheduled: j completed steps and the blocks of j + 1 allocations.
            num_blocks, j = kv.block_pool.num_blocks, 0
            while series.next_t < end:
                while ends[j] <= series.next_t:
                    j += 1
                used = sum(len(buckets[-(g + i) % bs]) for i in range(j + 1))
                series.sample_next((s.num_running, 0, 1.0 - (free_before - used) / num_blocks,
                                    s.num_preemptions, s.prompt_tokens_total, gen0 + size * j))
        self.clock = end
        return end
