"""The sweep runner: every point x seed of every variant, in parallel, resumable.

``run_sweep(scenario_file, SweepOptions(out_dir=...))`` runs the points on local processes
(``concurrent.futures.ProcessPoolExecutor``, the default) or on a Dask distributed cluster
(``executor="dask"``; optional dependency ``dask[distributed]``, the ``distributed`` extra),
with a tqdm progress bar.  Each finished point is written at once to
``points/<variant>/<axis>=<value>_seed=<seed>.json`` (atomically, with a fingerprint of the
variant's resolved configuration), so an interrupted sweep resumes where it stopped: points whose
file exists with the same fingerprint are skipped.  When every point is done, :func:`analyse`
adds the economics and finds the regions, and :func:`write_outputs` writes the curve (CSV and
Parquet), the regions and the report.  Layout of the folder: ``docs/scenarios.md``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Generator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..sim.profile import shipped_profiles
from ..sim.uncertainty import t_interval
from .economics import add_economics
from .loader import ScenarioError, scenario_from_dict, scenario_to_dict
from .points import PointResult, PointTask, run_point, trace_file
from .regions import Regions, find_regions, mean_curve, regions_frame
from .report import write_report
from .schema import Scenario, ScenarioFile
from .sweep_dir import point_path, points_dir, series_path

EXECUTORS = ("local", "dask")


@dataclass(frozen=True)
class SweepOptions:
    """How to run a sweep (what to run is the scenario)."""

    out_dir: Path
    executor: str = "local"
    workers: int | None = None           # local processes (default: every core) or Dask workers
    dask_address: str | None = None      # an existing Dask scheduler; None starts a LocalCluster
    progress: bool = True
    report: bool = True

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {list(EXECUTORS)}, got {self.executor!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


@dataclass
class SweepResult:
    curve: pd.DataFrame
    regions: list[Regions]
    out_dir: Path
    num_run: int
    num_skipped: int
    wall_s: float
    files: dict[str, Path] = field(default_factory=dict)


def _file_digest(path: Path) -> str:
    """sha256 of a file's bytes ("missing" when it cannot be read: the point then fails and is retried)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return "missing"
    return digest.hexdigest()


def input_files(sc: Scenario) -> dict[str, Path]:
    """The files a variant reads besides the scenario itself: trace, profile and model JSONs."""
    files: dict[str, Path] = {}
    base = Path(sc.base_dir)
    if sc.workload.trace:
        try:
            files["trace"] = trace_file(sc.workload.trace, sc.base_dir)
        except FileNotFoundError:
            files["trace"] = base / sc.workload.trace
    dep = sc.deployment
    if dep.profile:
        files["profile"] = shipped_profiles().get(dep.profile, base / dep.profile)
    if dep.model.endswith(".json"):
        files["model"] = base / dep.model
    return files


def fingerprint(sc: Scenario) -> str:
    """Hash of everything that decides a variant's results (so resumed points are never stale):
    the resolved configuration and the *content* of every file it reads (a trace edited in place
    under the same path gives a new fingerprint)."""
    data = scenario_to_dict(ScenarioFile("", "", (sc,)))["resolved_variants"][0]
    for key in ("description", "economics", "slos", "regions", "advice", "base_dir"):
        data.pop(key, None)
    data["sweep"].pop("points", None)
    data["sweep"].pop("seeds", None)
    data["input_sha256"] = {key: _file_digest(path) for key, path in input_files(sc).items()}
    if data.get("workload", {}).get("dataset") == "sharegpt":  # was whole conversations before first turns
        data["workload"]["dataset"] = "sharegpt-first-turn"
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _point_path(out: Path, task: PointTask) -> Path:
    return point_path(out, task.scenario.name, task.key)


def all_tasks(sf: ScenarioFile) -> list[PointTask]:
    """Every point x seed of every variant; the first seed keeps its time series."""
    return [PointTask(sc, d, s, keep_series=(s == sc.sweep.seeds[0]))
            for sc in sf.variants for d in sc.sweep.points for s in sc.sweep.seeds]


