"""``servesim validate``: simulate exactly a measured workload and compare, metric by metric.

A measured run is either a ``vllm bench serve --save-result`` JSON (per-request ``input_lens`` and
``output_lens``; request rate, burstiness and ``max_concurrency`` from the file unless given) or a
probe run directory written by ``servesim measure`` (``requests.jsonl``: send times and exact
lengths of every request).  The simulated run replays the same lengths (and, for a run directory,
the same send times) on the configuration given, and the table shows measured and simulated
duration, throughputs and TTFT/TPOT/ITL/E2E mean, median and p99 with relative errors.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..sim.metrics import summarize
from ..sim.runner import SimOptions, SimResult, simulate
from ..sim.traces import load_bench_json
from ..sim.workload import ClosedLoop, ThinkTimeDist, Workload
from .measured_run import MeasuredRun, bench_requests
from .probe_run import load_probe_run

THROUGHPUT_KEYS = ("duration", "completed", "request_throughput", "output_throughput", "total_token_throughput")
LATENCY_KEYS = tuple(f"{stat}_{metric}_ms" for metric in ("ttft", "tpot", "itl", "e2el")
                     for stat in ("mean", "median", "p99"))
COMPARED_KEYS = THROUGHPUT_KEYS + LATENCY_KEYS


def load_bench_result(path: str | Path, rate: float | None = None, burstiness: float | None = None,
                      max_concurrency: int | None = None, seed: int = 0) -> MeasuredRun:
    """A ``vllm bench serve --save-result`` JSON as a :class:`MeasuredRun`."""
    path = Path(path)
    workload: Workload | ClosedLoop = load_bench_json(path, rate=rate, burstiness=burstiness, seed=seed)
    data = json.loads(path.read_text(encoding="utf-8"))
    summary = {k: float(data[k]) for k in COMPARED_KEYS if isinstance(data.get(k), (int, float))}
    # What the per-request arrays determine is summarized as a simulated run is (failed requests
    # out, the bench's own duration); the file's aggregates stand for the rest.
    requests = bench_requests(data)
    if requests is not None:
        duration = summary.get("duration")
        measured = summarize(*requests, duration_s=duration)
        summary.update({k: float(measured[k]) for k in COMPARED_KEYS if k in measured})
    notes = []
    concurrency = max_concurrency if max_concurrency is not None else data.get("max_concurrency")
    req_rate = float(data.get("request_rate", math.inf) if rate is None else rate)
    if concurrency:
        if math.isinf(req_rate):
            workload = ClosedLoop(int(concurrency), workload.input_tokens, workload.output_tokens, 0.0,
                                  ThinkTimeDist.FIXED, seed, workload.name)
            notes.append(f"max_concurrency={concurrency} with rate inf: replayed as a closed loop of "
                         f"{concurrency} users without think time")
        else:
            notes.append(f"max_concurrency={concurrency} with a finite rate is not reproduced: open-loop arrivals")
    settings = {k: data.get(k) for k in ("model_id", "backend", "request_rate", "burstiness", "max_concurrency",
                                         "num_prompts", "date") if k in data}
    return MeasuredRun(path.stem, workload, summary, settings, notes)


def load_measured(path: str | Path, point: str | None = None, **options) -> list[MeasuredRun]:
    """A bench JSON file (one run) or a ``servesim measure`` run directory (one run per load point)."""
    path = Path(path)
    if path.is_dir():
        return load_probe_run(path, point)
    if not path.exists():
        raise ValueError(f"measured run {path} not found (a vllm bench --save-result JSON or a run directory)")
    return [load_bench_result(path, **options)]


@dataclass(frozen=True)
class ComparisonRow:
    metric: str
    measured: float
    simulated: float

    @property
    def rel_error(self) -> float:
        if self.measured == 0 or not math.isfinite(self.measured):
            return math.nan
        return (self.simulated - self.measured) / self.measured


def compare(measured: dict[str, float], simulated: dict[str, float]) -> list[ComparisonRow]:
    return [ComparisonRow(k, float(measured[k]), float(simulated[k]))
            for k in COMPARED_KEYS if k in measured and k in simulated]


def validate(run: MeasuredRun, cfg, seed: int = 0) -> tuple[list[ComparisonRow], SimResult]:
    result = simulate(cfg, run.workload, SimOptions(seed=seed))
    return compare(run.summary, result.summary), result


def format_table(rows: list[ComparisonRow]) -> str:
    lines = [f"{'metric':<26}{'measured':>14}{'simulated':>14}{'rel. error':>12}"]
    for r in rows:
        err = "" if math.isnan(r.rel_error) else f"{r.rel_error:+.1%}"
        lines.append(f"{r.metric:<26}{r.measured:>14.2f}{r.simulated:>14.2f}{err:>12}")
    errors = [abs(r.rel_error) for r in rows if not math.isnan(r.rel_error) and r.metric != "completed"]
    if errors:
        lines.append(f"{'median |rel. error|':<54}{np.median(errors):>12.1%}")
    return "\n".join(lines)
