"""Closed-loop load generators as the real benchmark clients behave (docs/clients.md).

A :class:`ClientModel` says how a closed-loop user issues its requests and which ones the client
counts, in the terms of the tools that produced public measurements:

* ``vllm bench serve --max-concurrency N --request-rate inf`` (``vllm/benchmarks/serve.py``): every
  prompt is an asyncio task behind ``asyncio.Semaphore(N)``; the first N start at once, each
  completion releases the semaphore to the next task; TTFT runs from ``time.perf_counter()`` just
  before the HTTP POST to the first streamed chunk; ``--num-warmups`` (default 0) runs before the
  timed run and is not counted;
* aiperf / genai-perf ``--concurrency N``: a warm-up phase (``--warmup-request-count``) and a
  profiling phase; phases are not *seamless* by default (aiperf ``CreditPhaseConfig.seamless``), so
  profiling starts only after every warm-up request has returned, with N requests at once
  (``ConcurrencyBurstIntervalGenerator``); only profiling requests are counted;
  ``--concurrency-ramp`` spreads the start of the N users;
* GuideLLM ``--rate-type concurrent``: N synchronous streams started together, no warm-up by
  default.

What makes equal-length requests leave lock-step on a real server is the time between a user
deciding to send and the engine seeing the request: the client's event loop and HTTP stack, the API
server's chat template and tokenisation (which grows with the prompt), and back again for the first
token.  It is modelled per request as a serial part, ``per_prompt_token_s * prompt_tokens`` on
the API server (one event loop: requests sent together leave it one after another), then a
parallel part, ``request_overhead_s + Exponential(jitter_s)``: the engine receives the request
that much after the user sent it, and the client's TTFT and end-to-end latency include it.  ``ideal`` (all zero, no warm-up) is the
simulator's historical closed loop, kept as the default so existing results do not move.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

import numpy as np

from .lengths import _enum


class ClientKind(str, Enum):
    """Which real client a :class:`ClientModel` imitates."""

    IDEAL = "ideal"            # zero overhead, no warm-up: requests enter the engine the instant a user sends
    VLLM_BENCH = "vllm-bench"  # vllm bench serve --max-concurrency N --request-rate inf
    AIPERF = "aiperf"          # aiperf / genai-perf --concurrency N (warm-up, then a drained profiling phase)
    GUIDELLM = "guidellm"      # guidellm --rate-type concurrent --rate N


@dataclass(frozen=True)
class ClientModel:
    """How closed-loop users send requests and which of them the client measures.

    Invariants: all times are finite and >= 0 s; ``num_warmup_requests >= 0``.  With every field
    zero/False the closed loop is exactly the ideal one (no randomness is drawn).
    """

    kind: ClientKind = ClientKind.IDEAL
    request_overhead_s: float = 0.0    # fixed time from send to engine arrival (+ first chunk back), per request
    per_prompt_token_s: float = 0.0    # API-server time per prompt token, serial across requests (tokenisation)
    jitter_s: float = 0.0              # mean of an exponential extra delay per request (client loop, network)
    ramp_up_s: float = 0.0             # the users' first requests are spread evenly over this window
    num_warmup_requests: int = 0       # sent first, not counted in the summary
    drain_after_warmup: bool = False   # counted requests start only when every warm-up request returned

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _enum(ClientKind, self.kind, "client kind"))
        for name in ("request_overhead_s", "per_prompt_token_s", "jitter_s", "ramp_up_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"client {name} must be a finite time >= 0 s, got {value}")
        if self.num_warmup_requests < 0:
            raise ValueError(f"client num_warmup_requests must be >= 0, got {self.num_warmup_requests}")

    @property
    def is_ideal(self) -> bool:
        """True when requests reach the engine the instant they are sent (no overhead, no ramp)."""
        return (self.request_overhead_s == 0 and self.per_prompt_token_s == 0 and self.jitter_s == 0
                and self.ramp_up_s == 0)

    def latencies(self, n: int, seed: int) -> np.ndarray:
        """The parallel part of each of ``n`` requests' path, ``request_overhead_s +
        Exponential(jitter_s)`` s (float64); the random part comes from the client's own stream of
        ``seed``, so it never depends on lengths drawn elsewhere, and a prefix of a longer draw
        equals the shorter."""
        if self.jitter_s == 0 or n == 0:
            return np.full(n, float(self.request_overhead_s))
        return self.request_overhead_s + client_stream(seed).exponential(self.jitter_s, size=n)


def client_stream(seed: int) -> np.random.Generator:
    """The client-jitter stream of ``seed``: child 3 of ``SeedSequence(seed).spawn(4)``, independent
    of the arrival, length and think-time streams (children 0-2, :func:`~servesim.sim.workload.spawn_streams`)."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(4)[3])


# Documented defaults per client (docs/clients.md).  The overhead priors are typical loopback
# figures: aiohttp/httpx request set-up and SSE parsing ~1 ms, vLLM's OpenAI front end (FastAPI,
# chat template, detokenised first chunk) ~2 ms, HF fast tokenisers ~1 us per prompt token; the
# jitter is the spread of those.  A deployment's own values come from calibration
# (servesim.calibrate.silicon fits them on the silicon rows).
PRESETS: dict[ClientKind, ClientModel] = {
    ClientKind.IDEAL: ClientModel(ClientKind.IDEAL),
    ClientKind.VLLM_BENCH: ClientModel(ClientKind.VLLM_BENCH, request_overhead_s=3e-3, per_prompt_token_s=1e-6,
                                       jitter_s=2e-3),
    ClientKind.AIPERF: ClientModel(ClientKind.AIPERF, request_overhead_s=3e-3, per_prompt_token_s=1e-6,
                                   jitter_s=2e-3, drain_after_warmup=True),
    ClientKind.GUIDELLM: ClientModel(ClientKind.GUIDELLM, request_overhead_s=3e-3, per_prompt_token_s=1e-6,
                                     jitter_s=2e-3),
}


def client_preset(kind: str | ClientKind, **overrides) -> ClientModel:
    """The documented default of ``kind`` with ``overrides`` (ClientModel field names) applied;
    ``None`` values are ignored, so CLI flags left unset keep the preset."""
    base = PRESETS[_enum(ClientKind, kind, "client kind")]
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
