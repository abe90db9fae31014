"""``servesim serve``: the simulator behind vLLM's OpenAI-compatible HTTP interface.

Routes: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (streaming server-sent events or
one JSON answer), ``GET /v1/models``, ``/health``, ``/version``, ``/metrics`` (Prometheus text,
:mod:`servesim.measure.serve_metrics`).  Requests go to a :class:`LiveEngine`, the engine of
``servesim simulate`` advanced with the wall clock times ``--speed`` (docs/serve.md).

Lengths: a prompt given as token ids counts one token per id; text counts one token per 4 UTF-8
bytes (no tokenizer is loaded; the harness always sends token ids).  ``max_tokens`` outputs are
produced exactly (as with vLLM's ``ignore_eos``); their text is filler words, one per token.
Each streamed chunk also carries ``servesim_t``, the simulated time the token was produced (the
first one ``servesim_arrival_t`` too): clients ignore unknown keys, and the harness records them
as ``server_token_times`` so a fit can use the simulator's own clock (docs/serve.md).
A request longer than ``max_model_len`` is answered 400 as vLLM does.  Known difference: a client
that disconnects does not abort its simulated request, which runs to completion.
"""
from __future__ import annotations

import asyncio
import json
import math
import signal
import sys
import time
import uuid

from aiohttp import web

from .. import __version__
from ..sim.config import EngineConfig, EngineVersion
from .live_engine import LiveEngine, Stream
from .serve_metrics import ServeMetrics

FILLER = ("the", " of", " and", " to", " in", " a", " is", " that", " for", " it", " as", " was", " with",
          " be", " by", " on", " not", " he", " this", " are")
FILLER_JSON = tuple(json.dumps(w).encode() for w in FILLER)


def error(message: str, status: int = 400, kind: str = "BadRequestError") -> web.Response:
    return web.json_response({"object": "error", "message": message, "type": kind, "param": None,
                              "code": status}, status=status)


def count_prompt_tokens(prompt) -> int:
    """Tokens of a completions ``prompt``: ids count one each, text one per 4 UTF-8 bytes."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (list, str)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, str):
        return max(1, math.ceil(len(prompt.encode()) / 4))
    raise ValueError("prompt must be a string, a list of token ids, or a batch of one of those")


def count_chat_tokens(messages) -> int:
    """Chat prompt tokens: the contents at 4 bytes a token, plus 4 template tokens per message."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    total = 0
    for m in messages:
        content = m.get("content", "") if isinstance(m, dict) else ""
        if isinstance(content, list):  # [{"type": "text", "text": ...}]
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        total += math.ceil(len(str(content).encode()) / 4) + 4
    return total


