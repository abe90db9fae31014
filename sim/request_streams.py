"""The request streams a simulation consumes, as numpy arrays: open loop and closed loop.

A :class:`Workload` is an open-loop request stream (arrival time, prompt length, output length,
optional prefix-block ids) held as three parallel numpy arrays, so a million requests cost ~24 MB
rather than a million Python objects.  A :class:`ClosedLoop` is the closed-loop alternative: a
fixed number of users, each issuing its next request a think time after its previous one finished.
:func:`spawn_streams` gives one seeded random generator per source of randomness.

Built from a :class:`~servesim.sim.workload.WorkloadSpec` by
:func:`~servesim.sim.workload.build_workload`, or read from files by :mod:`servesim.sim.traces`;
both import this module, which imports neither.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

import numpy as np

from .clients import ClientModel
from .lengths import _enum

# ----------------------------------------------------------------------------------- containers


def _as_length_array(field: str, values: object) -> np.ndarray:
    """``values`` as a read-only 1-D int64 copy; raises ``ValueError`` unless all are ints >= 1."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{field} must be a 1-D array, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if arr.size and not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise ValueError(f"{field} must hold whole numbers of tokens, got non-integral floats")
    elif arr.dtype.kind not in "iu" and arr.size:
        raise ValueError(f"{field} must be integer token counts, got dtype {arr.dtype}")
    out = arr.astype(np.int64, copy=True)
    if out.size and out.min() < 1:
        i = int(np.argmin(out))
        raise ValueError(f"{field} must be >= 1 token, got {out[i]} at index {i}")
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Workload:
    """An open-loop request stream; request ``i`` arrives at ``arrival_s[i]``.

    Invariants (checked at construction, arrays copied and made read-only):
    ``arrival_s`` is float64, finite, >= 0 and sorted non-decreasing; ``input_tokens`` and
    ``output_tokens`` are int64 >= 1; all three have the same length ``n``.  ``prefix_hashes``,
    when given, has ``n`` entries: the ids of the request's ``prefix_block_tokens``-token prompt
    blocks (Mooncake ``hash_ids``); equal leading ids mean a shared prompt prefix.
    ``num_clamped_outputs`` counts requests whose recorded output length was 0 and was raised to
    1 by the loader (a request that generates nothing still runs one decode step).
    """

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    name: str = "workload"
    prefix_hashes: list[tuple[int, ...]] | None = None
    prefix_block_tokens: int = 512
    num_clamped_outputs: int = 0

    def __post_init__(self) -> None:
        arrivals = np.array(self.arrival_s, dtype=np.float64)
        if arrivals.ndim != 1:
            raise ValueError(f"arrival_s must be a 1-D array, got shape {arrivals.shape}")
        if arrivals.size:
            finite = np.isfinite(arrivals)
            if not finite.all():
                raise ValueError(f"arrival_s must be finite; index {int(np.argmin(finite))} is not")
            if arrivals[0] < 0:
                raise ValueError(f"arrival_s must start at >= 0 s, got {arrivals[0]}")
            back = np.flatnonzero(np.diff(arrivals) < 0)
            if back.size:
                i = int(back[0]) + 1
                raise ValueError(f"arrival_s must be sorted non-decreasing; index {i} ({arrivals[i]}) "
                                 f"is before index {i - 1} ({arrivals[i - 1]})")
        arrivals.setflags(write=False)
        object.__setattr__(self, "arrival_s", arrivals)
        inputs = _as_length_array("input_tokens", self.input_tokens)
        outputs = _as_length_array("output_tokens", self.output_tokens)
        object.__setattr__(self, "input_tokens", inputs)
        object.__setattr__(self, "output_tokens", outputs)
        n = arrivals.size
        if inputs.size != n or outputs.size != n:
            raise ValueError(f"arrival_s, input_tokens, output_tokens must have equal lengths, got "
                             f"{n}, {inputs.size}, {outputs.size}")
        if self.prefix_hashes is not None and len(self.prefix_hashes) != n:
            raise ValueError(f"prefix_hashes must have one entry per request ({n}), "
                             f"got {len(self.prefix_hashes)}")
        if self.prefix_block_tokens < 1:
            raise ValueError(f"prefix_block_tokens must be >= 1, got {self.prefix_block_tokens}")
        if not 0 <= self.num_clamped_outputs <= n:
            raise ValueError(f"num_clamped_outputs must be in [0, {n}], got {self.num_clamped_outputs}")

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @property
    def duration_s(self) -> float:
        """Time from the first to the last arrival (0 for fewer than two requests)."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) > 1 else 0.0

    @property
    def mean_rate(self) -> float:
        """Mean arrival rate in requests/s, ``(n - 1) / duration_s``; ``inf`` for a burst."""
        return (len(self) - 1) / self.duration_s if self.duration_s > 0 else math.inf


# -------------------------------------------------------------------------------- random streams


class Streams(NamedTuple):
    """One independent generator per source of randomness, from ``SeedSequence(seed).spawn(3)``."""

    arrivals: np.random.Generator
    lengths: np.random.Generator
    think_time: np.random.Generator


def spawn_streams(seed: int) -> Streams:
    """The three streams of ``seed``; the same seed always yields the same three sequences."""
    children = np.random.SeedSequence(seed).spawn(len(Streams._fields))
    return Streams(*(np.random.default_rng(c) for c in children))


# ----------------------------------------------------------------------------------- closed loop


class ThinkTimeDist(str, Enum):
    """How a closed-loop user's think time is drawn around its mean ``think_time_s``."""

    EXPONENTIAL = "exponential"
    FIXED = "fixed"


