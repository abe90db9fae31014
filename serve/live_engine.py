"""The simulated replica in (scaled) real time: the engine ``servesim simulate`` runs, fed live.

``servesim serve`` drives the same :class:`~servesim.sim.engine.LLMEngine` as ``servesim
simulate`` (same scheduler, KV cache and step-cost model); only the source and the clock differ.

* :class:`LiveSource` is a request source (``next_time``, ``pop_until``, ``on_finish``,
  ``__len__``) with ``live = True``: when it has nothing pending the engine does not end but
  ``yield source.wait(env)``, an event :meth:`LiveSource.push` triggers.
* Time: simulated time is wall time since start times the speed ``K``:
  ``sim_now = (loop.time() - t0) * K``.  :meth:`LiveEngine.run` is an asyncio task that steps
  SimPy through every event due by ``sim_now``, then sleeps until the wall time of the next SimPy event (or until a
  request is pushed).  So the engine never runs ahead of the clock: a token due at simulated time
  ``t`` is handed to its HTTP stream at wall time ``t0 + t / K`` or a little later (asyncio timer
  granularity, about 1 ms of wall time, i.e. ``K`` ms simulated).  A request's arrival is
  ``sim_now`` when its HTTP request is accepted; like vLLM, the engine sees it between steps.
* Tokens, finishes, rejections and aborts leave through an engine observer
  (:mod:`servesim.sim.observers`; the outcome is the request's status).

Every per-request structure is dropped when the request finishes, and the engine's inter-token
latency store is replaced by a no-op one, so a long-lived server keeps bounded memory.
"""
from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import simpy

from ..sim.config import EngineConfig
from ..sim.engine import LLMEngine
from ..sim.observers import EngineObserver
from ..sim.request import Request, RequestStatus


class LiveSource:
    """Requests pushed by the HTTP server, in arrival order (arrivals are non-decreasing)."""

    live = True
    has_prefix_hashes = False

    def __init__(self) -> None:
        self.pending: collections.deque[Request] = collections.deque()
        self.num_pushed = 0
        self._event: simpy.Event | None = None

    def __len__(self) -> int:
        return self.num_pushed

    def next_time(self) -> float | None:
        return self.pending[0].arrival_time if self.pending else None

    def pop_until(self, now: float) -> list[Request]:
        out = []
        while self.pending and self.pending[0].arrival_time <= now:
            out.append(self.pending.popleft())
        return out

    def on_finish(self, request: Request, now: float) -> None:
        pass

    def wait(self, env: simpy.Environment) -> simpy.Event:
        """The event the idle engine sleeps on; :meth:`push` triggers it."""
        if self._event is None or self._event.triggered:
            self._event = env.event()
        return self._event

    def push(self, request: Request) -> None:
        self.pending.append(request)
        self.num_pushed += 1
        if self._event is not None and not self._event.triggered:
            self._event.succeed()


@dataclass
class Stream:
    """What the HTTP side sees of one request: token times (simulated s) and the end.

    ``eos_tokens``: the output length at which the request stops as if the model emitted its
    end-of-sequence token (``finish_reason`` ``stop``); None when it runs to ``max_tokens``."""

    request: Request
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    token_times: list[float] = field(default_factory=list)
    rejected: bool = False
    aborted: bool = False
    eos_tokens: int | None = None


class _Ends(EngineObserver):
    """The engine's tokens and request ends, handed to the live engine's streams."""

    wants_tokens = True

    def __init__(self, live: LiveEngine) -> None:
        self.live = live

    def on_token(self, request: Request, now: float) -> None:
        self.live._on_token(request, now)

    def on_finish(self, request: Request, now: float) -> None:
        self.live._on_end(request)

    def on_reject(self, request: Request, now: float, reason: str) -> None:
        self.live._on_end(request)

    def on_abort(self, request: Request, now: float) -> None:
        self.live._on_end(request)


