"""The same :class:`StepRecord` stream from servesim's own v1 scheduler.

Two ways in:

* :func:`run_servesim` drives ``servesim.sim.scheduler.Scheduler`` directly with a stream, tick by
  tick, on the exact per-request path (``exact=True``) or the decode-batch fast path;
* :class:`EngineRecorder` attaches to a built :class:`~servesim.sim.engine.LLMEngine` and records
  every step it takes, expanding the engine's bulk decode runs (many steps in one go) into one
  record per step, together with the tick at which each request reached the scheduler; the
  stream it derives (:meth:`EngineRecorder.stream`) can then be replayed through vLLM.

Records are built from what the scheduler exposes (its queues, request states, the block pool),
not from the scheduler's own notion of what it did, so a bookkeeping slip shows up as a mismatch.
"""
from __future__ import annotations

from dataclasses import replace

from servesim.sim.config import EngineConfig, make_engine_config
from servesim.sim.decode_batch import DecodeRun
from servesim.sim.gpus import get_gpu
from servesim.sim.kv_cache_manager import KVCacheManager
from servesim.sim.metrics import InterTokenLatencies
from servesim.sim.model_catalog import get_model
from servesim.sim.observers import CallbackObserver
from servesim.sim.request import Request, RequestStatus
from servesim.sim.scheduler import Scheduler, SchedulerOutput

from .records import OracleConfig, RequestSpec, StepLog, StepRecord, is_rejected_for_length


def engine_config(cfg: OracleConfig) -> EngineConfig:
    """A servesim v1 replica with the oracle's scheduler knobs (model and GPU only set costs,
    which the decisions compared here do not depend on)."""
    ecfg = make_engine_config(get_model("llama-3.1-8b"), get_gpu("h100-sxm"), "vllm-v1",
                              max_num_seqs=cfg.max_num_seqs, max_num_batched_tokens=cfg.max_num_batched_tokens,
                              max_model_len=cfg.max_model_len, enable_prefix_caching=cfg.enable_prefix_caching,
                              block_size=cfg.block_size, num_gpu_blocks=cfg.num_gpu_blocks)
    return replace(ecfg, scheduler=replace(ecfg.scheduler,
                                           scheduler_reserve_full_isl=cfg.scheduler_reserve_full_isl,
                                           long_prefill_token_threshold=cfg.long_prefill_token_threshold))


class SchedulerRecorder:
    """Wraps one servesim :class:`Scheduler`'s ``schedule`` / ``update_from_output`` / finish hook
    and appends a :class:`StepRecord` per non-empty step to ``log`` (empty steps too if
    ``record_empty``)."""

    def __init__(self, scheduler: Scheduler, log: StepLog, record_empty: bool) -> None:
        self.s = scheduler
        self.log = log
        self.record_empty = record_empty
        self.step = 0
        self._pending: StepRecord | None = None
        self._finished: list[int] = []
        self._schedule, self._update, self._on_finish = scheduler.schedule, scheduler.update_from_output, \
            scheduler.on_finish
        # The recorder wraps this one scheduler's methods (instance attributes, the class untouched).
        scheduler.schedule = self.schedule  # type: ignore[method-assign]
        scheduler.update_from_output = self.update_from_output  # type: ignore[method-assign]
        scheduler.on_finish = self.on_finish

    def schedule(self, now: float) -> SchedulerOutput:
        s = self.s
        waiting_before = {r.request_id: r.status for r in s.waiting}
        running_before = set(s.running)
        out = self._schedule(now)
        if out.is_empty and not self.record_empty:
            return out
        scheduled = {r.request_id: n for r, n in out.scheduled if r.status is RequestStatus.RUNNING}
        if out.num_batch_decodes:
            for rid in s.batch.members:
                scheduled[rid] = 1
        admitted = [rid for rid in s.running if rid in waiting_before]
        new = sorted(rid for rid in admitted if waiting_before[rid] is RequestStatus.WAITING)
        resumed = sorted(rid for rid in admitted if waiting_before[rid] is RequestStatus.PREEMPTED)
        # Before update_from_output an admitted request's num_computed_tokens is its cache hit.
        hits = sorted((rid, s.running[rid].num_computed_tokens) for rid in admitted
                      if s.running[rid].num_computed_tokens > 0)
        preempted = sorted(rid for rid in running_before if rid not in s.running
                           and any(r.request_id == rid for r in s.waiting))
        free = s.kv.num_free_blocks
        self._pending = StepRecord(
            step=self.step, scheduled=tuple(sorted(scheduled.items())), new=tuple(new), resumed=tuple(resumed),
            prefix_hits=tuple(hits), preempted=tuple(preempted),
            num_blocks_used=s.kv.block_pool.num_blocks - free, num_blocks_free=free)
        return out

    def update_from_output(self, out: SchedulerOutput, now: float) -> None:
        self._update(out, now)
        record = self._pending
        if record is None:
            return
        self._pending = None
        finished = tuple(sorted(self._finished))
        self._finished.clear()
        for rid in finished:
            self.log.finish_step[rid] = self.step
        self.log.records.append(replace(record, finished=finished))
        self.step += 1

    def on_finish(self, request: Request, now: float) -> None:
        self._finished.append(request.request_id)
        self._on_finish(request, now)

    def add_bulk_steps(self, members: list[int], needing_per_step: list[int], free_before: int) -> None:
        """Records of ``len(needing_per_step)`` identical decode steps of ``members`` taken at once,
        step ``j`` handing out ``needing_per_step[j]`` blocks (nothing finishes inside a bulk run)."""
        num_blocks = self.s.kv.block_pool.num_blocks
        scheduled = tuple((rid, 1) for rid in sorted(members))
        free = free_before
        for needing in needing_per_step:
            free -= needing
            self.log.records.append(StepRecord(step=self.step, scheduled=scheduled,
                                               num_blocks_used=num_blocks - free, num_blocks_free=free))
            self.step += 1