@dataclass(frozen=True, eq=False)
class ClosedLoop:
    """Closed-loop load: ``num_users`` users, each with at most one request outstanding.

    Contract with the engine: request ``i`` has ``input_tokens[i]`` / ``output_tokens[i]``.
    Requests ``0 .. min(num_users, n) - 1`` are issued at t = 0, one per user.  Indices from
    ``num_users`` on are handed out in the order requests finish: the user whose request finished
    sends the next index ``i`` at (that finish time + ``think_times(n)[i]``); entries
    ``i < num_users`` of :meth:`think_times` are drawn but unused, so the think time of request
    ``i`` does not depend on ``num_users``.  Ties in finish time are the engine's to break
    deterministically.

    ``client`` (:mod:`servesim.sim.clients`) adds what a real benchmark client does: request ``i``
    reaches the engine ``client.overheads()[i]`` after it is sent (its recorded arrival is the send
    time, so TTFT is the client's), the users' first requests are spread over ``ramp_up_s``, and
    the first ``num_warmup_requests`` requests are warm-up (not counted; with
    ``drain_after_warmup`` the counted ones start only once every warm-up request has returned).
    The default client is the ideal one, for which the contract above holds exactly.
    """

    num_users: int
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    think_time_s: float = 0.0
    think_time_dist: ThinkTimeDist = ThinkTimeDist.EXPONENTIAL
    seed: int = 0
    name: str = "closed_loop"
    client: ClientModel = ClientModel()

    def __post_init__(self) -> None:
        if self.num_users < 1:
            raise ValueError(f"num_users must be >= 1, got {self.num_users}")
        if not (self.think_time_s >= 0 and math.isfinite(self.think_time_s)):
            raise ValueError(f"think_time_s must be a finite mean >= 0 s, got {self.think_time_s}")
        dist = _enum(ThinkTimeDist, self.think_time_dist, "think_time_dist")
        object.__setattr__(self, "think_time_dist", dist)
        inputs = _as_length_array("input_tokens", self.input_tokens)
        outputs = _as_length_array("output_tokens", self.output_tokens)
        if inputs.size != outputs.size:
            raise ValueError(f"input_tokens and output_tokens must have equal lengths, got "
                             f"{inputs.size}, {outputs.size}")
        object.__setattr__(self, "input_tokens", inputs)
        object.__setattr__(self, "output_tokens", outputs)
        if not isinstance(self.client, ClientModel):
            raise ValueError(f"client must be a ClientModel, got {type(self.client).__name__}")

    def __len__(self) -> int:
        return int(self.input_tokens.size)

    @property
    def num_warmup_requests(self) -> int:
        """Requests ``0 .. num_warmup_requests - 1`` are the client's warm-up, not counted."""
        return min(self.client.num_warmup_requests, len(self))

    def think_times(self, n: int | None = None) -> np.ndarray:
        """The first ``n`` (default: one per request) think times in seconds, float64.

        Drawn from the think-time stream of ``spawn_streams(seed)``; a prefix of a longer draw
        equals the shorter draw, and the result never depends on the lengths or ``num_users``.
        """
        n = len(self) if n is None else n
        if self.think_time_s == 0 or self.think_time_dist is ThinkTimeDist.FIXED:
            return np.full(n, float(self.think_time_s))
        return spawn_streams(self.seed).think_time.exponential(self.think_time_s, size=n)


__all__ = ["ClosedLoop", "Streams", "ThinkTimeDist", "Workload", "spawn_streams"]