class LiveEngine:
    """Owns the SimPy environment and engine; maps requests to their HTTP streams."""

    def __init__(self, cfg: EngineConfig, speed: float,
                 on_first_token: Callable[[Request, float], None] | None = None,
                 on_token_gap: Callable[[float], None] | None = None,
                 on_finish: Callable[[Request, float, str], None] | None = None) -> None:
        if not speed > 0 or math.isinf(speed):
            raise ValueError(f"--speed must be a positive finite factor (got {speed})")
        self.cfg, self.speed = cfg, speed
        self.env = simpy.Environment()
        self.source = LiveSource()
        # No records or time series: /metrics reads the live state, and memory must stay bounded.
        self.engine = LLMEngine(self.env, cfg, self.source, None, sample_interval_s=None,
                                observers=[_Ends(self)], record_itl=False)
        self.streams: dict[int, Stream] = {}
        self.on_first_token, self.on_token_gap, self.on_finish = on_first_token, on_token_gap, on_finish
        self.on_abort: Callable[[Request], None] | None = None
        self._next_id = 0
        self._wake = asyncio.Event()
        self._t0: float | None = None

    # ----- clock ---------------------------------------------------------------------------
    def sim_now(self) -> float:
        loop = asyncio.get_running_loop()
        if self._t0 is None:
            self._t0 = loop.time()
        return (loop.time() - self._t0) * self.speed

    async def run(self) -> None:
        """Advance the simulation with the wall clock until cancelled."""
        self.sim_now()
        while True:
            target = self.sim_now()
            env = self.env
            while env.peek() <= target:  # not env.run(until=...): it leaves a stale stop event behind
                env.step()
            nxt = env.peek()
            self._wake.clear()
            if nxt == math.inf:
                await self._wake.wait()
                continue
            delay = (nxt - self.sim_now()) / self.speed
            if delay <= 0:
                await asyncio.sleep(0)  # let the HTTP side write the tokens just produced
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass

    # ----- requests ------------------------------------------------------------------------
    def submit(self, prompt_tokens: int, max_tokens: int, eos_tokens: int | None = None) -> Stream:
        """Queue a request arriving now; its tokens appear on ``stream.queue`` as simulated times,
        then ``None`` at the end.  With ``eos_tokens`` the request ends after that many tokens (an
        EOS the model produced), which the engine sees as its ``max_tokens``."""
        if eos_tokens is not None and eos_tokens < max_tokens:
            max_tokens = eos_tokens
        else:
            eos_tokens = None
        request = Request(self._next_id, self.sim_now(), prompt_tokens, max_tokens)
        self._next_id += 1
        stream = Stream(request, eos_tokens=eos_tokens)
        self.streams[request.request_id] = stream
        self.source.push(request)
        self._wake.set()
        return stream

    def _on_token(self, request: Request, now: float) -> None:
        stream = self.streams.get(request.request_id)
        if stream is None:
            return
        if stream.token_times:
            if self.on_token_gap is not None:
                self.on_token_gap(now - stream.token_times[-1])
        elif self.on_first_token is not None:
            self.on_first_token(request, now)
        stream.token_times.append(now)
        stream.queue.put_nowait(now)

    def abort(self, request_id: int) -> bool:
        """Abort a request whose client went away, as vLLM's ``AsyncLLM.abort``: one not yet taken
        in by the engine is dropped, a waiting or running one is removed from the scheduler and
        its KV blocks freed.  Returns ``False`` if it had already ended."""
        stream = self.streams.get(request_id)
        if stream is None:
            return False
        pending = self.source.pending
        for i, request in enumerate(pending):
            if request.request_id == request_id:
                del pending[i]
                request.status = RequestStatus.FINISHED_ABORTED
                self._on_end(request)
                return True
        aborted = self.engine.abort(request_id)
        self._wake.set()
        return aborted

    def _on_end(self, request: Request) -> None:
        """The request ended; its outcome is its status."""
        stream = self.streams.pop(request.request_id, None)
        if stream is None:
            return
        status = request.status
        stream.rejected = status is RequestStatus.FINISHED_REJECTED
        stream.aborted = status is RequestStatus.FINISHED_ABORTED
        if stream.aborted and self.on_abort is not None:
            self.on_abort(request)
        if status is RequestStatus.FINISHED and self.on_finish is not None:
            self.on_finish(request, stream.token_times[-1] if stream.token_times else self.env.now,
                           "stop" if stream.eos_tokens is not None else "length")
        stream.queue.put_nowait(None)

    # ----- state for /metrics --------------------------------------------------------------
    @property
    def num_cpu_blocks(self) -> int:
        """vLLM v0's CPU swap blocks (``swap_space`` over the block size); v1 has none."""
        return int(getattr(self.engine.scheduler, "num_cpu_blocks", 0))

    def state(self) -> dict:
        s, kv = self.engine.scheduler, self.engine.kv
        # Usage as vLLM reports it: v1's null block is not a block a request can hold, so an idle
        # server reads 0, not 1/num_gpu_blocks.
        usable = kv.block_pool.num_blocks - (1 if kv.null_block is not None else 0)
        usage = 1.0 - kv.num_free_blocks / usable if usable > 0 else 0.0
        swapped = sum(getattr(s, "swapped_blocks", {}).values())
        return {"running": s.num_running, "waiting": s.num_waiting, "swapped": getattr(s, "num_swapped", 0),
                "kv_usage": usage, "cpu_usage": swapped / self.num_cpu_blocks if self.num_cpu_blocks else 0.0,
                "preemptions": s.num_preemptions, "prompt_tokens": s.prompt_tokens_total,
                "generation_tokens": s.generation_tokens_total, "num_gpu_blocks": self.engine.memory.num_gpu_blocks,
                "sim_time_s": self.env.now}
