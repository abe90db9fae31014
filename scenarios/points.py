"""One point of a sweep: build the replica and the workload, simulate, reduce to one curve row.

:func:`run_point` is what the executors (local processes or Dask workers) run; it takes a
picklable :class:`PointTask` and returns a :class:`PointResult` holding one row of the curve
(columns in ``docs/scenarios.md`` "Curve") and, for the first seed, the time series downsampled to
at most :data:`MAX_SERIES_ROWS` samples.

A configuration the engine refuses (a model that does not fit, a prompt longer than the KV cache)
becomes a row whose ``error`` column holds the engine's message, so sweeps report infeasible
variants instead of stopping.  If the engine's fast path raises anything else, the point is re-run
on the exact per-request path (``SimOptions(exact=True)``, the reference the fast path is tested
against) and ``fast_path_error`` records what happened, so an engine bug is visible, not hidden.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..sim.config import EngineConfig, create_engine_config
from ..sim.metrics import RequestRecords, request_latencies_s, summarize
from ..sim.model_catalog import get_model
from ..sim.models import ModelSpec
from ..sim.runner import SimOptions
from ..sim.workload import ClosedLoop, Workload, build_workload
from .cluster_point import cluster_columns, point_demand, simulate_point
from .schema import ArrivalKind, Axis, Deployment, Scenario
from .stability import ConvergenceRule, converged, stability_columns

MAX_SERIES_ROWS = 400
DEFAULT_OPEN_LOOP_REQUESTS = 1000
# Percentiles computed from the per-request records for every latency metric (SLOs may add more).
CURVE_PERCENTILES = (50.0, 90.0, 95.0, 99.0)
SUMMARY_KEYS = (
    "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
    "output_throughput", "total_token_throughput", "mean_ttft_ms", "mean_tpot_ms", "mean_itl_ms",
    "median_itl_ms", "p99_itl_ms", "mean_e2el_ms", "kv_capacity_tokens", "num_gpu_blocks", "num_preemptions",
    "peak_kv_usage", "mean_num_running", "busy_fraction", "gpu_energy_j", "mean_gpu_power_w",
    "energy_per_output_token_j",
)


@dataclass(frozen=True)
class PointTask:
    """One simulation of a sweep: ``scenario`` at ``demand`` (the axis value) with ``seed``."""

    scenario: Scenario
    demand: float
    seed: int
    keep_series: bool = False
    profile_draw: int | None = None  # a parametric-bootstrap draw of the profile (None: nominal)

    @property
    def key(self) -> str:
        """File-name-safe identity of the point inside its variant's folder."""
        draw = "" if self.profile_draw is None else f"_draw={self.profile_draw}"
        return f"{self.scenario.sweep.axis.value}={self.demand:g}_seed={self.seed}{draw}"


@dataclass
class PointResult:
    row: dict
    series: pd.DataFrame | None


# ------------------------------------------------------------------------------------ the replica


def resolve_model(dep: Deployment, base_dir: str = ".") -> ModelSpec:
    """The catalogue model (or a ``config.json`` path) with ``model_overrides`` applied."""
    path = Path(base_dir) / dep.model
    model = get_model(str(path) if path.suffix == ".json" else dep.model)
    if dep.model_overrides:
        model = replace(model, **dict(dep.model_overrides))  # type: ignore[arg-type]  # ModelSpec checks them
    return model


def engine_config(dep: Deployment, base_dir: str = ".") -> EngineConfig:
    """The :class:`EngineConfig` of a deployment (raises ``ValueError`` if vLLM would refuse it)."""
    return create_engine_config(dep.engine_args(), model=resolve_model(dep, base_dir), base_dir=base_dir)


# ----------------------------------------------------------------------------------- the traffic


def trace_file(trace: str, base_dir: str = ".") -> Path:
    """``shared:<relative>`` in the shared data folder, else a path relative to the scenario file."""
    if trace.startswith("shared:"):
        from ..sim.data_paths import find_shared_data
        return find_shared_data(trace[len("shared:"):])
    path = Path(trace).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


@functools.lru_cache(maxsize=4)
def _cached_trace(path: str, stamp: tuple[int, int]) -> Workload:
    from ..sim.traces import load_trace
    return load_trace(path)


def _full_trace(path: str) -> Workload:
    """The whole trace, cached per process by path *and* (mtime, size): a file edited in place
    between two sweeps of one process is read again, never served stale."""
    st = Path(path).stat()
    return _cached_trace(path, (st.st_mtime_ns, st.st_size))


def trace_window(path: Path, n: int, seed: int, rate: float | None) -> Workload:
    """Rows ``[start, start + n)`` of the trace, ``start = seed * n`` (wrapped to fit), rebased to
    t = 0 and rescaled to a mean ``rate`` when given; seeds thereby replay different windows."""
    from ..sim.traces import rescale_arrivals
    full = _full_trace(str(path))
    total = len(full)
    n = min(n, total)
    start = (seed * n) % max(total - n + 1, 1)
    sl = slice(start, start + n)
    arrivals = full.arrival_s[sl] - full.arrival_s[start]
    if rate is not None and n > 1:
        arrivals = rescale_arrivals(arrivals, rate=rate)
    hashes = full.prefix_hashes[sl] if full.prefix_hashes is not None else None
    return Workload(arrivals, full.input_tokens[sl], full.output_tokens[sl], f"{path.stem}[{start}:{start + n}]",
                    hashes, full.prefix_block_tokens)


