"""A run directory: the files one measurement run writes, and how to read them back.

```
RUN_DIR/
  run.json         what was measured: server, model, flags, GPU, KV capacity, plan, sessions, status
  requests.jsonl   one JSON object per request, appended when the request ends (docs/measure.md)
  points.jsonl     one line per probe-point attempt that ended: complete or aborted
  metrics.csv      the server's /metrics every 200 ms (union header, see metrics_csv.py)
  server.log       the server's output, when the harness launched it
  plots/*.png      one figure per probe family
```

Every file is append-only or replaced atomically, so a run killed at any moment is a valid
partial run: ``--resume`` re-runs the points without a ``complete`` line and appends a new
attempt; readers use only the records of each point's complete attempt (:func:`load_requests`),
or all records with ``complete_only=False``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

SCHEMA_VERSION = 1
RUN_JSON, REQUESTS, POINTS, METRICS, SERVER_LOG = ("run.json", "requests.jsonl", "points.jsonl", "metrics.csv",
                                                  "server.log")


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


class JsonlAppender:
    """Append-only JSON lines, flushed per line (a killed harness loses no finished record)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        torn = False
        if path.exists() and path.stat().st_size:
            with path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        self._fh = path.open("a", buffering=1)
        if torn:  # a writer killed mid-line: end that line, so the next record starts a line of its own
            self._fh.write("\n")

    def write(self, obj: dict[str, Any]) -> None:
        self._fh.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._fh.close()


def read_jsonl(path: Path) -> list[dict]:
    """Lines of a JSONL file; a torn last line (the writer was killed mid-line) is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def load_run(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a measurement run directory (no {RUN_JSON})")
    try:
        run = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(run, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return run


def complete_attempts(run_dir: str | Path) -> dict[str, int]:
    """``{point_id: attempt}`` of every point that completed (the last complete attempt wins)."""
    done = {}
    for line in read_jsonl(Path(run_dir) / POINTS):
        if line.get("status") == "complete":
            done[line["point_id"]] = int(line["attempt"])
    return done


def attempts_so_far(run_dir: str | Path) -> dict[str, int]:
    """``{point_id: highest attempt number}`` over ended attempts and sent requests."""
    out: dict[str, int] = {}
    for line in read_jsonl(Path(run_dir) / POINTS) + read_jsonl(Path(run_dir) / REQUESTS):
        pid = line.get("point_id")
        if pid is not None:
            out[pid] = max(out.get(pid, 0), int(line.get("attempt", 1)))
    return out


def load_requests(run_dir: str | Path, complete_only: bool = True) -> pd.DataFrame:
    """``requests.jsonl`` as a DataFrame with derived columns (seconds):

    ``ttft_s`` (first token - send), ``e2e_s`` (last token - send, as ``vllm bench serve`` counts it),
    ``tpot_s`` ((e2e - ttft) / (token chunks - 1), requests with more than one chunk), ``time_scale``
    (the server's; 1 for real servers) and
    ``scaled_*`` versions multiplied by it (simulated seconds for ``servesim serve --speed K``), and
    for ``servesim serve`` runs ``server_ttft_s`` from the simulated stamps and
    ``scaled_client_overhead_s = scaled_ttft_s - server_ttft_s``, the server's real overhead
    multiplied by its ``--speed`` (report it, or use ``server_ttft_s``).
    """
    run_dir = Path(run_dir)
    rows = read_jsonl(run_dir / REQUESTS)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if complete_only:
        done = complete_attempts(run_dir)
        keep = [done.get(p) == a for p, a in zip(df.point_id, df.attempt)]
        df = df[keep].reset_index(drop=True)
    scale = float(load_run(run_dir).get("server", {}).get("time_scale", 1.0) or 1.0)
    df["ttft_s"] = df.first_token_time - df.send_time
    chunks = df.token_times.map(len)
    df["e2e_s"] = df.token_times.map(lambda t: t[-1] if t else float("nan"))
    df["tpot_s"] = ((df.e2e_s - df.ttft_s) / (chunks - 1)).where(chunks > 1)
    df["time_scale"] = scale
    for col in ("ttft_s", "e2e_s", "tpot_s"):
        df["scaled_" + col] = df[col] * scale
    if "server_token_times" in df:  # servesim serve's simulated clock
        first = df.server_token_times.map(lambda t: t[0] if isinstance(t, list) and t else float("nan"))
        df["server_ttft_s"] = first - df.get("server_arrival_time", float("nan"))
        # At --speed K the server's real per-request overhead (HTTP, event loop: wall time) is
        # counted K times in scaled_ttft_s; this is that inflation, in simulated seconds.
        df["scaled_client_overhead_s"] = df["scaled_ttft_s"] - df["server_ttft_s"]
    return df
