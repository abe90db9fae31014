"""The abort chain of ``servesim serve``: a client that goes away aborts its request.

As vLLM's API server (``AsyncLLM.generate`` aborts when its handler is cancelled, the engine core
frees the request between steps): a client that disconnects before its first token or mid-stream,
streaming or not, has its request removed from the scheduler (``LLMEngine.abort``), its KV blocks
freed and the abort counted; the requests still running and those that come later are unaffected.
End to end on loopback with a real HTTP client (aiohttp) that closes its connection early; every
wait has a deadline.
"""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from test_measure_harness import ServeProcess

from servesim.measure.metrics_csv import parse_metrics, split_series
from servesim.serve.live_engine import LiveEngine
from servesim.sim.config import make_engine_config
from servesim.sim.gpus import get_gpu
from servesim.sim.model_catalog import get_model

MODEL = "llama-3.1-8b"


def _value(metrics: dict[str, float], name: str, **labels: str) -> float:
    """One metric summed over the series whose labels include ``labels`` (0 when absent)."""
    total = 0.0
    for series, value in metrics.items():
        base, have = split_series(series)
        if base == name and all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


async def _metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(url + "/metrics") as resp:
        return parse_metrics(await resp.text())


async def _until(session, url: str, cond, what: str, timeout_s: float = 15.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        m = await _metrics(session, url)
        if cond(m):
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last /metrics: "
                                 f"{ {k: v for k, v in m.items() if 'num_requests' in k or 'usage' in k} }")
        await asyncio.sleep(0.05)


async def _scenario(url: str, kv_name: str) -> None:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            aiohttp.ClientSession(timeout=timeout) as long_session:
        running = lambda m: _value(m, "vllm:num_requests_running")  # noqa: E731
        waiting = lambda m: _value(m, "vllm:num_requests_waiting")  # noqa: E731
        aborts = lambda m: _value(m, "vllm:request_success_total", finished_reason="abort")  # noqa: E731

        # A: a long streaming request takes the only sequence slot and a third of the KV cache.
        body_a = {"model": MODEL, "prompt": [7] * 2000, "max_tokens": 2000, "stream": True}
        resp_a = await long_session.post(url + "/v1/completions", json=body_a)
        assert resp_a.status == 200
        assert (await resp_a.content.readline()).startswith(b"data:")  # its first token
        m = await _metrics(session, url)
        held = _value(m, kv_name)
        assert running(m) == 1 and held > 0.25, m  # 2000 prompt tokens of 6400

        # B: a streaming request queued behind A; its client goes away before the first token.
        body_b = {"model": MODEL, "prompt": [8] * 100, "max_tokens": 50, "stream": True}
        task_b = asyncio.create_task(session.post(url + "/v1/completions", json=body_b))
        await _until(session, url, lambda m: waiting(m) == 1, "B to wait")
        task_b.cancel()  # closes its connection
        m = await _until(session, url, lambda m: waiting(m) == 0, "B to be aborted")
        assert aborts(m) == 1 and running(m) == 1 and _value(m, kv_name) >= held  # A untouched

        # C: the same without streaming.
        body_c = {"model": MODEL, "prompt": [9] * 100, "max_tokens": 50}
        task_c = asyncio.create_task(session.post(url + "/v1/completions", json=body_c))
        await _until(session, url, lambda m: waiting(m) == 1, "C to wait")
        task_c.cancel()
        m = await _until(session, url, lambda m: waiting(m) == 0, "C to be aborted")
        assert aborts(m) == 2 and running(m) == 1

        # A's client goes away mid-stream: A is aborted and every block it held is free again.
        resp_a.close()
        m = await _until(session, url, lambda m: running(m) == 0, "A to be aborted")
        assert aborts(m) == 3 and _value(m, kv_name) == 0.0
        # Only A's prompt was ever computed: the aborted waiting requests cost nothing.
        assert _value(m, "vllm:prompt_tokens_total") == 2000

        # D, later: served in full as if nothing had happened.
        body_d = {"model": MODEL, "prompt": [10] * 50, "max_tokens": 20, "stream": True}
        async with session.post(url + "/v1/completions", json=body_d) as resp_d:
            lines = [line.strip() async for line in resp_d.content if line.startswith(b"data:")]
        assert lines[-1] == b"data: [DONE]" and len(lines) == 21 and b'"finish_reason": "length"' in lines[-2]
        m = await _until(session, url, lambda m: running(m) == 0 and waiting(m) == 0, "D to end")
        assert aborts(m) == 3 and _value(m, "vllm:request_success_total", finished_reason="length") == 1
        assert _value(m, kv_name) == 0.0 and _value(m, "vllm:prompt_tokens_total") == 2050


@pytest.mark.parametrize("engine, kv_name", [("vllm-v1", "vllm:kv_cache_usage_perc"),
                                             ("vllm-v0", "vllm:gpu_cache_usage_perc")])
def test_disconnected_clients_abort_their_requests_end_to_end(engine, kv_name):
    # Half speed: the long request A decodes for about 30 s of wall time, far longer than the
    # steps before its client leaves, even on a loaded machine.
    with ServeProcess("--engine", engine, "--num-gpu-blocks", "400", "--max-num-seqs", "1",
                      "--disable-uvicorn-access-log", speed=0.5) as proc:
        asyncio.run(_scenario(proc.url, kv_name))


# ----- the chain below HTTP: LiveEngine.abort -> LLMEngine.abort -------------------------------
def test_live_engine_abort_frees_blocks_records_the_abort_and_spares_the_rest():
    cfg = make_engine_config(get_model(MODEL), get_gpu("h100-sxm"), max_model_len=4096, num_gpu_blocks=400,
                             max_num_seqs=1)

    async def main() -> None:
        live = LiveEngine(cfg, speed=20.0)
        ended: list[int] = []
        live.on_abort = lambda request: ended.append(request.request_id)
        task = asyncio.create_task(live.run())
        kv = live.engine.kv
        free0 = kv.num_free_blocks
        a = live.submit(2000, 2000)
        b = live.submit(100, 50)  # waits behind a (max_num_seqs 1)
        await asyncio.wait_for(a.queue.get(), 10)  # a's first token
        assert live.engine.scheduler.num_waiting == 1 and kv.num_free_blocks < free0 - 120
        assert live.abort(b.request.request_id) and b.aborted  # from the waiting queue
        assert await asyncio.wait_for(b.queue.get(), 1) is None and b.token_times == []
        assert live.abort(a.request.request_id) and a.aborted  # while running
        assert kv.num_free_blocks == free0 and live.engine.scheduler.num_running == 0
        assert not live.abort(a.request.request_id)  # already ended
        c = live.submit(50, 5)
        times = []
        while (item := await asyncio.wait_for(c.queue.get(), 10)) is not None:
            times.append(item)
        assert len(times) == 5 and not c.aborted and not c.rejected
        assert ended == [b.request.request_id, a.request.request_id]
        assert kv.num_free_blocks == free0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
