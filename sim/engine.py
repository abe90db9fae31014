"""The engine loop: one SimPy process per replica, the only place that knows simulated time.

Each iteration mirrors ``EngineCore.step()``: take in the requests that arrived, ``schedule``,
run the batch (advance the clock by the step-cost model's time), ``update_from_output``.  When
there is nothing to run the process sleeps until the next arrival.
"""
from __future__ import annotations

from typing import Callable

import simpy

from .config import EngineConfig, EngineVersion
from .cost_model import StepCostModel
from .kv_cache_manager import KVCacheManager
from .memory import kv_capacity
from .metrics import InterTokenLatencies, RequestRecords, TimeSeries
from .request import Request, RequestStatus
from .scheduler import Scheduler
from .scheduler_v0 import SchedulerV0


class LLMEngine:
    """A simulated vLLM replica fed by a request source (see :mod:`servesim.sim.sources`)."""

    def __init__(self, env: simpy.Environment, cfg: EngineConfig, source, records: RequestRecords,
                 sample_interval_s: float = 0.2, exact: bool = False,
                 on_progress: Callable[[int], None] | None = None) -> None:
        self.env, self.cfg, self.source, self.records = env, cfg, source, records
        self.memory = kv_capacity(cfg)
        self.kv = KVCacheManager(self.memory.num_gpu_blocks, cfg.cache.block_size,
                                 cfg.cache.enable_prefix_caching,
                                 reserve_null_block=cfg.engine is EngineVersion.V1)
        self.itl = InterTokenLatencies()
        scheduler_cls = Scheduler if cfg.engine is EngineVersion.V1 else SchedulerV0
        self.scheduler = scheduler_cls(cfg, self.kv, self.itl, self._on_finish, exact=exact)
        self.cost = StepCostModel(cfg.model, cfg.gpu, cfg.profile.step, cfg.parallel.tensor_parallel_size,
                                  cfg.weight_dtype, cfg.kv_dtype)
        self.series = TimeSeries(sample_interval_s)
        self.on_progress = on_progress
        self.num_steps = 0
        self.busy_s = 0.0
        self.prefill_busy_s = 0.0
        self.running_integral = 0.0
        self.peak_kv_usage = 0.0
        self.num_finished = 0
        self.num_rejected = 0
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
        max_len = self.cfg.scheduler.max_model_len
        for request in self.source.pop_until(now):
            if request.num_prompt_tokens + request.max_tokens > max_len:
                # vLLM's API server answers 400: prompt plus max_tokens exceed max_model_len.
                request.status = RequestStatus.FINISHED
                self.records.record(request, status=2)
                self.source.on_finish(request, now)
                self.num_rejected += 1
                continue
            self.scheduler.add_request(request)

    def run(self):
        env, scheduler, cost, kv = self.env, self.scheduler, self.cost, self.kv
        while True:
            now = env.now
            self._take_arrivals(now)
            out = scheduler.schedule(now)
            for request in getattr(scheduler, "rejected", ()):
                self.records.record(request, status=2)
                self.num_rejected += 1
            if getattr(scheduler, "rejected", None):
                scheduler.rejected.clear()
            if out.is_empty:
                next_t = self.source.next_time()
                if next_t is None:
                    if scheduler.has_unfinished():
                        raise RuntimeError(
                            f"deadlock at t={now:.3f}s: {scheduler.num_waiting} waiting requests can never be "
                            f"scheduled with {kv.num_free_blocks} free blocks")
                    break
                self.series.sample_until(next_t, self._state())
                yield env.timeout(max(next_t - now, 0.0))
                continue
            dt = cost.step_time_of(out.num_tokens, out.num_seqs, out.prefill_pairs, out.decode_context_tokens)
            usage = kv.usage
            if usage > self.peak_kv_usage:
                self.peak_kv_usage = usage
            self.running_integral += scheduler.num_running * dt
            self.busy_s += dt
            if out.num_prefill_tokens:
                self.prefill_busy_s += dt * out.num_prefill_tokens / out.num_tokens
            self.num_steps += 1
            yield env.timeout(dt)
            end = env.now
            scheduler.update_from_output(out, end)
            if self.series.next_t <= end:
                self.series.sample_until(end, self._state())
