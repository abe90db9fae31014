"""Fault injection: a loopback proxy between ``servesim measure`` and ``servesim serve`` that drops,
stalls, corrupts and 5xx-es responses (issue 12 items 4, 6, 11, 15).

Whatever the proxy does, every request the harness sent has exactly one record in
``requests.jsonl`` (none lost, none duplicated), points with failed requests are ``failed``, and
``--resume`` through a healed proxy completes the run.  Everything binds to 127.0.0.1, the plan
is bounded (a few dozen requests) and every wait has a deadline.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import aiohttp
import pytest
import requests
from aiohttp import web
from test_measure_harness import ServeProcess, _free_port, measure

from servesim.measure.rundir import complete_attempts, read_jsonl

PLAN = {"name": "faults", "request_timeout_s": 20, "stall_timeout_s": 1.0, "max_duration_s": 300,
        "max_requests": 200,
        "families": {"prefill": {"prompt_lens": [16, 32, 64, 128], "output_len": 4, "repeats": 1},
                     "decode": {"concurrency": [6], "prompt_len": 32, "output_len": 8},
                     "rate": {"rates": [30], "num_requests": 6, "prompt_len": 16, "output_len": 4}}}
FAULTS = ("drop", None, "http_503", None, "corrupt_bytes", None, "stall", None, "json_list", None, None, None)


class FaultProxy:
    """Forwards to ``upstream``; the k-th completion request suffers ``FAULTS[k % 12]`` while ``active``."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.active, self.count = upstream, True, 0
        self.injected: Counter = Counter()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "proxy did not start"

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._ready.set()
        await self._stop.wait()
        await self.session.close()
        await runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = None
        if request.path == "/v1/completions":
            fault = FAULTS[self.count % len(FAULTS)] if self.active else None
            self.count += 1
            self.injected[fault] += 1
        if fault == "http_503":
            return web.json_response({"error": {"message": "injected", "type": "ServiceUnavailable",
                                                "param": None, "code": 503}}, status=503)
        async with self.session.request(request.method, self.upstream + request.path_qs, data=body,
                                        headers={"Content-Type": request.headers.get("Content-Type", "")},
                                        timeout=aiohttp.ClientTimeout(total=60)) as up:
            if up.headers.get("Content-Type", "").startswith("text/event-stream"):
                resp = web.StreamResponse(status=up.status, headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                try:
                    await self._relay(request, up, resp, fault)
                except ConnectionResetError:  # the harness gave up on a stalled stream
                    pass
                return resp
            return web.Response(status=up.status, body=await up.read(),
                                headers={"Content-Type": up.headers.get("Content-Type", "application/json")})

    async def _relay(self, request: web.Request, up, resp: web.StreamResponse, fault: str | None) -> None:
        n = 0
        async for line in up.content:
            n += line.startswith(b"data:")
            if n == 2 and fault == "drop":
                request.transport.close()  # the connection breaks mid-stream
                return
            if n == 2 and fault == "corrupt_bytes":
                await resp.write(b"data: \xff\xfe{\x80garbage\n\n")
            if n == 2 and fault == "json_list":
                await resp.write(b"data: [1, 2, 3]\n\n")
            if n == 2 and fault == "stall":
                await asyncio.sleep(2.5)  # past the plan's 1 s stall timeout
            await resp.write(line)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set_stop(), self._loop).result(10)
        self._thread.join(10)

    async def _set_stop(self) -> None:
        self._stop.set()


def _records_match_sent(out) -> tuple[int, int]:
    """Every ended attempt's num_sent equals its records in requests.jsonl; returns (sent, records)."""
    records = read_jsonl(out / "requests.jsonl")
    per_attempt = Counter((r["point_id"], r["attempt"]) for r in records)
    assert all(n == 1 for n in Counter((r["point_id"], r["attempt"], r["index"]) for r in records).values())
    sent = 0
    for p in read_jsonl(out / "points.jsonl"):
        assert per_attempt[(p["point_id"], p["attempt"])] == p["num_sent"], p
        sent += p["num_sent"]
    return sent, len(records)


def test_faults_lose_no_record_and_resume_completes(tmp_path):
    out = tmp_path / "run"
    with ServeProcess("--disable-uvicorn-access-log", speed=50) as server:
        proxy = FaultProxy(server.url)
        try:
            status = measure(proxy.url, out, PLAN, plots=False)
            assert status == 5  # points with failed requests: the run is incomplete
            assert {f for f in proxy.injected if f} == set(FAULTS) - {None}
            sent, n_records = _records_match_sent(out)
            assert sent == n_records > 0
            statuses = Counter(r["status"] for r in read_jsonl(out / "requests.jsonl"))
            assert {"ok", "http_error", "dropped", "bad_response", "timeout"} <= set(statuses), statuses
            points = read_jsonl(out / "points.jsonl")
            assert {p["status"] for p in points} == {"complete", "failed"}
            failed = {p["point_id"] for p in points if p["status"] == "failed"}
            proxy.active = False  # the network heals
            assert measure(proxy.url, out, PLAN, resume=True, plots=False) == 0
        finally:
            proxy.close()
    sent, n_records = _records_match_sent(out)
    assert sent == n_records
    done = complete_attempts(out)
    assert failed <= set(done) and all(done[p] == 2 for p in failed)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_torn_last_line_does_not_swallow_the_next_record(tmp_path):
    from servesim.measure.rundir import JsonlAppender
    path = tmp_path / "requests.jsonl"
    path.write_text('{"point_id": "a", "attempt": 1, "index": 0}\n{"point_id": "a", "att')  # killed mid-line
    writer = JsonlAppender(path)
    writer.write({"point_id": "b", "attempt": 1, "index": 0})
    writer.close()
    assert [r["point_id"] for r in read_jsonl(path)] == ["a", "b"]


def test_sigterm_stops_measure_and_the_server_it_launched(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps({"name": "long", "max_requests": 100, "request_timeout_s": 60,
                                "families": {"decode": {"concurrency": [2], "prompt_len": 32, "output_len": 4000}}}))
    launch = f"{sys.executable} -I -m servesim serve --port {port} --speed 1 --max-model-len 8192"
    proc = subprocess.Popen([sys.executable, "-I", "-m", "servesim", "measure", "--url", url, "--plan", str(plan),
                             "--out", str(tmp_path / "run"), "--launch", launch, "--no-plots",
                             "--launch-timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until requests are in flight
            try:
                text = requests.get(url + "/metrics", timeout=2).text
                if 'vllm:num_requests_running{engine="0",model_name="llama-3.1-8b"} 2.0' in text:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the launched server never ran the requests")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 4, out
    with pytest.raises(requests.RequestException):  # the launched server is gone
        requests.get(url + "/health", timeout=2)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "interrupted" and run["launch"]["started_by_harness"]
    records = read_jsonl(tmp_path / "run" / "requests.jsonl")
    assert len(records) == 2 and {r["status"] for r in records} == {"interrupted"}
    assert os.path.exists(tmp_path / "run" / "server.log")
