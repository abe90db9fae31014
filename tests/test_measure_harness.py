"""The measurement harness against ``servesim serve`` on loopback (no GPU).

A tiny plan with every probe family completes and its files follow the documented schemas
(docs/measure.md); a server killed mid-plan leaves a usable partial run that ``--resume``
completes; the launcher starts a server only when none answers and stops only what it started;
server faults (400s) are recorded per request.  Servers run as subprocesses on ports they pick
themselves (``--port 0``); every plan is bounded in requests and time.
"""
from __future__ import annotations

import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from servesim.cli import main
from servesim.measure.harness import MeasureOptions, run_measurement
from servesim.measure.plans import plan_from_dict
from servesim.measure.rundir import complete_attempts, load_requests, read_jsonl

TINY_PLAN = {
    "name": "tiny", "request_timeout_s": 30, "stall_timeout_s": 15, "max_duration_s": 120, "max_requests": 200,
    "families": {
        "prefill": {"prompt_lens": [16, 512, "max"], "output_len": 1, "repeats": 2},
        "decode": {"concurrency": [1, 8], "prompt_len": 32, "output_len": 12},
        "context": {"prompt_lens": [1024], "concurrency": [2], "output_len": 6},
        "kv_capacity": {},
        "concurrency": {"concurrency": [4], "prompt_len": 32, "output_len": 8},
        "seqlen": {"concurrency": 2, "lengths": [[64, 4], [128, 8]]},
        "rate": {"rates": [40], "num_requests": 6, "prompt_len": 16, "output_len": 4},
    }}
RECORD_FIELDS = {"point_id": str, "family": str, "attempt": int, "index": int, "params": dict,
                 "prompt_tokens": int, "max_tokens": int, "send_time": float, "first_token_time": (float, type(None)),
                 "finish_time": float, "token_times": list, "output_tokens": int, "status": str,
                 "http_status": (int, type(None)), "error": (str, type(None))}
RUN_KEYS = {"schema_version", "plan", "sessions", "url", "model", "max_model_len", "server", "time_scale",
            "kv_capacity", "points", "status", "start_time", "end_time", "metrics"}


