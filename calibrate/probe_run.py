"""A ``servesim measure`` run directory as measured runs that ``servesim validate`` can replay.

Each load point of the run (families ``concurrency``, ``decode``, ``context``, ``seqlen``, ``rate``)
becomes one :class:`~servesim.calibrate.validate.MeasuredRun`: the requests it sent, at their send
times relative to the point's first send, with their exact prompt and output lengths, and the
metrics ``vllm bench serve`` would report for them: the point's records of ``requests.jsonl``
written in the per-request schema and reduced by :func:`~servesim.sim.metrics.summarize`, as a
simulated run is (a request that ended ``ok`` or ``short`` is a success, as vLLM's client counts
a complete response; TPOT divides by the reported output tokens, ITL is every gap between chunks).  A run of
``servesim serve`` is compared on the simulator's own clock (the ``server_arrival_time`` and
``server_token_times`` it stamps), so HTTP latency magnified by ``--speed`` does not count as
simulation error; a real server's run uses the client's wall clock.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..measure.rundir import load_requests, load_run
from ..sim.metrics import ABORTED, FINISHED, RequestColumns, itl_from_gaps, summarize
from ..sim.workload import Workload
from .measured_run import MeasuredRun

LOAD_FAMILIES = ("concurrency", "decode", "context", "seqlen", "rate")
SUCCESS_STATUSES = ("ok", "short")  # the response completed (measure/client.py's statuses)


def _point_requests(g: pd.DataFrame, server_clock: bool, scale: float) -> tuple[RequestColumns, list[np.ndarray]]:
    """One point's records in the per-request schema (seconds from its first send; simulated
    seconds for ``servesim serve``) and each successful request's token times on that clock."""
    ok = g.status.isin(SUCCESS_STATUSES).to_numpy(copy=True)
    if server_clock:
        arrival = g.server_arrival_time.to_numpy(dtype=float) - float(g.server_arrival_time.min())
        rel = [np.asarray(t, dtype=float) - a for t, a in zip(g.server_token_times, g.server_arrival_time)]
    else:
        arrival = (g.send_time.to_numpy(dtype=float) - float(g.send_time.min())) * scale
        rel = [np.asarray(t if isinstance(t, list) else [], dtype=float) * scale for t in g.token_times]
    ok &= np.array([t.size > 0 for t in rel], dtype=bool)
    first = np.array([a + t[0] if good else np.nan for a, t, good in zip(arrival, rel, ok)])
    finish = np.array([a + t[-1] if good else np.nan for a, t, good in zip(arrival, rel, ok)])
    n_out = np.where(ok, g.output_tokens.fillna(0).to_numpy(dtype=float), 0).astype(np.int64)
    columns = RequestColumns(arrival, first, finish, g.prompt_tokens.to_numpy(dtype=np.int64), n_out,
                             np.where(ok, FINISHED, ABORTED).astype(np.int8))
    return columns, [t for t, good in zip(rel, ok) if good]


def load_probe_run(run_dir: str | Path, point_id: str | None = None) -> list[MeasuredRun]:
    """One measured run per load point (or just ``point_id``)."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    df = load_requests(run_dir)
    if df.empty:
        raise ValueError(f"{run_dir}: requests.jsonl holds no completed point")
    df = df[df.family.isin(LOAD_FAMILIES)]
    if point_id is not None:
        df = df[df.point_id == point_id]
        if df.empty:
            raise ValueError(f"{run_dir}: no completed load point {point_id!r}")
    scale = float(run.get("time_scale", 1.0) or 1.0)
    settings = {"model": run.get("model"), "max_model_len": run.get("max_model_len"),
                "server_version": (run.get("server") or {}).get("version"),
                "flags": (run.get("launch") or {}).get("flags", {})}
    runs = []
    server_clock = "server_token_times" in df and df.server_token_times.map(
        lambda t: isinstance(t, list) and len(t) > 0).all()
    for pid, g in df.groupby("point_id", sort=False):
        g = g.sort_values("send_time")
        columns, token_times = _point_requests(g, server_clock, scale)
        workload = Workload(arrival_s=columns.arrival_s, input_tokens=g.prompt_tokens.to_numpy(),
                            output_tokens=np.maximum(g.max_tokens.to_numpy(), 1), name=f"{run_dir.name}:{pid}")
        summary = summarize(columns, itl_from_gaps(np.diff(t) for t in token_times))
        num_ok = summary["completed"]
        notes = [] if num_ok == len(g) else [f"{len(g) - num_ok} of {len(g)} requests did not end ok"]
        notes.append("times on the simulator's clock (servesim serve)" if server_clock else "times on the client's clock")
        runs.append(MeasuredRun(f"{run_dir.name}/{pid}", workload, summary, settings, notes))
    return runs