def _clamp(n: int, sc: Scenario) -> int:
    w = sc.workload
    n = max(n, w.min_requests)
    return min(n, w.max_requests) if w.max_requests else n


def point_workload(sc: Scenario, demand: float, seed: int) -> Workload | ClosedLoop:
    """The requests of one point: the workload section with the swept quantity set to ``demand``."""
    w, axis = sc.workload, sc.sweep.axis
    common: dict = {"name": sc.name}
    if axis is Axis.INPUT_LEN:
        common["input_len"] = int(demand)
    elif axis is Axis.OUTPUT_LEN:
        common["output_len"] = int(demand)
    rate = demand if axis is Axis.RATE else w.rate
    if w.kind is ArrivalKind.BURST:
        n = int(demand) if axis is Axis.BURST else (w.num_requests or 1)
        return build_workload(w.spec(kind="burst", num_requests=n, **common), seed)
    if w.kind is ArrivalKind.CLOSED:
        users = int(demand) if axis is Axis.CONCURRENCY else int(w.num_users or 0)  # schema: closed loops name it
        n = w.num_requests or _clamp(w.requests_per_user * users, sc)
        return build_workload(w.spec(kind="closed", num_requests=n, num_users=users, **common), seed)
    if w.num_requests:
        n = w.num_requests
    elif w.duration_s:
        assert rate is not None  # Scenario: an open loop off the rate axis has a rate
        n = _clamp(math.ceil(rate * w.duration_s), sc)
    else:
        n = _clamp(DEFAULT_OPEN_LOOP_REQUESTS, sc)
    if w.kind is ArrivalKind.TRACE:
        assert w.trace is not None  # WorkloadSection: kind 'trace' needs trace
        return trace_window(trace_file(w.trace, sc.base_dir), n, seed, rate)
    kind = "gamma" if w.kind is ArrivalKind.GAMMA else "poisson"
    return build_workload(w.spec(kind=kind, num_requests=n, rate=rate, **common), seed)


# ------------------------------------------------------------------------------------ reduction


LATENCY_METRICS = ("ttft", "tpot", "e2el")  # the per-request latencies a curve row carries


def latency_keys(percentiles: tuple[float, ...]) -> tuple[str, ...]:
    """The curve's latency columns: ``p<q>_`` and ``median_`` of TTFT, TPOT and E2EL (ms)."""
    return tuple(key for name in LATENCY_METRICS
                 for key in (*(f"p{q:g}_{name}_ms" for q in percentiles), f"median_{name}_ms"))


def latency_columns(records: pd.DataFrame | RequestRecords, percentiles: tuple[float, ...]) -> dict:
    """TTFT, TPOT and E2E latency percentiles (ms) of the finished requests, as
    :func:`~servesim.sim.metrics.summarize` computes them (NaN where the records hold none)."""
    summary = summarize(records, percentiles=percentiles)
    return {key: summary.get(key, math.nan) for key in latency_keys(percentiles)}


def series_columns(series: pd.DataFrame) -> dict:
    """Queue and KV statistics over the sampled time series (samples are evenly spaced)."""
    if series.empty:
        return dict.fromkeys(("mean_num_waiting", "max_num_waiting", "mean_kv_usage", "p95_num_running",
                              "max_num_running"), math.nan)
    waiting = series["vllm:num_requests_waiting"].to_numpy(dtype=float)
    running = series["vllm:num_requests_running"].to_numpy(dtype=float)
    return {"mean_num_waiting": float(waiting.mean()), "max_num_waiting": float(waiting.max()),
            "mean_kv_usage": float(series["vllm:kv_cache_usage_perc"].mean()),
            "p95_num_running": float(np.percentile(running, 95)), "max_num_running": float(running.max())}


def downsample(series: pd.DataFrame, max_rows: int = MAX_SERIES_ROWS) -> pd.DataFrame:
    step = max(1, math.ceil(len(series) / max_rows))
    return series.iloc[::step].reset_index(drop=True)


OPEN_LOOP = (ArrivalKind.POISSON, ArrivalKind.GAMMA, ArrivalKind.TRACE)


def open_loop(sc: Scenario) -> bool:
    """Whether the scenario's arrivals ignore the system's state (so it can fall behind them)."""
    return sc.workload.kind in OPEN_LOOP


def stability_of(sc: Scenario, records: pd.DataFrame) -> dict:
    """The stability columns (:mod:`.stability`) of an open-loop point; stable by definition otherwise."""
    if not open_loop(sc):
        return {"stable": True, "stability_judged": False}
    return stability_columns(records["arrival_s"].to_numpy(float),
                             np.where(records["status"] == "finished", records["finish_s"], np.nan))