def _done(out: Path, task: PointTask, prints: dict[str, str]) -> bool:
    path = _point_path(out, task)
    if not path.exists():
        return False
    try:
        row = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return False
    # A failed point (its error column set) is never final: resuming runs it again.
    return (isinstance(row, dict) and row.get("fingerprint") == prints[task.scenario.name]
            and not row.get("error"))


def _save(out: Path, task: PointTask, result: PointResult, prints: dict[str, str]) -> None:
    if result.series is not None:
        target = series_path(out, task.scenario.name, task.demand, task.scenario.sweep.axis.value)
        _atomic_write(target, lambda p: result.series.to_parquet(p, index=False))
    row = {**result.row, "fingerprint": prints[task.scenario.name]}
    _atomic_write(_point_path(out, task), lambda p: p.write_text(json.dumps(row, default=float)))


# ---------------------------------------------------------------------------------- executors


def _run_local(tasks: list[PointTask], workers: int) -> Generator[tuple[PointTask, PointResult], None, None]:
    if workers == 1 or len(tasks) == 1:
        for task in tasks:
            yield task, run_point(task)
        return
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        pending = {pool.submit(run_point, t): t for t in tasks}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield pending.pop(fut), fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_dask(tasks: list[PointTask], workers: int | None, address: str | None
              ) -> Generator[tuple[PointTask, PointResult], None, None]:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ValueError("--executor dask needs Dask distributed: pip install 'servesim[distributed]' "
                         "(or pip install 'dask[distributed]')") from None
    cluster = None
    if address:
        client = Client(address)
    else:
        cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                               processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        futures = {client.submit(run_point, t, pure=False): t for t in tasks}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ------------------------------------------------------------------------------------ the sweep


def load_points(out: Path, sf: ScenarioFile) -> pd.DataFrame:
    """The curve rows on disk for the variants of ``sf`` (current fingerprints, current points)."""
    rows = []
    for sc in sf.variants:
        fp = fingerprint(sc)
        wanted = {(float(d), int(s)) for d in sc.sweep.points for s in sc.sweep.seeds}
        for path in sorted(points_dir(out, sc.name).glob("*.json")):
            try:
                row = json.loads(path.read_text())
            except (json.JSONDecodeError, OSError, UnicodeDecodeError):
                continue  # a damaged point file counts as not run (it is run again on resume)
            if isinstance(row, dict) and row.pop("fingerprint", None) == fp and (float(row["demand"]), int(row["seed"])) in wanted:
                rows.append(row)
    return pd.DataFrame(rows)


def analyse(sf: ScenarioFile, curve: pd.DataFrame) -> tuple[pd.DataFrame, list[Regions]]:
    """Economics columns on the curve, and the regions of every variant."""
    parts, regions = [], []
    for sc in sf.variants:
        part = curve[curve["variant"] == sc.name] if not curve.empty else curve
        part = add_economics(part.sort_values(["demand", "seed"]), sc.economics, tp=sc.deployment.tp)
        parts.append(part)
        regions.append(find_regions(part, sc.regions, sc.slos, sc.name, sc.sweep.axis.is_demand))
    return (pd.concat(parts, ignore_index=True) if parts else curve), regions


CI_COLUMNS = ("request_throughput", "output_throughput", "p99_ttft_ms", "p99_tpot_ms", "p99_e2el_ms")


def with_intervals(mean: pd.DataFrame, part: pd.DataFrame) -> pd.DataFrame:
    """``<column>_ci_lo`` / ``_ci_hi``: the 95% Student-t interval over the seeds of each demand's
    mean (docs/scenarios.md, "Intervals"), for the throughputs and p99 latencies."""
    if "error" in part:
        part = part[part["error"].fillna("") == ""]
    for col in CI_COLUMNS:
        if col not in part or col not in mean:
            continue
        bands = {d: t_interval(list(g.dropna()))[1:] for d, g in part.groupby("demand")[col]}
        mean[f"{col}_ci_lo"] = [bands.get(d, (float("nan"),) * 2)[0] for d in mean["demand"]]
        mean[f"{col}_ci_hi"] = [bands.get(d, (float("nan"),) * 2)[1] for d in mean["demand"]]
    return mean