class ServeProcess:
    """``python -m servesim serve`` in a subprocess on a free loopback port (``--port 0``).

    Every subprocess of the suite runs ``python -I -m servesim``: isolated mode keeps the working
    directory off ``sys.path``, so the installed package runs, not the source folder ``servesim/``
    of the repository root (which holds only the console package; ARCHITECTURE.md)."""

    def __init__(self, *args: str, speed: float = 20.0, timeout_s: float = 30.0) -> None:
        cmd = [sys.executable, "-I", "-m", "servesim", "serve", "--port", "0", "--speed", str(speed),
               "--max-model-len", "4096", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()  # keeps the pipe drained
        seen, deadline = [], time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            seen.append(line)
            m = re.search(r"Serving .* on (http://127\.0\.0\.1:\d+)", line)
            if m:
                self.url = m.group(1)
                self.seen = seen  # the start-up lines
                return
        self.kill()
        raise RuntimeError("servesim serve did not start:\n" + "".join(seen))

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def drain(self) -> list[str]:
        """The output lines printed since the last call (or since start-up)."""
        out = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def measure(url: str, out: Path, plan: dict, **kw) -> int:
    return run_measurement(MeasureOptions(url=url, out=out, plan=plan_from_dict(plan), settle_s=0.05,
                                          scrape_interval_s=0.1, **kw))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tiny_plan_completes_and_files_follow_their_schemas(tmp_path, capsys):
    out = tmp_path / "run"
    with ServeProcess(speed=20) as server:
        assert measure(server.url, out, TINY_PLAN) == 0
    run = json.loads((out / "run.json").read_text())
    assert RUN_KEYS <= set(run)
    assert run["status"] == "complete" and run["time_scale"] == 20.0 and run["max_model_len"] == 4096
    assert run["server"]["version_info"]["engine"] == "vllm-v1"
    assert run["kv_capacity"]["num_gpu_blocks"] > 0 and run["kv_capacity"]["block_size"] == 16
    assert run["plan"]["name"] == "tiny" and run["points"]["planned"] == 11
    # requests.jsonl: one line per request, every documented field with its type
    records = read_jsonl(out / "requests.jsonl")
    assert len(records) == 6 + 9 + 2 + 4 + 4 + 6
    for r in records:
        for key, kind in RECORD_FIELDS.items():
            assert isinstance(r[key], kind), (key, r[key])
        assert r["status"] == "ok" and r["output_tokens"] == r["max_tokens"] == len(r["token_times"])
        assert r["send_time"] <= r["first_token_time"] <= r["finish_time"]
        assert r["token_times"] == sorted(r["token_times"])
        assert len(r["server_token_times"]) == r["max_tokens"]
    assert {r["prompt_tokens"] for r in records if r["point_id"] == "prefill/pmax"} == {4095}
    # points.jsonl: every point complete once
    points = read_jsonl(out / "points.jsonl")
    assert [p["status"] for p in points] == ["complete"] * 11
    assert sum(p["num_sent"] for p in points) == len(records)
    # metrics.csv: time first, union of series, monotone time, server state under vLLM names
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics.columns[0] == "time_s" and metrics.time_s.is_monotonic_increasing and len(metrics) >= 5
    for name in ("vllm:num_requests_running", "vllm:kv_cache_usage_perc", "vllm:generation_tokens_total",
                 "vllm:time_to_first_token_seconds_count", "vllm:cache_config_info"):
        assert any(c.startswith(name) for c in metrics.columns), name
    gen = metrics[[c for c in metrics.columns if c.startswith("vllm:generation_tokens_total")][0]]
    assert gen.dropna().is_monotonic_increasing
    # derived columns and figures
    df = load_requests(out)
    assert (df.scaled_ttft_s == df.ttft_s * 20).all() and (df.server_ttft_s > 0).all()
    assert {p.name for p in (out / "plots").iterdir()} == {f"{f}.png" for f in (
        "prefill", "decode", "context", "concurrency", "seqlen", "rate", "timeline")}
    # the run directory replays in `servesim validate`: one measured run per load point, compared on
    # the simulator's clock that servesim serve stamps; the same engine and profile reproduce it exactly
    assert main(["validate", str(out), "--max-model-len", "4096", "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert len(compared) == 7 and all(len(c["rows"]) == 17 for c in compared)
    assert max(abs(r["rel_error"]) for c in compared for r in c["rows"]) < 1e-6


def test_server_killed_mid_plan_leaves_a_partial_run_that_resume_completes(tmp_path):
    out = tmp_path / "run"
    plan = {"name": "kill", "request_timeout_s": 20, "stall_timeout_s": 5, "max_duration_s": 120,
            "families": {"prefill": {"prompt_lens": [16, 64], "repeats": 1},
                         "decode": {"concurrency": [4, 6, 8], "prompt_len": 16, "output_len": 150}}}
    server = ServeProcess(speed=2)
    status: list[int] = []
    worker = threading.Thread(target=lambda: status.append(measure(server.url, out, plan, plots=False)))
    worker.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
            r.get("point_id") == "decode/n4" for r in read_jsonl(out / "requests.jsonl")):
        time.sleep(0.05)  # decode/n4 finished; decode/n6 is running (150 steps of ~8 ms at speed 2)
    time.sleep(0.2)
    server.kill()
    worker.join(timeout=30)
    assert status == [3]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "aborted"
    points = read_jsonl(out / "points.jsonl")
    assert [p["status"] for p in points] == ["complete"] * 3 + ["aborted"]
    lost = [r for r in read_jsonl(out / "requests.jsonl") if r["point_id"] == "decode/n6"]
    assert lost and all(r["status"] in ("dropped", "connect_error", "timeout") for r in lost)
    partial = load_requests(out)  # usable: the complete points only
    assert set(partial.point_id) == {"prefill/p16", "prefill/p64", "decode/n4"}
    # --resume on a fresh server skips the three complete points and finishes the rest
    with ServeProcess(speed=20) as again:
        assert measure(again.url, out, plan, resume=True, plots=False) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and len(run["sessions"]) == 2
    assert complete_attempts(out) == {"prefill/p16": 1, "prefill/p64": 1, "decode/n4": 1, "decode/n6": 2,
                                      "decode/n8": 1}
    records = read_jsonl(out / "requests.jsonl")
    assert sum(r["point_id"] == "decode/n6" and r["attempt"] == 1 for r in records) == len(lost)  # kept
    full = load_requests(out)
    assert len(full) == 1 + 1 + 4 + 6 + 8 and (full.status == "ok").all()
    # a different plan cannot resume this run
    with pytest.raises(ValueError, match="--resume"):
        measure("http://127.0.0.1:1", out, {**plan, "seed": 1}, resume=True)
    with pytest.raises(ValueError, match="already holds a run"):
        measure("http://127.0.0.1:1", out, plan)


def test_launcher_starts_reads_kv_and_stops_only_its_own_server(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = f"{sys.executable} -I -m servesim serve --port {port} --speed 50 --max-model-len 2048 --num-gpu-blocks 777"
    plan = {"name": "launch", "families": {"kv_capacity": {}, "prefill": {"prompt_lens": [16], "repeats": 1}}}
    out = tmp_path / "run"
    assert measure(url, out, plan, launch=cmd, plots=False) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["launch"]["started_by_harness"] and run["launch"]["flags"]["num_gpu_blocks"] == "777"
    assert run["kv_capacity"]["num_gpu_blocks"] == 777 and run["kv_capacity"]["kv_cache_tokens"] == 777 * 16
    assert "GPU KV cache size" in (out / "server.log").read_text()
    assert run["launch"]["exit_status"] is not None  # it stopped the server it started
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    # A server already answering is used as is, and left running.
    with ServeProcess(speed=50) as server:
        out2 = tmp_path / "run2"
        assert measure(server.url, out2, plan, launch="false-command-never-run", plots=False) == 0
        assert not json.loads((out2 / "run.json").read_text())["launch"]["started_by_harness"]
        assert server.proc.poll() is None


def test_server_errors_are_recorded_per_request_and_the_run_goes_on(tmp_path):
    plan = {"name": "errors", "families": {"prefill": {"prompt_lens": [16, 5000], "repeats": 2}}}
    with ServeProcess("--max-num-batched-tokens", "2048", speed=50) as server:
        out = tmp_path / "run"
        # Claim a longer context than the server has: the 5000-token prompts get vLLM's 400.
        # The run goes on past the failed point but is not complete (exit 5): --resume re-measures it.
        assert measure(server.url, out, plan, max_model_len=8192, plots=False) == 5
    records = read_jsonl(out / "requests.jsonl")
    bad = [r for r in records if r["prompt_tokens"] == 5000]
    assert len(bad) == 2 and all(r["status"] == "http_error" and r["http_status"] == 400 for r in bad)
    assert "maximum context length" in bad[0]["error"]
    assert all(r["status"] == "ok" for r in records if r["prompt_tokens"] == 16)
    assert json.loads((out / "run.json").read_text())["status"] == "incomplete"
    assert {p["point_id"]: p["status"] for p in read_jsonl(out / "points.jsonl")} == {
        "prefill/p16": "complete", "prefill/p5000": "failed"}
    assert complete_attempts(out) == {"prefill/p16": 1}


def test_no_server_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no server answers"):
        measure(f"http://127.0.0.1:{_free_port()}", tmp_path / "run", {"families": {"kv_capacity": {}}})
