"""Run one simulation end to end and write its results.

``simulate(cfg, workload, options)`` builds a SimPy environment with one :class:`LLMEngine`,
runs it until every request is finished or rejected, and returns a :class:`SimResult` carrying the
summary, per-request records, time series and the resolved configuration.  ``write_results``
writes them in the documented schemas (``docs/outputs.md``), each file atomically.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import simpy

from .config import EngineConfig
from .engine import LLMEngine
from .memory import MemoryBreakdown
from .metrics import RequestRecords, TimeSeries, summarize
from .observers import ProgressObserver
from .sources import ClosedLoopSource, OpenLoopSource


@dataclass(frozen=True)
class SimOptions:
    """How to run (not what to simulate)."""

    sample_interval_s: float = 0.2
    exact: bool = False        # per-request reference path for every step (slow; for checking)
    progress: bool = False     # tqdm bar on stderr
    seed: int = 0              # recorded with the result; the workload was built from it


@dataclass
class SimResult:
    summary: dict
    records: RequestRecords
    series: TimeSeries
    config: dict
    memory: MemoryBreakdown
    wall_s: float
    num_steps: int
    rejection_reason: str = ""  # why the first rejected request was refused ("" when none was)


def make_source(workload, cfg: EngineConfig):
    caching = cfg.cache.enable_prefix_caching
    if hasattr(workload, "num_users"):
        return ClosedLoopSource(workload, cfg.cache.block_size, caching)
    return OpenLoopSource(workload, cfg.cache.block_size, caching)


def simulate(cfg: EngineConfig, workload, options: SimOptions = SimOptions()) -> SimResult:
    """Simulate ``workload`` on the replica ``cfg`` (raises ``ValueError`` if it cannot run)."""
    source = make_source(workload, cfg)
    records = RequestRecords(len(source))
    env = simpy.Environment()
    bar = None
    if options.progress:
        from tqdm import tqdm
        bar = tqdm(total=len(source), unit="req", desc="simulating", file=sys.stderr, mininterval=0.5)
    t0 = time.perf_counter()
    engine = LLMEngine(env, cfg, source, records, options.sample_interval_s, options.exact,
                       observers=[ProgressObserver(bar.update)] if bar is not None else ())
    env.run()
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    summary = summarize(records, engine.itl, first_counted=getattr(workload, "num_warmup_requests", 0))
    tp = cfg.parallel.tensor_parallel_size
    duration = summary["duration"]
    power = cfg.profile.power
    decode_busy = engine.busy_s - engine.prefill_busy_s
    idle = max(duration - engine.busy_s, 0.0)
    energy = tp * (power.idle_w * idle + power.prefill_w * engine.prefill_busy_s + power.decode_w * decode_busy)
    summary.update({
        "kv_capacity_tokens": engine.memory.kv_capacity_tokens,
        "num_gpu_blocks": engine.memory.num_gpu_blocks,
        "num_preemptions": engine.scheduler.num_preemptions,
        "peak_kv_usage": engine.peak_kv_usage,
        "mean_num_running": engine.running_integral / duration if duration > 0 else 0.0,
        "num_steps": engine.num_steps,
        "busy_fraction": engine.busy_s / duration if duration > 0 else 0.0,
        "prefill_fraction": engine.prefill_busy_s / duration if duration > 0 else 0.0,
        "gpu_energy_j": energy,
        "mean_gpu_power_w": energy / duration / tp if duration > 0 else 0.0,
        "energy_per_output_token_j": energy / summary["total_output_tokens"] if summary["total_output_tokens"] else 0.0,
        "energy_per_request_j": energy / summary["completed"] if summary["completed"] else 0.0,
        "seed": options.seed,
    })
    unfinished = int((records.status == 0).sum())
    if unfinished:
        raise RuntimeError(f"{unfinished} requests neither finished nor were rejected: an engine bug")
    return SimResult(summary, records, engine.series, cfg.to_dict() | {"memory": engine.memory.to_dict()},
                     engine.memory, wall, engine.num_steps, engine.rejection_reason)


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_results(result: SimResult, out_dir: str | Path, extra_config: dict | None = None) -> Path:
    """``summary.json``, ``config.json``, ``requests.parquet`` and ``timeseries.csv`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = result.config | (extra_config or {})
    _atomic_write(out / "requests.parquet", lambda p: result.records.to_frame().to_parquet(p, index=False))
    _atomic_write(out / "timeseries.csv", lambda p: result.series.to_frame().to_csv(p, index=False))
    _atomic_write(out / "config.json", lambda p: p.write_text(json.dumps(config, indent=2, default=str)))
    # summary last: its presence marks a complete result directory
    _atomic_write(out / "summary.json", lambda p: p.write_text(json.dumps(result.summary, indent=2)))
    return out
