"""Reading a *measured* sweep (real hardware runs) into a curve, so the region rules apply to it.

Two layouts are accepted (``docs/scenarios.md`` "Measured sweeps"):

1. ``DIR/curve.csv``: one row per demand point and seed, with at least ``demand`` and
   ``output_throughput``; ``seed`` (default 0), ``variant`` (default the folder name) and any other
   curve column (``p99_ttft_ms``, ``mean_num_waiting``, ``peak_kv_usage``, ``num_preemptions``,
   ``input_throughput``, ``mean_gpu_power_w``, ``tensor_parallel_size``, ...) are optional.
2. One sub-folder per run, holding ``requests.jsonl`` (one JSON object per request with
   ``arrival_s``, ``first_token_s``, ``finish_s``, ``input_tokens``, ``output_tokens``, optional
   ``status`` (``finished``, ``failed``, or a simulated run's names) and ``itls`` (the gaps in
   seconds between a request's streamed chunks, as ``vllm bench serve`` records them; the row then
   has ITL columns)) or ``requests.parquet`` (the schema of ``docs/outputs.md``), optionally a
   ``metrics.csv``/``timeseries.csv`` of vLLM gauges (``time_s``, ``vllm:num_requests_waiting``,
   ``vllm:kv_cache_usage_perc``, ``vllm:num_preemptions_total``, ...), and the point's identity in
   ``run.json`` (``{"demand": 64, "seed": 0, "variant": "tp1"}``; seed and variant optional) or in
   the folder name ``demand=64`` / ``demand=64_seed=1``.

A folder written by ``servesim simulate --out`` is a valid run folder once it has a ``run.json``.
Each folder's requests are summarized by :func:`~servesim.sim.metrics.summarize`, the reduction of
a simulated point, so a measured curve and a simulated one share their definitions.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..sim.metrics import RequestColumns, itl_from_gaps, summarize
from .points import CURVE_PERCENTILES, latency_keys, series_columns
from .stability import stability_columns

_NAME = re.compile(r"demand=([0-9.eE+-]+)(?:_seed=(\d+))?")
REQUEST_COLUMNS = ("arrival_s", "first_token_s", "finish_s", "input_tokens", "output_tokens")
# The summary keys a measured row carries besides the latency percentiles (a simulated row's names).
MEASURED_KEYS = ("completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
                 "output_throughput", "total_token_throughput", "mean_ttft_ms", "mean_tpot_ms", "mean_itl_ms",
                 "median_itl_ms", "p99_itl_ms", "mean_e2el_ms")


def _requests(folder: Path) -> pd.DataFrame:
    if (folder / "requests.parquet").exists():
        frame = pd.read_parquet(folder / "requests.parquet")
    else:
        path = folder / "requests.jsonl"
        rows = []
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}: line {i}: not JSON ({exc})") from None
        frame = pd.DataFrame(rows)
    missing = [c for c in REQUEST_COLUMNS if c not in frame]
    if missing:
        raise ValueError(f"{folder}: requests lack column(s) {missing}; need {list(REQUEST_COLUMNS)}")
    if "status" not in frame:
        frame["status"] = np.where(frame["finish_s"].notna(), "finished", "failed")
    frame["status"] = frame["status"].astype(str)
    return frame


def _identity(folder: Path, root: Path) -> dict:
    default_variant = folder.parent.name if folder.parent != root else root.name
    run = folder / "run.json"
    if run.exists():
        data = json.loads(run.read_text())
        if "demand" not in data:
            raise ValueError(f"{run}: needs a 'demand' key (the point's concurrency or rate)")
        return {"demand": float(data["demand"]), "seed": int(data.get("seed", 0)),
                "variant": str(data.get("variant", default_variant))}
    m = _NAME.fullmatch(folder.name)
    if not m:
        raise ValueError(f"{folder}: no run.json and the folder name is not 'demand=<value>[_seed=<n>]'")
    return {"demand": float(m.group(1)), "seed": int(m.group(2) or 0), "variant": default_variant}


def run_row(folder: Path, root: Path | None = None) -> dict:
    """One curve row from one measured run folder (``root``: the sweep folder, for the variant name)."""
    row = _identity(folder, root or folder.parent)
    req = _requests(folder)
    itl = itl_from_gaps(req["itls"][req["status"] == "finished"]) if "itls" in req else None
    s = summarize(RequestColumns.from_frame(req), itl, percentiles=CURVE_PERCENTILES)
    duration = s.get("duration", math.nan)
    row.update({key: s[key] for key in MEASURED_KEYS if key in s})
    input_rate = s["total_input_tokens"] / duration if duration > 0 else 0.0
    row.update({"duration_s": duration, "input_throughput": math.nan if math.isnan(duration) else input_rate,
                "error": ""})
    if s["completed"] == 0:  # as for a simulated point: zero throughput measures no capacity
        row["error"] = f"no request completed: {s['failed']} of {len(req)} failed"
    row.update({key: s.get(key, math.nan) for key in latency_keys(CURVE_PERCENTILES)})
    # did the server keep up with the offered rate? (bursts and closed loops cannot fall behind one:
    # their arrivals carry no rate, or follow the completions, so the rule finds nothing there)
    row.update(stability_columns(req["arrival_s"].to_numpy(float),
                                 np.where(req["status"] == "finished", req["finish_s"], np.nan)))
    for name in ("metrics.csv", "timeseries.csv"):
        if (folder / name).exists():
            series = pd.read_csv(folder / name)
            if {"vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"} <= set(series):
                row.update(series_columns(series))
                row["peak_kv_usage"] = float(series["vllm:kv_cache_usage_perc"].max())
            if "vllm:num_preemptions_total" in series:
                pre = series["vllm:num_preemptions_total"]
                row["num_preemptions"] = float(pre.iloc[-1] - pre.iloc[0])
            break
    return row


def load_measured(path: Path) -> pd.DataFrame:
    """The curve of a measured sweep folder (either layout); raises ``ValueError`` naming the problem."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder")
    if (path / "curve.csv").exists():
        curve = pd.read_csv(path / "curve.csv")
        missing = [c for c in ("demand", "output_throughput") if c not in curve]
        if missing:
            raise ValueError(f"{path / 'curve.csv'}: missing column(s) {missing}; header is {list(curve.columns)}")
        if "seed" not in curve:
            curve["seed"] = 0
        if "variant" not in curve:
            curve["variant"] = path.name
        return curve
    folders = sorted({p.parent for pattern in ("requests.jsonl", "requests.parquet")
                      for p in path.rglob(pattern)})
    if not folders:
        raise ValueError(f"{path}: neither a curve.csv nor run folders with requests.jsonl / requests.parquet "
                         "(see docs/scenarios.md, 'Measured sweeps')")
    return pd.DataFrame([run_row(f, path) for f in folders])