class ServeApp:
    """The HTTP handlers around one live engine."""

    def __init__(self, cfg: EngineConfig, speed: float, served_model_name: str) -> None:
        self.cfg, self.speed, self.model_name = cfg, speed, served_model_name
        self.v1 = cfg.engine is EngineVersion.V1
        self.live = LiveEngine(cfg, speed)  # raises ValueError now if the model does not fit
        c = cfg.cache
        cache_labels = {"block_size": str(c.block_size), "cache_dtype": c.kv_cache_dtype,
                        "enable_prefix_caching": str(c.enable_prefix_caching),
                        "gpu_memory_utilization": str(c.gpu_memory_utilization),
                        "num_cpu_blocks": "0", "num_gpu_blocks": str(self.live.engine.memory.num_gpu_blocks),
                        "num_gpu_blocks_override": str(c.num_gpu_blocks_override)}
        self.metrics = ServeMetrics(self.live, served_model_name, self.v1, cache_labels)
        self.live.on_first_token, self.live.on_token_gap = self.metrics.first_token, self.metrics.token_gap
        self.live.on_finish = self.metrics.finished
        self.created = int(time.time())

    def build(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/metrics", self.prometheus)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        self._task = asyncio.create_task(self.live.run())

    async def _stop(self, app: web.Application) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    # ----- info routes ---------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        s = self.cfg.scheduler
        return web.json_response({
            "version": self.cfg.profile.engine_version or "unknown", "servesim_version": __version__,
            "engine": self.cfg.engine.value, "time_scale": self.speed, "model": self.cfg.model.name,
            "gpu": self.cfg.gpu.name, "tensor_parallel_size": self.cfg.parallel.tensor_parallel_size,
            "profile": self.cfg.profile.name, "profile_path": self.cfg.profile.source_path,
            "scheduler": {"max_num_seqs": s.max_num_seqs, "max_num_batched_tokens": s.max_num_batched_tokens,
                          "max_model_len": s.max_model_len, "enable_chunked_prefill": s.enable_chunked_prefill},
            "num_gpu_blocks": self.live.engine.memory.num_gpu_blocks, "block_size": self.cfg.cache.block_size})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.model_name, "object": "model", "created": self.created, "owned_by": "servesim",
            "root": self.model_name, "parent": None, "max_model_len": self.cfg.scheduler.max_model_len,
            "permission": []}]})

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})

    # ----- generation ----------------------------------------------------------------------
    async def _parse(self, request: web.Request, chat: bool):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None, error("the request body is not valid JSON")
        if not isinstance(body, dict):
            return None, error("the request body must be a JSON object")
        if body.get("model", self.model_name) != self.model_name:
            return None, error(f"The model `{body.get('model')}` does not exist.", 404, "NotFoundError")
        if body.get("n", 1) != 1:
            return None, error("servesim serve supports n=1 only")
        try:
            prompt = count_chat_tokens(body.get("messages")) if chat else count_prompt_tokens(body.get("prompt"))
        except (ValueError, AttributeError, TypeError) as exc:
            return None, error(str(exc))
        max_len = self.cfg.scheduler.max_model_len
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens")) if chat else body.get("max_tokens", 16)
        if max_tokens is None:
            max_tokens = max_len - prompt
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return None, error(f"max_tokens must be a positive integer (got {max_tokens!r})")
        if prompt + max_tokens > max_len:
            return None, error(f"This model's maximum context length is {max_len} tokens. However, you requested "
                               f"{prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in the "
                               "completion). Please reduce the length of the messages or completion.")
        return (body, prompt, max_tokens), None

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        parsed, err = await self._parse(request, chat)
        if err is not None:
            return err
        body, prompt_tokens, max_tokens = parsed
        stream = self.live.submit(prompt_tokens, max_tokens)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        base = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.model_name}
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(request, stream, base, chat, usage, prompt_tokens, max_tokens)
        n = 0
        while (await stream.queue.get()) is not None:
            n += 1
        if stream.rejected:
            return error("the request can never fit in the KV cache")
        text = "".join(FILLER[i % len(FILLER)] for i in range(n))
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"} if chat
                  else {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"})
        return web.json_response({**base, "object": "chat.completion" if chat else "text_completion",
                                  "choices": [choice], "usage": _usage(prompt_tokens, n)})

    async def _stream(self, request: web.Request, stream: Stream, base: dict, chat: bool, usage: bool,
                      prompt_tokens: int, max_tokens: int) -> web.StreamResponse:
        first = await stream.queue.get()
        if first is None:
            return error("the request can never fit in the KV cache")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        # Chunks are spliced from pre-encoded parts: one json.dumps per token would dominate the
        # server's CPU at large batches and make it fall behind the clock.
        head = b"data: " + json.dumps({**base, "choices": []})[:-3].encode() + b'[{"index": 0, '
        n, item = 0, first
        try:
            while item is not None:
                word = FILLER_JSON[n % len(FILLER_JSON)]
                n += 1
                finish = b'"length"' if n >= max_tokens else b"null"
                if chat:
                    role = b'"role": "assistant", ' if n == 1 else b""
                    body = b'"delta": {' + role + b'"content": ' + word + b"}"
                else:
                    body = b'"text": ' + word
                stamp = b', "servesim_t": ' + repr(item).encode()
                if n == 1:
                    stamp += b', "servesim_arrival_t": ' + repr(stream.request.arrival_time).encode()
                await resp.write(head + body + b', "logprobs": null, "finish_reason": ' + finish + b"}]" + stamp
                                 + b"}\n\n")
                item = await stream.queue.get()
            if usage:
                chunk = {**base, "choices": [], "usage": _usage(prompt_tokens, n)}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
        except ConnectionResetError:
            pass  # the client went away; its simulated request still runs to completion (see module doc)
        return resp


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def serve(cfg: EngineConfig, speed: float, served_model_name: str, host: str = "127.0.0.1",
                port: int = 8000, ready=None) -> None:
    """Serve until SIGINT/SIGTERM.  Prints vLLM-style start-up lines (KV size) and the address."""
    app = ServeApp(cfg, speed, served_model_name)
    runner = web.AppRunner(app.build(), access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    mem = app.live.engine.memory
    bound = runner.addresses[0]
    print(f"INFO servesim {__version__}: simulating {cfg.engine.value} {cfg.profile.engine_version} "
          f"{cfg.model.name} on {cfg.parallel.tensor_parallel_size}x {cfg.gpu.name} (profile {cfg.profile.name}), "
          f"speed x{speed:g}", flush=True)
    print(f"INFO # GPU blocks: {mem.num_gpu_blocks}, # CPU blocks: 0", flush=True)
    print(f"INFO GPU KV cache size: {mem.kv_capacity_tokens:,} tokens", flush=True)
    print(f"INFO Serving {served_model_name} on http://{bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(bound)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        print("INFO servesim serve: shut down", file=sys.stderr, flush=True)
