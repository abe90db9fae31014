"""``servesim serve`` against vLLM's current OpenAI server (issue 12 items 9, 10, 12, 17-20).

Each test starts its own loopback server (``--port 0``) or shares the module's; every request has
a timeout and every wait loop a deadline.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
import requests
from test_measure_harness import ServeProcess

from servesim.measure.metrics_csv import cache_config, parse_metrics

MODEL = "llama-3.1-8b"
V1 = f'{{engine="0",model_name="{MODEL}"}}'


@pytest.fixture(scope="module")
def server():
    with ServeProcess("--output-len-dist", "fixed:9", speed=50) as proc:
        yield proc


def _metrics(url: str) -> dict:
    return parse_metrics(requests.get(url + "/metrics", timeout=5).text)


def _wait(cond, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _sse(resp) -> list[dict]:
    events = [line[5:].strip() for line in resp.iter_lines(decode_unicode=True) if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


# ----- item 17, 10: errors before submission, in vLLM's shape -------------------------------------
@pytest.mark.parametrize("body, param, text", [
    ({"prompt": []}, "prompt", "prompt cannot be empty"),
    ({"prompt": ""}, None, "prompt or prompt_embeds"),
    ({"prompt": [1, -5], "max_tokens": 2}, "prompt", "greater than or equal to 0"),
    ({"prompt": [1, 999_999_999], "max_tokens": 2}, "prompt", "out of vocabulary"),
    ({"prompt": [1, 2], "stream": True, "stream_options": "yes"}, "stream_options", "valid dictionary"),
    ({"prompt": [1, 2], "stream": True, "stream_options": [1]}, "stream_options", "valid dictionary"),
    ({"prompt": [1, 2], "stream_options": {"include_usage": True}}, None, "only be defined when `stream=True`"),
    ({"prompt": [1, 2], "max_tokens": -3}, "max_tokens", "at least 1"),
    ({"prompt": [1, 2], "max_tokens": "many"}, "max_tokens", "valid integer"),
    ({"prompt": [[1], [2]]}, "prompt", "one prompt per request"),
    ({"prompt": [1], "n": 2}, "n", "n=1"),
])
def test_bad_bodies_are_400_before_submission(server, body, param, text):
    before = _metrics(server.url)
    r = requests.post(server.url + "/v1/completions", json={"model": MODEL, **body}, timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == 400 and text in err["message"] and set(err) == {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"].split(".")[0] == param
    after = _metrics(server.url)  # nothing was submitted: no max_tokens observation, no request run
    key = "vllm:request_params_max_tokens_count" + V1
    assert after.get(key, 0) == before.get(key, 0)


@pytest.mark.parametrize("body, text", [
    ({"messages": []}, "at least 1 item"),
    ({"messages": "hi"}, "valid list"),
    ({"messages": [{"content": "no role"}]}, "role"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}, "at least 1"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5000}, "maximum context length is 4096"),
])
def test_bad_chat_bodies_are_400(server, body, text):
    r = requests.post(server.url + "/v1/chat/completions", json={"model": MODEL, **body}, timeout=10)
    assert r.status_code == 400 and text in r.json()["error"]["message"], r.text


def test_unknown_route_and_model_are_json_404(server):
    r = requests.get(server.url + "/v1/nothing", timeout=5)
    assert r.status_code == 404 and r.json()["error"]["code"] == 404
    r = requests.post(server.url + "/v1/completions", json={"model": "other", "prompt": [1]}, timeout=5)
    assert r.status_code == 404 and r.json()["error"] == {
        "message": "The model `other` does not exist.", "type": "NotFoundError", "param": "model", "code": 404}
    r = requests.post(server.url + "/v1/completions", data=b"{not json", timeout=5)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


# ----- item 18 -----------------------------------------------------------------------------------
def test_chat_without_max_tokens_stops_at_an_eos_length_from_the_distribution(server):
    r = requests.post(server.url + "/v1/chat/completions", timeout=10, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hello"}]}).json()
    assert r["usage"]["completion_tokens"] == 9 and r["choices"][0]["finish_reason"] == "stop"
    # ignore_eos runs to the context limit, as vLLM does
    r = requests.post(server.url + "/v1/chat/completions", timeout=30, json={
        "model": MODEL, "messages": [{"role": "user", "content": "x" * 4000}], "ignore_eos": True}).json()
    assert r["usage"]["total_tokens"] == 4096 and r["choices"][0]["finish_reason"] == "length"


def test_sharegpt_eos_lengths_are_seeded_and_realistic():
    from servesim.serve.support import EosLengths
    a, b = EosLengths("sharegpt", seed=3), EosLengths("sharegpt", seed=3)
    draws = [a.draw() for _ in range(200)]
    assert draws == [b.draw() for _ in range(200)]
    assert 20 < sorted(draws)[100] < 2000 and len(set(draws)) > 50  # ShareGPT outputs: a few hundred tokens


def test_continuous_usage_stats_and_role_chunk(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    chunks = _sse(requests.post(server.url + "/v1/chat/completions", json=body, stream=True, timeout=10))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["usage"]["completion_tokens"] for c in chunks] == [0, 1, 2, 3, 4, 4]
    assert chunks[-1]["choices"] == []


def test_tokenize_detokenize_ping(server):
    r = requests.post(server.url + "/tokenize", json={"model": MODEL, "prompt": "x" * 40}, timeout=5).json()
    assert r["count"] == 10 == len(r["tokens"]) and r["max_model_len"] == 4096
    assert all(0 <= t < 128256 for t in r["tokens"])
    r = requests.post(server.url + "/detokenize", json={"model": MODEL, "tokens": [1, 2, 3]}, timeout=5)
    assert r.status_code == 200 and isinstance(r.json()["prompt"], str)
    assert requests.post(server.url + "/detokenize", json={"tokens": [-1]}, timeout=5).status_code == 400
    assert requests.post(server.url + "/tokenize", json={}, timeout=5).status_code == 400
    assert requests.get(server.url + "/ping", timeout=5).status_code == 200
    assert requests.post(server.url + "/ping", timeout=5).status_code == 200


def test_access_log_and_stats_lines(monkeypatch):
    monkeypatch.setenv("VLLM_LOG_STATS_INTERVAL", "0.3")
    with ServeProcess(speed=5) as proc:
        requests.post(proc.url + "/v1/completions", json={"model": MODEL, "prompt": [5] * 8, "max_tokens": 200,
                                                          "ignore_eos": True}, timeout=30)
        lines: list[str] = []

        def both() -> bool:
            lines.extend(proc.drain())
            return (any("Avg prompt throughput" in x for x in lines)
                    and any('"POST /v1/completions HTTP/1.1" 200 OK' in x for x in lines))
        assert _wait(both, 10), lines
    assert any(x.startswith('INFO:     127.0.0.1:') and '"POST /v1/completions HTTP/1.1" 200 OK' in x for x in lines)
    stats = next(x for x in lines if "Avg prompt throughput" in x)
    assert "Running: " in stats and "GPU KV cache usage: " in stats


def test_api_key_guards_v1_routes():
    with ServeProcess("--api-key", "s3cret", speed=50) as proc:
        body = {"model": MODEL, "prompt": [1, 2], "max_tokens": 1}
        r = requests.post(proc.url + "/v1/completions", json=body, timeout=5)
        assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}
        bad = requests.get(proc.url + "/v1/models", headers={"Authorization": "Bearer nope"}, timeout=5)
        assert bad.status_code == 401
        ok = requests.post(proc.url + "/v1/completions", json=body, timeout=5,
                           headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert requests.get(proc.url + "/health", timeout=5).status_code == 200  # not guarded, as in vLLM


# ----- item 19 -----------------------------------------------------------------------------------
def test_v1_histograms_and_idle_kv_usage_zero(server):
    requests.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": [5] * 20, "max_tokens": 5},
                  timeout=10)
    m = _metrics(server.url)
    for family in ("request_prefill_time_seconds", "request_decode_time_seconds", "request_inference_time_seconds",
                   "iteration_tokens_total", "request_params_max_tokens"):
        assert m[f"vllm:{family}_count" + V1] >= 1, family
    assert m["vllm:prefix_cache_queries_total" + V1] >= 20 and "vllm:prefix_cache_hits_total" + V1 in m
    assert _wait(lambda: _metrics(server.url)["vllm:num_requests_running" + V1] == 0)
    assert _metrics(server.url)["vllm:kv_cache_usage_perc" + V1] == 0.0  # v1's null block is not usage


def test_v0_cpu_blocks_follow_swap_space():
    with ServeProcess("--engine", "vllm-v0", "--swap-space", "2", speed=50) as proc:
        text = "".join(proc.seen)
        labels = cache_config(_metrics(proc.url))
    # llama-3.1-8b: 2 * 32 layers * 8 KV heads * 128 * 2 bytes = 128 KiB a token, 2 MiB a 16-token block
    assert labels["num_cpu_blocks"] == str(2 * 2**30 // (2 * 32 * 8 * 128 * 2 * 16)) == "1024"
    assert "# CPU blocks: 1024" in text


# ----- item 9: a disconnected client's request is aborted and its KV freed -------------------------
def test_disconnect_aborts_the_request_and_frees_its_blocks():
    with ServeProcess("--num-gpu-blocks", "400", speed=1) as proc:
        body = {"model": MODEL, "prompt": [7] * 2000, "max_tokens": 2000, "stream": True}
        resp = requests.post(proc.url + "/v1/completions", json=body, stream=True, timeout=10)
        lines = resp.iter_lines()
        assert any(line.startswith(b"data:") for line in lines)  # first token arrived
        assert _metrics(proc.url)["vllm:kv_cache_usage_perc" + V1] > 0.25  # 2000 of 6400 tokens
        resp.close()  # the client goes away mid-stream
        assert _wait(lambda: _metrics(proc.url)["vllm:num_requests_running" + V1] == 0, 10)
        m = _metrics(proc.url)
        assert m["vllm:kv_cache_usage_perc" + V1] == 0.0
        assert m[f'vllm:request_success_total{{engine="0",finished_reason="abort",model_name="{MODEL}"}}'] == 1
        # a non-streaming request whose client hangs up is aborted too
        with socket.create_connection(("127.0.0.1", int(proc.url.rsplit(":", 1)[1])), timeout=5) as sock:
            payload = json.dumps({"model": MODEL, "prompt": [7] * 2000, "max_tokens": 2000}).encode()
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
            assert _wait(lambda: _metrics(proc.url)["vllm:num_requests_running" + V1] == 1, 10)
        assert _wait(lambda: _metrics(proc.url)["vllm:num_requests_running" + V1] == 0, 10)
        assert _metrics(proc.url)["vllm:kv_cache_usage_perc" + V1] == 0.0


# ----- item 20 -----------------------------------------------------------------------------------
def test_speed_inflation_is_said_and_reported(server):
    assert "times time_scale" in requests.get(server.url + "/version", timeout=5).json()["client_latency_note"]
    assert any("--speed 50: latencies a client measures include" in line for line in server.seen)


# ----- item 12: slow clients time out; a low fd limit does not flood the log ---------------------
def test_stalled_connection_is_closed_and_a_non_draining_write_times_out():
    import asyncio

    from servesim.serve.server import ServeApp
    from servesim.serve.support import ServeOptions
    from servesim.sim.config import make_engine_config
    from servesim.sim.gpus import get_gpu
    from servesim.sim.model_catalog import get_model

    with ServeProcess(speed=50) as proc:
        with socket.create_connection(("127.0.0.1", int(proc.url.rsplit(":", 1)[1])), timeout=15) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            t0 = time.monotonic()
            assert sock.recv(100) == b""  # the server hung up
            assert time.monotonic() - t0 < 12

    class NeverDrains:
        async def write(self, data: bytes) -> None:
            await asyncio.Event().wait()

    cfg = make_engine_config(get_model(MODEL), get_gpu("h100-sxm"), max_model_len=4096)

    async def main() -> float:
        app = ServeApp(cfg, ServeOptions(served_model_name=MODEL, stream_write_timeout_s=0.2, log_stats=False))
        t0 = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await app._write(NeverDrains(), b"data: x\n\n")
        return time.monotonic() - t0

    assert 0.15 < asyncio.run(main()) < 2.0


def test_low_fd_limit_does_not_flood_the_log():
    import resource
    import subprocess
    import sys

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

    proc = subprocess.Popen([sys.executable, "-I", "-m", "servesim", "serve", "--port", "0", "--max-model-len", "4096"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=limit)
    try:
        line, deadline = "", time.monotonic() + 30
        while "Serving" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
        port = int(line.rsplit(":", 1)[1])
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(80)]
        time.sleep(3)
        for s in socks:
            s.close()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert "cannot accept connections: Too many open files" in out
    assert len(out) < 5000, f"{len(out)} bytes of log in 3 s"


def test_measure_reports_the_speed_inflation(server, tmp_path, capsys):
    from servesim.cli import main
    from servesim.measure.rundir import load_requests
    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps({"name": "p", "max_requests": 20,
                                "families": {"prefill": {"prompt_lens": [16], "output_len": 2, "repeats": 3}}}))
    code = main(["measure", "--url", server.url, "--plan", str(plan), "--out", str(tmp_path / "run"), "--no-plots",
                 "--settle", "0"])
    err = capsys.readouterr().err
    assert code == 0 and "--speed 50: scaled client TTFTs include its real per-request overhead times 50" in err
    df = load_requests(tmp_path / "run")
    inflation = df["scaled_client_overhead_s"]
    assert (inflation > 0).all()  # wall overhead, scaled by 50, never negative
    assert ((df["scaled_ttft_s"] - inflation - df["server_ttft_s"]).abs() < 1e-9).all()


def test_accept_retry_after_shutdown_is_not_logged():
    """asyncio re-arms a listening socket after a refused accept() (``_start_serving`` by
    ``call_later``); fired after shutdown it raises on fd -1.  That retry is dropped silently;
    any other callback error still reaches asyncio's default handler."""
    from servesim.serve.support import QuietAcceptErrors

    def _start_serving() -> None: ...

    def other() -> None: ...

    seen = []

    class Loop:
        def time(self) -> float:
            return 0.0

        def default_exception_handler(self, context) -> None:
            seen.append(context)

    loop, handler = asyncio.new_event_loop(), QuietAcceptErrors(40)
    try:
        retry = asyncio.TimerHandle(1.0, _start_serving, (), loop)
        handler(Loop(), {"message": "Exception in callback", "exception": ValueError("Invalid file descriptor: -1"),
                         "handle": retry})
        assert seen == []
        unrelated = asyncio.TimerHandle(1.0, other, (), loop)
        handler(Loop(), {"message": "Exception in callback", "exception": ValueError("x"), "handle": unrelated})
        assert len(seen) == 1
    finally:
        loop.close()