def run_point(task: PointTask) -> PointResult:
    """Simulate one point and reduce it to a curve row (never raises for an engine refusal)."""
    return _run_point(task)[0]


def _run_point(task: PointTask) -> tuple[PointResult, pd.DataFrame | None]:
    sc = task.scenario
    row: dict = {"variant": sc.name, "axis": sc.sweep.axis.value, "demand": task.demand, "seed": task.seed,
                 "error": "", "fast_path_error": ""}
    t0 = time.perf_counter()
    percentiles = tuple(sorted(set(CURVE_PERCENTILES) | {s.percentile for s in sc.slos if s.percentile > 0}))
    try:
        cfg = engine_config(sc.deployment, sc.base_dir)
        if task.profile_draw is not None:
            from ..sim.uncertainty import perturb_profile, profile_rng
            cfg = replace(cfg, profile=perturb_profile(cfg.profile, profile_rng(task.seed, task.profile_draw)))
        workload = point_workload(sc, point_demand(sc, task.demand), task.seed)
        options = SimOptions(sample_interval_s=sc.sample_interval_s, exact=sc.exact, seed=task.seed)
        try:
            result = simulate_point(sc, cfg, workload, options, engine_config)  # a cluster: docs/cluster.md
        except (ValueError, FileNotFoundError):
            raise
        except Exception as exc:  # an engine failure on the fast path: re-run on the reference path
            if sc.exact:
                raise
            row["fast_path_error"] = f"{type(exc).__name__}: {exc}"
            result = simulate_point(sc, cfg, workload, replace(options, exact=True), engine_config)
    except (ValueError, FileNotFoundError) as exc:
        row["error"] = str(exc)
        row["wall_s"] = time.perf_counter() - t0
        return PointResult(row, None), None
    s = result.summary
    row.update({k: s[k] for k in SUMMARY_KEYS})
    if s["completed"] == 0:  # zero throughput here is no measurement of capacity: not a curve point
        row["error"] = (f"no request completed: {s['failed']} of {len(workload)} rejected"
                        + (f" ({result.rejection_reason})" if result.rejection_reason else ""))
    row["duration_s"] = s["duration"]
    row["input_throughput"] = s["total_input_tokens"] / s["duration"] if s["duration"] > 0 else 0.0
    tokens = s["total_input_tokens"] + s["total_output_tokens"]
    row["energy_per_token_j"] = s["gpu_energy_j"] / tokens if tokens else math.nan
    row["tensor_parallel_size"] = sc.deployment.tp
    row.update(cluster_columns(s))  # economics counts num_gpus_total GPUs when present
    row["max_num_seqs"] = cfg.scheduler.max_num_seqs
    row["num_requests"] = len(workload)
    records = result.records.to_frame()
    row.update(latency_columns(records, percentiles))
    row.update(stability_of(sc, records))
    frame = result.series.to_frame()
    row.update(series_columns(frame))
    row["wall_s"] = time.perf_counter() - t0
    return PointResult(row, downsample(frame) if task.keep_series else None), records


# ----------------------------------------------------------------------------- converged runs


def _metric_values(records: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per finished request in arrival order (ms): the values whose batch means judge convergence."""
    done = records[records["status"] == "finished"].sort_values("arrival_s")
    values = request_latencies_s(done)
    multi = done["output_tokens"].to_numpy() > 1  # TPOT statistics leave single-token requests out
    return {"ttft": values["ttft"] * 1e3, "tpot": values["tpot"][multi] * 1e3, "e2el": values["e2el"] * 1e3}


def run_converged(task: PointTask, rule: ConvergenceRule) -> PointResult:
    """Simulate an open-loop point with as many requests as :class:`ConvergenceRule` asks.

    The request count starts at ``rule.min_requests`` and doubles until the run is long enough
    (``docs/scenarios.md``, "Stability and run length"), the point is found unstable (more
    requests would only confirm it), or ``rule.max_requests`` is reached.  The row records
    ``converged`` and, when not, what was lacking (``convergence_note``)."""
    sc = task.scenario
    metrics = {s.metric: s.percentile for s in sc.slos if s.metric in ("ttft", "tpot", "e2el")}
    n = rule.min_requests
    while True:
        trial = replace(task, scenario=replace(sc, workload=replace(sc.workload, num_requests=n)))
        result, records = _run_point(trial)
        row = result.row
        if row.get("error") or records is None:
            return result
        done = records[records["status"] == "finished"]
        span = float(records["arrival_s"].max() - records["arrival_s"].min())
        longest = float((done["finish_s"] - done["first_scheduled_s"]).max()) if len(done) else math.inf
        values = _metric_values(records)
        ok, widths, lacking = converged(values, metrics, span, longest, rule)
        row.update({"converged": ok, "convergence_note": lacking, "longest_service_s": longest,
                    **{f"{m}_ci_rel_half_width": w for m, w in widths.items()}})
        if ok or not row.get("stable", True) or n >= rule.max_requests:
            return result
        n = min(2 * n, rule.max_requests)
