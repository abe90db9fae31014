"""The engine loop: one SimPy process per replica, the only place that knows simulated time.

Each iteration is vLLM's ``EngineCore.step()``: take in the requests that arrived, ask the
scheduler for the next output, ask the step-cost model how long it runs, advance the clock,
apply the output (``update_from_output``) and tell the observers (:mod:`servesim.sim.observers`).
The output is one step, a multi-step window (vLLM 0.6 ``--num-scheduler-steps``) or a run of
decode steps the scheduler takes at once (:meth:`Scheduler.schedule_bulk`); the loop treats them
alike.  When there is nothing to run the process sleeps until the next arrival.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import simpy

from .api_server import ApiServerQueue
from .config import EngineConfig, EngineVersion
from .cost_model import StepCostModel
from .kv_cache_manager import KVCacheManager
from .memory import kv_capacity
from .metrics import InterTokenLatencies, NoLatencies, RequestRecords, TimeSeries
from .observers import HOOKS, EngineObserver, RecordsObserver, TimeSeriesObserver, bound_hooks
from .request import Request, RequestStatus
from .scheduler import Scheduler
from .scheduler_v0 import SchedulerV0

if TYPE_CHECKING:
    from .power import CappedStepCostModel


class LLMEngine:
    """A simulated vLLM replica fed by a request source (see :mod:`servesim.sim.sources`).

    ``records`` (if given) are filled as requests end; ``sample_interval_s`` (``None``: none) is the
    period of the time series ``series``; ``observers`` are told of steps, tokens and request ends.
    """

    def __init__(self, env: simpy.Environment, cfg: EngineConfig, source, records: RequestRecords | None = None,
                 sample_interval_s: float | None = 0.2, exact: bool = False,
                 observers: Iterable[EngineObserver] = (), record_itl: bool = True) -> None:
        api_s = cfg.profile.step.api_server_request_s
        live = getattr(source, "live", False)
        if api_s > 0 and not live:
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
        observers = list(observers)
        if any(o.wants_tokens for o in observers):
            exact = True  # tokens of batch members are not produced one by one on the fast path
        scheduler_cls = Scheduler if cfg.engine is EngineVersion.V1 else SchedulerV0
        self.scheduler = scheduler_cls(cfg, self.kv, self.itl, self._on_finish, exact=exact)
        if live:
            self.scheduler.bulk_decode = False  # requests may come at any moment of a run
        self.cost: StepCostModel | CappedStepCostModel = StepCostModel(
            cfg.model, cfg.gpu, cfg.profile.step, cfg.parallel.tensor_parallel_size, cfg.weight_dtype, cfg.kv_dtype)
        self.observers: list[EngineObserver] = []
        self._hooks: dict[str, list] = {name: [] for name in HOOKS}
        self._series: TimeSeries | None = None
        self._sampler: TimeSeriesObserver | None = None
        if records is not None:
            self.add_observer(RecordsObserver(records))
        if sample_interval_s is not None:
            self._series = TimeSeries(sample_interval_s)
            self._sampler = TimeSeriesObserver(self, self._series)
            self.add_observer(self._sampler)
        for observer in observers:
            self.add_observer(observer)
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
        self.process = env.process(self.run())

    @property
    def series(self) -> TimeSeries:
        """The sampled time series (an engine built with ``sample_interval_s=None`` has none)."""
        if self._series is None:
            raise AttributeError("this engine samples no time series (it was built with sample_interval_s=None)")
        return self._series

    def add_observer(self, observer: EngineObserver) -> None:
        """Notify ``observer`` from now on (one wanting tokens must be given at construction:
        it needs the exact path from the first step)."""
        if observer.wants_tokens and not self.scheduler.exact:
            raise ValueError("an observer of every token must be passed to LLMEngine(observers=...)")
        self.observers.append(observer)
        for name in HOOKS:
            if name == "on_step" and observer is self._sampler:
                continue  # called by the loop only when a sample falls due: it would run every step
            self._hooks[name].extend(bound_hooks(observer, name))
        token_hooks = self._hooks["on_token"]
        self.scheduler.on_token = (token_hooks[0] if len(token_hooks) == 1
                                   else self._notify_token if token_hooks else None)

    def _notify_token(self, request: Request, now: float) -> None:
        for hook in self._hooks["on_token"]:
            hook(request, now)

    def state(self) -> tuple:
        """The sampled state (:class:`TimeSeries` columns after the time)."""
        s = self.scheduler
        return (s.num_running, s.num_waiting, self.kv.usage, s.num_preemptions,
                s.prompt_tokens_total, s.generation_tokens_total)

    # ----- request ends ------------------------------------------------------------------------
    def _on_finish(self, request: Request, now: float) -> None:
        for hook in self._hooks["on_finish"]:
            hook(request, now)
        self.source.on_finish(request, now)
        self.num_finished += 1

    def _reject(self, request: Request, now: float, reason: str) -> None:
        request.status = RequestStatus.FINISHED_REJECTED
        if not self.rejection_reason:
            self.rejection_reason = reason
        for hook in self._hooks["on_reject"]:
            hook(request, now, reason)
        self.source.on_finish(request, now)
        self.num_rejected += 1

    def abort(self, request_id: int) -> bool:
        """Abort a request (a client went away): free what it holds, record it as aborted.

        Returns ``False`` if the request is not waiting or running (finished, or never arrived).
        Takes effect between steps, as vLLM's ``abort_requests``."""
        request = self.scheduler.abort_request(request_id)
        if request is None:
            return False
        for hook in self._hooks["on_abort"]:
            hook(request, self.clock)
        self.source.on_finish(request, self.clock)
        return True

    def _take_arrivals(self, now: float) -> None:
        max_len = self.max_request_tokens
        for request in self.source.pop_until(now):
            if request.num_prompt_tokens + request.max_tokens > max_len:
                # vLLM's API server answers 400: prompt plus max_tokens exceed max_model_len (or,
                # at the edge where max_model_len equals the cache, the blocks left beside v1's null block).
                self._reject(request, now, self._too_long(request))
                continue
            self.scheduler.add_request(request)

    def _too_long(self, request: Request) -> str:
        need = request.num_prompt_tokens + request.max_tokens
        limit = self.max_request_tokens
        why = (f"max_model_len {limit}" if limit == self.cfg.scheduler.max_model_len
               else f"the {limit} tokens the KV cache holds beside the null block")
        return (f"prompt ({request.num_prompt_tokens}) + max_tokens ({request.max_tokens}) = {need} tokens "
                f"exceed {why}")

    def _collect_rejected(self) -> None:
        rejected = self.scheduler.rejected
        if rejected:
            for request in rejected:
                self._reject(request, self.clock, f"a {request.num_prompt_tokens}-token prompt can never fit in "
                                                  f"the {self.memory.num_gpu_blocks} KV-cache blocks")
            rejected.clear()

    # ----- the loop ----------------------------------------------------------------------------
    def run(self):
        """The engine process.  ``self.clock`` is the authoritative simulated time (SimPy's clock
        follows it); keeping it separate lets a run of decode steps land on exactly the time that
        the same steps taken one by one would reach."""
        env, scheduler, cost, kv, source = self.env, self.scheduler, self.cost, self.kv, self.source
        step_hooks = self._hooks["on_step"]
        series, sampler = self._series, self._sampler
        inf = float("inf")
        while True:
            now = self.clock
            next_arrival = source.next_time()
            if next_arrival is not None and next_arrival <= now:
                self._take_arrivals(now)
                next_arrival = source.next_time()
            run = scheduler.schedule_bulk(now) if scheduler.bulk_decode else None
            if run is not None:
                ends = cost.decode_step_ends(now, run.num_seqs, run.context_tokens, run.max_steps,
                                             inf if next_arrival is None else next_arrival)
                if scheduler.update_from_decode_run(run, ends):
                    end = ends[-1]
                    self._account(end - now, run.num_seqs, run.num_steps)
                    if series is not None and series.next_t < end:
                        sampler.on_step(run, now, end)
                    for hook in step_hooks:
                        hook(run, now, end)
                    self.clock = end
                    yield env.timeout(max(end - env.now, 0.0))
                    continue
            out = scheduler.schedule(now)
            self._collect_rejected()
            if out.is_empty:
                yield from self._idle(now)
                if scheduler.has_unfinished() or source.next_time() is not None or getattr(source, "live", False):
                    continue
                for hook in self._hooks["on_close"]:
                    hook(now)
                break
            if out.num_steps == 1:
                dt = cost.step_time(out)
            else:
                dt = cost.window_time(out.num_decode_seqs, out.decode_context_tokens, out.num_steps)
            if out.swap_bytes:
                dt += out.swap_bytes / self.cfg.profile.step.swap_bandwidth_bytes_per_s
            usage = kv.usage
            if usage > self.peak_kv_usage:
                self.peak_kv_usage = usage
            self.running_integral += scheduler.num_running * dt
            self.busy_s += dt
            self.num_steps += out.num_steps
            if out.num_prefill_tokens and out.num_tokens:
                self.prefill_busy_s += dt * out.num_prefill_tokens / out.num_tokens
            end = self.clock = now + dt
            if series is not None and series.next_t < end:
                sampler.on_step(out, now, end)
            for hook in step_hooks:
                hook(out, now, end)
            yield env.timeout(max(end - env.now, 0.0))
            scheduler.update_from_output(out, end)

    def _account(self, dt: float, num_running: int, num_steps: int) -> None:
        usage = self.kv.usage
        if usage > self.peak_kv_usage:
            self.peak_kv_usage = usage
        self.running_integral += num_running * dt
        self.busy_s += dt
        self.num_steps += num_steps

    def _idle(self, now: float):
        """Nothing to run at ``now``: sleep until the next arrival (a live source: until a request
        comes); return at once when the run is over."""
        env, source, scheduler = self.env, self.source, self.scheduler
        next_t = source.next_time()
        if next_t is None and getattr(source, "live", False):
            # A live source (``servesim serve``) may still receive requests: sleep until it does.
            for hook in self._hooks["on_idle"]:
                hook(now, env.now)
            yield source.wait(env)
            self.clock = max(self.clock, env.now)
            return
        if next_t is None:
            if scheduler.has_unfinished():
                raise RuntimeError(
                    f"deadlock at t={now:.3f}s: {scheduler.num_waiting} waiting requests can never be "
                    f"scheduled with {self.kv.num_free_blocks} free blocks")
            return
        next_t = max(next_t, now)
        for hook in self._hooks["on_idle"]:
            hook(now, next_t)
        self.clock = next_t
        yield env.timeout(max(next_t - env.now, 0.0))
