"""A measured run as servesim compares it: the workload that replays it and its bench summary.

Whatever the source (a ``vllm bench serve --save-result`` file, a load point of a ``servesim
measure`` run directory), the measured requests are first written in the per-request schema
(:class:`~servesim.sim.metrics.RequestColumns`, ``docs/outputs.md``) and then reduced by the same
:func:`~servesim.sim.metrics.summarize` a simulated run goes through, so measured and simulated
summaries differ only where the runs do.

:func:`bench_requests` is that first step for a ``vllm bench serve`` result with per-request
arrays (``--save-detailed``: ``input_lens``, ``output_lens``, and where present ``ttfts``,
``itls``, ``start_times``, ``errors``).  Both :mod:`.validate` and :mod:`.probe_run` build on this
module, which imports neither.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..sim.metrics import ABORTED, FINISHED, InterTokenLatencies, RequestColumns, itl_from_gaps
from ..sim.workload import ClosedLoop, Workload


@dataclass
class MeasuredRun:
    """What was measured (``summary``: bench keys), and the workload that reproduces it."""

    name: str
    workload: Workload | ClosedLoop
    summary: dict[str, float]
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _per_request(data: dict[str, Any], key: str, n: int) -> list | None:
    values = data.get(key)
    return values if isinstance(values, list) and len(values) == n else None


def bench_requests(data: dict[str, Any]) -> tuple[RequestColumns, InterTokenLatencies | None] | None:
    """The requests of a ``vllm bench serve`` result in the per-request schema, with their
    inter-token gaps (None when the file has no ``itls``); None for a summary-only file.

    A request succeeded when it produced output tokens and, where ``errors`` is recorded, no error
    (vLLM 0.27 writes ``output_lens`` 0 for a failed request; older clients counted such requests
    as completed with TTFT 0).  Arrivals are ``start_times`` less the first one, or 0 when the file
    has none (the bench's ``duration`` is then the only clock: pass it to ``summarize``); first
    token at arrival + ``ttfts``, finish at first token + the sum of ``itls`` (vLLM's latency);
    either is NaN when the file lacks the array."""
    inputs, outputs = data.get("input_lens"), data.get("output_lens")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        return None
    n = len(inputs)
    n_out = np.asarray(outputs, dtype=np.int64)
    ok = n_out > 0
    errors = _per_request(data, "errors", n)
    if errors is not None:
        ok &= np.array([not e for e in errors], dtype=bool)
    starts = _per_request(data, "start_times", n)
    arrival = np.asarray(starts, dtype=np.float64) - min(starts) if starts else np.zeros(n)
    ttfts = _per_request(data, "ttfts", n)
    first = arrival + np.asarray(ttfts, dtype=np.float64) if ttfts is not None else np.full(n, np.nan)
    itls = _per_request(data, "itls", n)
    finish = first + np.array([sum(gaps) for gaps in itls]) if itls is not None else np.full(n, np.nan)
    status = np.where(ok, FINISHED, ABORTED).astype(np.int8)
    columns = RequestColumns(arrival, np.where(ok, first, np.nan), np.where(ok, finish, np.nan),
                             np.asarray(inputs, dtype=np.int64), np.where(ok, n_out, 0), status)
    gaps = itl_from_gaps(g for g, good in zip(itls, ok) if good) if itls is not None else None
    return columns, gaps
