"""A ``servesim measure`` run directory as measured runs that ``servesim validate`` can replay.

Each load point of the run (families ``concurrency``, ``decode``, ``context``, ``seqlen``, ``rate``)
becomes one :class:`~servesim.calibrate.validate.MeasuredRun`: the requests it sent, at their send
times relative to the point's first send, with their exact prompt and output lengths, and the
metrics ``vllm bench serve`` would report for them (computed from ``requests.jsonl``).  A run of
``servesim serve`` is compared on the simulator's own clock (the ``server_arrival_time`` and
``server_token_times`` it stamps), so HTTP latency magnified by ``--speed`` does not count as
simulation error; a real server's run uses the client's wall clock.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..measure.rundir import load_requests, load_run
from ..sim.workload import Workload
from .validate import MeasuredRun, measured_stats

LOAD_FAMILIES = ("concurrency", "decode", "context", "seqlen", "rate")


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
        ok = g[g.status == "ok"]
        if server_clock:
            start = float(g.server_arrival_time.min())
            arrival = g.server_arrival_time.to_numpy() - start
            tokens = [np.asarray(t, dtype=float) - a for t, a in zip(ok.server_token_times, ok.server_arrival_time)]
            sent_ok = ok.server_arrival_time.to_numpy() - start
        else:
            start = float(g.send_time.min())
            arrival = (g.send_time.to_numpy() - start) * scale
            tokens = [np.asarray(t, dtype=float) * scale for t in ok.token_times]
            sent_ok = (ok.send_time.to_numpy() - start) * scale
        workload = Workload(arrival_s=arrival, input_tokens=g.prompt_tokens.to_numpy(),
                            output_tokens=np.maximum(g.max_tokens.to_numpy(), 1), name=f"{run_dir.name}:{pid}")
        ttft = np.array([t[0] for t in tokens]) if tokens else np.zeros(0)
        e2e = np.array([t[-1] for t in tokens]) if tokens else np.zeros(0)
        duration = float((sent_ok + e2e).max()) if len(e2e) else 0.0
        out_tokens = ok.output_tokens.to_numpy()
        summary = {"duration": duration, "completed": float(len(ok)),
                   "request_throughput": len(ok) / duration if duration else 0.0,
                   "output_throughput": out_tokens.sum() / duration if duration else 0.0,
                   "total_token_throughput": (out_tokens.sum() + ok.prompt_tokens.sum()) / duration if duration else 0.0}
        summary.update(measured_stats("ttft", ttft * 1e3))
        multi = np.array([len(t) > 1 for t in tokens], dtype=bool)
        summary.update(measured_stats("tpot", (e2e - ttft)[multi] / (np.array([len(t) for t in tokens])[multi] - 1) * 1e3))
        itl = np.concatenate([np.diff(t) for t in tokens if len(t) > 1] or [np.zeros(0)])
        summary.update(measured_stats("itl", itl * 1e3))
        summary.update(measured_stats("e2el", e2e * 1e3))
        notes = [] if len(ok) == len(g) else [f"{len(g) - len(ok)} of {len(g)} requests did not end ok"]
        notes.append("times on the simulator's clock (servesim serve)" if server_clock else "times on the client's clock")
        runs.append(MeasuredRun(f"{run_dir.name}/{pid}", workload, summary, settings, notes))
    return runs
