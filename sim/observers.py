"""Observers of an engine: what it reports as it runs, kept out of the loop itself.

An :class:`LLMEngine` notifies its observers (``observers=[...]``, or :meth:`LLMEngine.add_observer`)
of what happens, in simulated time:

* ``on_step(output, start_s, end_s)``: the engine runs ``output`` (a :class:`SchedulerOutput`, a
  multi-step window of one, or a :class:`DecodeRun` of several decode steps) from ``start_s`` to
  ``end_s``; called after scheduling, before the clock reaches ``end_s`` and the results are
  applied, so the engine's state is the one the step was scheduled from;
* ``on_idle(start_s, end_s)``: nothing to run until ``end_s`` (the next arrival, or a live
  source's next request);
* ``on_close(end_s)``: the run is over;
* ``on_token(request, now)``: a request produced a token; observers that set ``wants_tokens``
  make the engine take every step on the exact per-request path (a bulk decode run produces its
  tokens without touching each request);
* ``on_finish``, ``on_reject(request, now, reason)``, ``on_abort``: a request ended, with its
  outcome in ``request.status`` (:class:`RequestStatus` ``FINISHED``, ``FINISHED_REJECTED``,
  ``FINISHED_ABORTED``).

The engine calls only the hooks an observer overrides, so an unused hook costs nothing per step.
This module holds the observers the simulator itself uses: per-request records, the Prometheus-
style time series, a progress callback, and :class:`CallbackObserver` for plain functions.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from .decode_batch import DecodeRun
from .metrics import RequestRecords, TimeSeries
from .request import Request

if TYPE_CHECKING:
    from .engine import LLMEngine

HOOKS = ("on_step", "on_idle", "on_close", "on_token", "on_finish", "on_reject", "on_abort")


class EngineObserver:
    """Base of engine observers: every hook does nothing (see the module docstring)."""

    wants_tokens: ClassVar[bool] = False

    def on_step(self, output, start_s: float, end_s: float) -> None: ...

    def on_idle(self, start_s: float, end_s: float) -> None: ...

    def on_close(self, end_s: float) -> None: ...

    def on_token(self, request: Request, now: float) -> None: ...

    def on_finish(self, request: Request, now: float) -> None: ...

    def on_reject(self, request: Request, now: float, reason: str) -> None: ...

    def on_abort(self, request: Request, now: float) -> None: ...


def bound_hooks(observer: object, name: str) -> list[Callable]:
    """``[observer.name]`` if the observer defines that hook itself, else ``[]``."""
    if isinstance(observer, CallbackObserver):
        fn = observer.callbacks.get(name)
        return [fn] if fn is not None else []
    own = getattr(type(observer), name, None)
    if own is None or own is getattr(EngineObserver, name):
        return []
    return [getattr(observer, name)]


class RecordsObserver(EngineObserver):
    """Fills the per-request records (:class:`RequestRecords`) as requests end, whatever the outcome."""

    def __init__(self, records: RequestRecords) -> None:
        self.records = records

    def on_finish(self, request: Request, now: float) -> None:
        self.records.record(request)

    def on_reject(self, request: Request, now: float, reason: str) -> None:
        self.records.record(request)

    def on_abort(self, request: Request, now: float) -> None:
        self.records.record(request)


class ProgressObserver(EngineObserver):
    """Calls ``advance(1)`` per finished request (a progress bar's ``update``)."""

    def __init__(self, advance: Callable[[int], None]) -> None:
        self.advance = advance

    def on_finish(self, request: Request, now: float) -> None:
        self.advance(1)


class TimeSeriesObserver(EngineObserver):
    """Samples the engine's state into a :class:`TimeSeries` as a Prometheus scrape would: each
    sample sees the state left by the last step that was scheduled before it (inside a bulk
    decode run: the state after the steps completed so far and the blocks of the next one).

    The engine's own sampler (``sample_interval_s``): the loop calls its ``on_step`` only when a
    sample falls due (``series.next_t < end_s``), since a call per step would cost more than the
    check."""

    def __init__(self, engine: LLMEngine, series: TimeSeries) -> None:
        self.engine, self.series = engine, series

    def on_step(self, output, start_s: float, end_s: float) -> None:
        series = self.series
        if not series.next_t < end_s:
            return
        if type(output) is not DecodeRun:
            series.sample_before(end_s, self.engine.state())
            return
        ends, g0, s, kv = output.ends, output.first_step, self.engine.scheduler, self.engine.kv
        buckets, bs = s.batch.buckets, s.batch.block_size
        num_blocks, j = kv.block_pool.num_blocks, 0
        used, counted = 0, 0  # blocks handed out by the first ``counted`` steps of the run
        while series.next_t < end_s:
            while ends[j] <= series.next_t:
                j += 1
            while counted <= j:
                used += len(buckets[-(g0 + counted) % bs])
                counted += 1
            series.sample_next((s.num_running, s.num_waiting, 1.0 - (output.free_blocks_before - used) / num_blocks,
                                s.num_preemptions, s.prompt_tokens_total,
                                output.generation_tokens_before + output.num_seqs * j))

    def on_idle(self, start_s: float, end_s: float) -> None:
        self.series.sample_before(end_s, self.engine.state())

    def on_close(self, end_s: float) -> None:
        self.series.close(end_s, self.engine.state())


class CallbackObserver(EngineObserver):
    """Plain functions as hooks: ``CallbackObserver(on_token=f, on_finish=g)`` (names in :data:`HOOKS`)."""

    def __init__(self, wants_tokens: bool | None = None, **callbacks: Callable | None) -> None:
        unknown = set(callbacks) - set(HOOKS)
        if unknown:
            raise TypeError(f"unknown engine hooks {sorted(unknown)} (known: {', '.join(HOOKS)})")
        self.callbacks = {k: v for k, v in callbacks.items() if v is not None}
        self.wants_tokens = "on_token" in self.callbacks if wants_tokens is None else wants_tokens  # type: ignore[misc]


__all__ = ["HOOKS", "CallbackObserver", "EngineObserver", "ProgressObserver", "RecordsObserver",
           "TimeSeriesObserver", "bound_hooks"]
