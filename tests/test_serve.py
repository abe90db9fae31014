"""``servesim serve``: the OpenAI-compatible routes, vLLM's metric names, and that it runs the very
engine of ``servesim simulate`` (same token times for the same requests)."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import requests
from test_measure_harness import ServeProcess

from servesim.measure.metrics_csv import cache_config, parse_metrics
from servesim.serve.live_engine import LiveEngine
from servesim.sim.config import make_engine_config
from servesim.sim.gpus import get_gpu
from servesim.sim.model_catalog import get_model
from servesim.sim.runner import SimOptions, simulate
from servesim.sim.workload import Workload

MODEL = "llama-3.1-8b"


@pytest.fixture(scope="module")
def server():
    with ServeProcess(speed=50) as proc:
        yield proc.url


def _sse(resp) -> list[dict]:
    events = [line[5:].strip() for line in resp.iter_lines(decode_unicode=True) if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_info_routes(server):
    assert requests.get(server + "/health", timeout=5).status_code == 200
    models = requests.get(server + "/v1/models", timeout=5).json()
    assert models["data"][0]["id"] == MODEL and models["data"][0]["max_model_len"] == 4096
    version = requests.get(server + "/version", timeout=5).json()
    assert version["version"] == "0.24.0" and version["time_scale"] == 50 and version["engine"] == "vllm-v1"
    assert version["scheduler"]["max_num_batched_tokens"] == 8192


def test_completions_stream_exact_lengths_with_usage(server):
    body = {"model": MODEL, "prompt": list(range(100, 150)), "max_tokens": 7, "min_tokens": 7, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    chunks = _sse(requests.post(server + "/v1/completions", json=body, stream=True, timeout=10))
    tokens = [c for c in chunks if c["choices"]]
    assert len(tokens) == 7 and tokens[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in tokens[:-1])
    assert chunks[-1]["usage"] == {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}
    stamps = [c["servesim_t"] for c in tokens]
    assert stamps == sorted(stamps) and tokens[0]["servesim_arrival_t"] < stamps[0]


def test_completions_and_chat_without_streaming(server):
    r = requests.post(server + "/v1/completions", json={"model": MODEL, "prompt": "x" * 40, "max_tokens": 3},
                      timeout=10).json()
    assert r["object"] == "text_completion" and r["usage"] == {"prompt_tokens": 10, "completion_tokens": 3,
                                                                "total_tokens": 13}
    r = requests.post(server + "/v1/chat/completions", timeout=10, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}).json()
    assert r["object"] == "chat.completion" and r["choices"][0]["message"]["role"] == "assistant"
    assert r["usage"]["completion_tokens"] == 4 and len(r["choices"][0]["message"]["content"].split()) == 4


def test_chat_stream(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 3, "stream": True}
    chunks = _sse(requests.post(server + "/v1/chat/completions", json=body, stream=True, timeout=10))
    # vLLM's chat stream opens with the role chunk (empty content), then one chunk per token
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * 4
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("body, status, text", [
    ({"model": MODEL, "prompt": [1] * 4000, "max_tokens": 200}, 400, "maximum context length is 4096"),
    ({"model": "other", "prompt": [1], "max_tokens": 1}, 404, "does not exist"),
    ({"model": MODEL, "prompt": [1], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": {"a": 1}}, 400, "prompt"),
])
def test_errors_look_like_vllms(server, body, status, text):
    r = requests.post(server + "/v1/completions", json=body, timeout=10)
    err = r.json()["error"]  # vLLM's ErrorResponse: {"error": {"message", "type", "param", "code"}}
    assert r.status_code == status == err["code"] and text in err["message"]
    assert set(err) == {"message", "type", "param", "code"}


def test_metrics_use_vllm_v1_names_and_count_tokens(server):
    before = parse_metrics(requests.get(server + "/metrics", timeout=5).text)
    requests.post(server + "/v1/completions", json={"model": MODEL, "prompt": [5] * 20, "max_tokens": 5}, timeout=10)
    after = parse_metrics(requests.get(server + "/metrics", timeout=5).text)
    label = f'{{engine="0",model_name="{MODEL}"}}'
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:num_preemptions_total", "vllm:time_to_first_token_seconds_count",
                 "vllm:inter_token_latency_seconds_count", "vllm:e2e_request_latency_seconds_count"):
        assert name + label in after, name
    gen = "vllm:generation_tokens_total" + label
    assert after[gen] - before[gen] == 5
    assert after["vllm:prompt_tokens_total" + label] - before["vllm:prompt_tokens_total" + label] == 20
    assert int(cache_config(after)["num_gpu_blocks"]) > 0


def test_v0_engine_serves_v0_metric_names():
    with ServeProcess("--engine", "vllm-v0", speed=50) as proc:
        requests.post(proc.url + "/v1/completions", json={"model": MODEL, "prompt": [5] * 8, "max_tokens": 3},
                      timeout=10)
        names = {k.split("{")[0] for k in parse_metrics(requests.get(proc.url + "/metrics", timeout=5).text)}
    assert {"vllm:gpu_cache_usage_perc", "vllm:num_requests_swapped", "vllm:time_per_output_token_seconds_count",
            "vllm:cache_config_info"} <= names
    assert "vllm:kv_cache_usage_perc" not in names


@pytest.mark.parametrize("engine", ["vllm-v1", "vllm-v0"])
def test_live_engine_reproduces_simulate_token_for_token(engine):
    """A burst pushed into the live engine gives the same first-token and finish times as
    ``servesim simulate`` (exact path) on the same burst: it is the same engine."""
    cfg = make_engine_config(get_model(MODEL), get_gpu("h100-sxm"), engine, max_model_len=1600,
                             max_num_batched_tokens=4096 if engine == "vllm-v1" else None, num_gpu_blocks=100)
    prompts, outputs = [700, 30, 1200, 64, 900, 200], [300, 300, 100, 300, 300, 300]

    async def live_run():
        live = LiveEngine(cfg, speed=1e4)
        live.sim_now = lambda: 0.0  # freeze the clock while the burst arrives
        streams = [live.submit(p, o) for p, o in zip(prompts, outputs)]
        del live.sim_now
        task = asyncio.create_task(live.run())
        for s in streams:
            while await s.queue.get() is not None:
                pass
        task.cancel()
        return [s.token_times for s in streams]

    token_times = asyncio.run(live_run())
    n = len(prompts)
    workload = Workload(np.zeros(n), np.array(prompts), np.array(outputs), name="burst")
    reference = simulate(cfg, workload, SimOptions(exact=True)).records.to_frame()
    assert [len(t) for t in token_times] == outputs
    np.testing.assert_allclose([t[0] for t in token_times], reference.first_token_s, rtol=1e-12)
    np.testing.assert_allclose([t[-1] for t in token_times], reference.finish_s, rtol=1e-12)
    assert reference.num_preemptions.sum() > 0  # 100 blocks: the burst preempts, and both agree on it