def run_servesim(cfg: OracleConfig, stream: list[RequestSpec], exact: bool = True,
                 max_steps: int = 10_000_000) -> StepLog:
    """Drive servesim's v1 :class:`Scheduler` through ``stream`` with the oracle's tick protocol."""
    ecfg = engine_config(cfg)
    kv = KVCacheManager(cfg.num_gpu_blocks, cfg.block_size, cfg.enable_prefix_caching, reserve_null_block=True)
    scheduler = Scheduler(ecfg, kv, InterTokenLatencies(), lambda r, t: None, exact=exact)
    log = StepLog()
    recorder = SchedulerRecorder(scheduler, log, record_empty=True)
    pending = sorted(stream, key=lambda s: (s.arrival_step, s.request_id))
    i, step = 0, 0
    while i < len(pending) or scheduler.has_unfinished():
        if step >= max_steps:
            raise RuntimeError(f"servesim: no end after {max_steps} steps")
        while i < len(pending) and pending[i].arrival_step <= step:
            spec = pending[i]
            i += 1
            if is_rejected_for_length(spec, cfg):
                log.rejected[spec.request_id] = step
                continue
            scheduler.add_request(Request(spec.request_id, float(step), spec.num_prompt_tokens, spec.max_tokens,
                                          spec.block_hashes or None))
        out = scheduler.schedule(float(step))
        scheduler.update_from_output(out, float(step + 1))
        step += 1
    assert recorder.step == step
    return log


__all__ = ["SchedulerRecorder", "engine_config", "run_servesim"]


class EngineRecorder:
    """Records every step a servesim :class:`LLMEngine` takes (bulk decode runs expanded), and the
    tick at which each request reached the scheduler, so the run can be replayed through vLLM.

    Attach before ``env.run()``.  Ticks count the engine's steps: a request taken in while the
    engine has completed ``k`` steps arrives at tick ``k``; an idle engine takes no step, so an
    idle stretch costs no ticks, and the replay (which adds every request of tick ``k`` before
    scheduling it) sees the same queue the engine scheduled from.
    """

    def __init__(self, engine) -> None:
        from servesim.sim.config import EngineVersion

        if engine.cfg.engine is not EngineVersion.V1:
            raise ValueError("the oracle covers the vllm-v1 policy only")
        self.engine = engine
        self.log = StepLog()
        self.specs: list[RequestSpec] = []
        self.num_bulk_steps = 0  # steps the engine took inside bulk decode runs
        self.recorder = SchedulerRecorder(engine.scheduler, self.log, record_empty=False)
        self._pop_until = engine.source.pop_until
        engine.source.pop_until = self._pop
        engine.add_observer(CallbackObserver(on_step=self._on_step, on_reject=self._on_reject))

    def _on_reject(self, request: Request, now: float, reason: str) -> None:
        # refused: the engine's length check (the API server's 400)
        self.log.rejected[request.request_id] = self.recorder.step

    def _pop(self, now: float) -> list[Request]:
        requests = self._pop_until(now)
        tick = self.recorder.step
        for r in requests:
            self.specs.append(RequestSpec(r.request_id, r.num_prompt_tokens, r.max_tokens, tick,
                                          tuple(r.block_hashes or ())))
        return requests

    def _on_step(self, output, start: float, end: float) -> None:
        """A bulk decode run (applied, not yet over): record its steps one by one."""
        if type(output) is not DecodeRun:
            return  # single steps are recorded by the SchedulerRecorder
        batch = self.engine.scheduler.batch
        bs, g0 = batch.block_size, output.first_step
        needing = [len(batch.buckets[-(g0 + j) % bs]) for j in range(output.num_steps)]
        self.recorder.add_bulk_steps(list(batch.members), needing, output.free_blocks_before)
        self.num_bulk_steps += len(needing)

    def oracle_config(self) -> OracleConfig:
        """The scheduler knobs of the engine's configuration, for the replay."""
        cfg, kv = self.engine.cfg, self.engine.kv
        if cfg.scheduler.max_model_len > self.engine.max_request_tokens:
            raise ValueError(f"max_model_len {cfg.scheduler.max_model_len} exceeds what the KV cache holds "
                             f"({self.engine.max_request_tokens} tokens): vLLM would refuse to start")
        return OracleConfig(num_gpu_blocks=kv.block_pool.num_blocks, max_num_seqs=cfg.scheduler.max_num_seqs,
                            max_num_batched_tokens=cfg.scheduler.max_num_batched_tokens,
                            max_model_len=cfg.scheduler.max_model_len, block_size=cfg.cache.block_size,
                            enable_prefix_caching=kv.enable_caching,
                            scheduler_reserve_full_isl=cfg.scheduler.scheduler_reserve_full_isl,
                            long_prefill_token_threshold=cfg.scheduler.long_prefill_token_threshold)

    def stream(self) -> list[RequestSpec]:
        return list(self.specs)


__all__ += ["EngineRecorder"]