def write_outputs(out: Path, sf: ScenarioFile, curve: pd.DataFrame, regions: list[Regions],
                  report: bool = True) -> dict[str, Path]:
    """``curve.csv``/``.parquet``, ``curve_mean.csv``, ``regions.json``/``.csv`` and the report."""
    files = {"curve_csv": out / "curve.csv", "curve_parquet": out / "curve.parquet",
             "curve_mean": out / "curve_mean.csv", "regions_json": out / "regions.json",
             "regions_csv": out / "regions.csv"}
    _atomic_write(files["curve_csv"], lambda p: curve.to_csv(p, index=False))
    _atomic_write(files["curve_parquet"], lambda p: curve.to_parquet(p, index=False))
    means = [with_intervals(mean_curve(curve[curve["variant"] == v]), curve[curve["variant"] == v]).assign(variant=v)
             for v in curve["variant"].unique()] if not curve.empty else []
    mean = pd.concat(means, ignore_index=True) if means else pd.DataFrame()
    _atomic_write(files["curve_mean"], lambda p: mean.to_csv(p, index=False))
    _atomic_write(files["regions_json"], lambda p: p.write_text(json.dumps([r.to_dict() for r in regions],
                                                                           indent=2, default=float)))
    _atomic_write(files["regions_csv"], lambda p: regions_frame(regions).to_csv(p, index=False))
    if report:
        files.update(write_report(out, sf, curve, regions))
    return files


def run_sweep(sf: ScenarioFile, options: SweepOptions) -> SweepResult:
    """Run (or resume) the sweep of ``sf`` into ``options.out_dir`` and write every output."""
    t0 = time.perf_counter()
    out = Path(options.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "scenario.json", lambda p: p.write_text(json.dumps(scenario_to_dict(sf), indent=2)))
    if sf.source and Path(sf.source).is_file():
        source_text = Path(sf.source).read_text()
        _atomic_write(out / "scenario.yaml", lambda p: p.write_text(source_text))
    prints = {sc.name: fingerprint(sc) for sc in sf.variants}
    tasks = all_tasks(sf)
    todo = [t for t in tasks if not _done(out, t, prints)]
    # longest first: larger demands (and longer sequences) simulate more steps
    todo.sort(key=lambda t: -t.demand)
    workers = options.workers or os.cpu_count() or 1
    bar = None
    if options.progress:
        from tqdm import tqdm
        bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), unit="pt", desc=sf.name, file=sys.stderr,
                   mininterval=0.3)
    stream = (_run_dask(todo, options.workers, options.dask_address) if options.executor == "dask"
              else _run_local(todo, workers))
    try:
        for task, result in stream:
            _save(out, task, result, prints)
            if bar is not None:
                bar.update(1)
    finally:
        stream.close()  # shuts the pool or the Dask client down, also on Ctrl-C
        if bar is not None:
            bar.close()
    curve, regions = analyse(sf, load_points(out, sf))
    files = write_outputs(out, sf, curve, regions, options.report)
    return SweepResult(curve, regions, out, len(todo), len(tasks) - len(todo), time.perf_counter() - t0, files)


def load_sweep_dir(path: Path) -> tuple[ScenarioFile, pd.DataFrame]:
    """The scenario and raw curve of a finished (or partial) sweep folder."""
    scenario = path / "scenario.json"
    if not scenario.exists():
        raise FileNotFoundError(f"{path} has no scenario.json: not a sweep folder written by `servesim sweep`")
    try:
        sf = scenario_from_dict(json.loads(scenario.read_text()), str(scenario))
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{scenario}: not valid JSON: {exc}") from None
    return sf, load_points(path, sf)
