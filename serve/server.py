"""``servesim serve``: the simulator behind vLLM's OpenAI-compatible HTTP interface.

Routes: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (streaming server-sent events or
one JSON answer), ``GET /v1/models``, ``/health``, ``/ping``, ``/version``, ``/metrics``
(Prometheus text, :mod:`servesim.serve.metrics`), ``POST /tokenize`` and ``/detokenize``.
Requests go to a :class:`LiveEngine`, the engine of ``servesim simulate`` advanced with the wall
clock times ``--speed`` (docs/serve.md).  vLLM's current OpenAI server is the reference:

* bodies are validated by the pydantic models of :mod:`.openai_protocol` before anything is
  submitted; errors are vLLM's ``{"error": {"message", "type", "param", "code"}}``, unknown routes
  a JSON 404, ``--api-key`` guards ``/v1`` routes with 401 as vLLM's ``AuthenticationMiddleware``;
* ``max_tokens`` outputs are produced exactly (as with ``ignore_eos``); a chat request without
  ``max_tokens`` stops at an EOS-driven length drawn from ``--output-len-dist``, capped by the
  context (``finish_reason`` ``stop`` or ``length``);
* a client that disconnects aborts its request (``AsyncLLM.abort``): its KV blocks are freed;
  a client that reads nothing for ``stream_write_timeout_s`` is dropped the same way;
* the chat stream opens with the role chunk; ``stream_options.continuous_usage_stats`` puts usage
  on every chunk; an access-log line per request and vLLM's stats line every 10 s (wall).

Each streamed chunk also carries ``servesim_t``, the simulated time the token was produced (the
first one ``servesim_arrival_t`` too), which the harness records as ``server_token_times``.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import signal
import sys
import time
import uuid

from aiohttp import web

from .. import __version__
from ..sim.config import EngineConfig, EngineVersion
from ..sim.observers import CallbackObserver
from .live_engine import LiveEngine, Stream
from .metrics import ServeMetrics
from .openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    ValidationError,
    error_body,
    validation_error_body,
)
from .support import (
    AccessLogger,
    EosLengths,
    QuietAcceptErrors,
    ServeOptions,
    count_chat_tokens,
    count_prompt_tokens,
    log,
    max_token_id,
    pseudo_token_ids,
    raise_fd_limit,
    stats_line,
)

FILLER = ("the", " of", " and", " to", " in", " a", " is", " that", " for", " it", " as", " was", " with",
          " be", " by", " on", " not", " he", " this", " are")
FILLER_JSON = tuple(json.dumps(w).encode() for w in FILLER)
_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+: a deadline without a task per write


def error(message: str, status: int = 400, kind: str = "BadRequestError", param: str | None = None) -> web.Response:
    return web.json_response(error_body(message, kind, status, param), status=status)


class _Refused(Exception):
    """A request the serving layer refuses before submission (answered as vLLM answers it)."""

    def __init__(self, response: web.Response) -> None:
        self.response = response


@web.middleware
async def json_errors(request: web.Request, handler):
    """aiohttp's own errors (404 unknown route, 405, 413) as vLLM's JSON error body."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.reason, exc.status, exc.reason)


class ServeApp:
    """The HTTP handlers around one live engine."""

    def __init__(self, cfg: EngineConfig, speed: float | ServeOptions, served_model_name: str | None = None) -> None:
        # A bare speed: the name defaults to the model's, as vLLM's --served-model-name does to --model.
        opts = speed if isinstance(speed, ServeOptions) else ServeOptions(
            speed=speed, served_model_name=served_model_name or cfg.model.name)
        self.cfg, self.opts, self.speed, self.model_name = cfg, opts, opts.speed, opts.served_model_name
        self.v1 = cfg.engine is EngineVersion.V1
        self.live = LiveEngine(cfg, opts.speed)  # raises ValueError now if the model does not fit
        self.eos = EosLengths(opts.output_len_dist, opts.seed)
        self._key_hashes = [hashlib.sha256(k.encode()).digest() for k in opts.api_keys]
        c = cfg.cache
        cache_labels = {"block_size": str(c.block_size), "cache_dtype": c.kv_cache_dtype,
                        "enable_prefix_caching": str(c.enable_prefix_caching),
                        "gpu_memory_utilization": str(c.gpu_memory_utilization),
                        "num_cpu_blocks": str(self.live.num_cpu_blocks),
                        "num_gpu_blocks": str(self.live.engine.memory.num_gpu_blocks),
                        "num_gpu_blocks_override": str(c.num_gpu_blocks_override)}
        self.metrics = ServeMetrics(self.live, self.model_name, self.v1, cache_labels, cfg.scheduler.max_model_len)
        self.live.on_first_token, self.live.on_token_gap = self.metrics.first_token, self.metrics.token_gap
        self.live.on_finish, self.live.on_abort = self.metrics.finished, self.metrics.aborted
        self.live.engine.add_observer(CallbackObserver(on_step=lambda out, start, end: self.metrics.step(out, end - start)))
        self.created = int(time.time())

    def build(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20, middlewares=[json_errors, self._auth])
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ping", self.health)
        app.router.add_post("/ping", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/detokenize", self.detokenize)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        """``--api-key``: ``/v1`` routes need ``Authorization: Bearer KEY`` (vLLM's middleware)."""
        if self._key_hashes and request.method != "OPTIONS" and request.path.startswith("/v1"):
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            digest = hashlib.sha256(token.encode()).digest()
            if scheme.lower() != "bearer" or not any(hmac.compare_digest(digest, h) for h in self._key_hashes):
                return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    async def _start(self, app: web.Application) -> None:
        self._task = asyncio.create_task(self.live.run())
        self._stats = asyncio.create_task(self._log_stats()) if self.opts.log_stats else None

    async def _stop(self, app: web.Application) -> None:
        tasks = [t for t in (self._task, self._stats) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _log_stats(self) -> None:
        """vLLM's periodic stats line, skipped while idle (vLLM logs those at debug level)."""
        last = self.live.state()
        while True:
            await asyncio.sleep(self.opts.log_stats_interval_s)
            now = self.live.state()
            span = now["sim_time_s"] - last["sim_time_s"]
            prompt = (now["prompt_tokens"] - last["prompt_tokens"]) / span if span > 0 else 0.0
            gen = (now["generation_tokens"] - last["generation_tokens"]) / span if span > 0 else 0.0
            if prompt or gen or now["running"] or now["waiting"]:
                queries, hits = self.metrics.num_prefix_queries, self.metrics.num_prefix_hits
                log(stats_line(prompt, gen, now, hits / queries if queries else 0.0))
            last = now

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
            "num_gpu_blocks": self.live.engine.memory.num_gpu_blocks, "num_cpu_blocks": self.live.num_cpu_blocks,
            "block_size": self.cfg.cache.block_size,
            "client_latency_note": "latencies a client measures include this server's real per-request overhead "
                                   "(HTTP, event loop) times time_scale; servesim_t stamps do not"})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.model_name, "object": "model", "created": self.created, "owned_by": "servesim",
            "root": self.model_name, "parent": None, "max_model_len": self.cfg.scheduler.max_model_len,
            "permission": []}]})

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})

    # ----- parsing ---------------------------------------------------------------------------
    async def _body(self, request: web.Request, model_cls):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Refused(error("the request body is not valid JSON", param="body")) from None
        if not isinstance(body, dict):
            raise _Refused(error("the request body must be a JSON object", param="body"))
        try:
            parsed = model_cls.model_validate(body)
        except ValidationError as exc:
            raise _Refused(web.json_response(validation_error_body(exc), status=400)) from None
        if parsed.model not in (None, self.model_name):
            raise _Refused(error(f"The model `{parsed.model}` does not exist.", 404, "NotFoundError", "model"))
        return parsed

    def _lengths(self, req, chat: bool) -> tuple[int, int, int | None]:
        """(prompt tokens, max tokens, EOS length or None), refused as vLLM refuses them."""
        if req.n != 1:
            raise _Refused(error("servesim serve supports n=1 only", param="n"))
        try:
            prompt = count_chat_tokens(req.messages) if chat else count_prompt_tokens(req.prompt)
        except ValueError as exc:
            raise _Refused(error(str(exc), param="prompt")) from None
        if prompt == 0:
            raise _Refused(error("The decoder prompt cannot be empty", param="prompt"))
        top = -1 if chat else max_token_id(req.prompt)
        if top >= self.cfg.model.vocab_size:
            raise _Refused(error(f"Token id {top} is out of vocabulary", param="prompt"))
        max_len = self.cfg.scheduler.max_model_len
        if chat:  # vLLM prefers max_completion_tokens (OpenAI's newer name)
            max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        else:
            max_tokens = req.max_tokens
        eos = None
        if max_tokens is None:  # vLLM: the rest of the context; a real model stops at EOS first
            max_tokens = max_len - prompt
            eos = None if req.ignore_eos else self.eos.draw()
        if max_tokens < 1:
            raise _Refused(error(f"max_tokens must be at least 1, got {max_tokens}.", param="max_tokens"))
        if prompt + max_tokens > max_len:
            raise _Refused(error(f"This model's maximum context length is {max_len} tokens. However, you requested "
                                 f"{prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in the "
                                 "completion). Please reduce the length of the messages or completion.",
                                 param="max_tokens" if max_tokens > 1 else "prompt"))
        return prompt, max_tokens, eos

    async def tokenize(self, request: web.Request) -> web.Response:
        try:
            req = await self._body(request, TokenizeRequest)
        except _Refused as refused:
            return refused.response
        text = (req.prompt if req.prompt is not None
                else "".join(f"<|{m.role}|>{m.content if isinstance(m.content, str) else ''}" for m in req.messages))
        tokens = pseudo_token_ids(text, self.cfg.model.vocab_size)
        return web.json_response({"count": len(tokens), "max_model_len": self.cfg.scheduler.max_model_len,
                                  "tokens": tokens, "token_strs": None})

    async def detokenize(self, request: web.Request) -> web.Response:
        try:
            req = await self._body(request, DetokenizeRequest)
        except _Refused as refused:
            return refused.response
        bad = [t for t in req.tokens if t >= self.cfg.model.vocab_size]
        if bad:
            return error(f"Token id {bad[0]} is out of vocabulary", param="tokens")
        return web.json_response({"prompt": "".join(FILLER[t % len(FILLER)] for t in req.tokens)})

    # ----- generation ----------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            req = await self._body(request, ChatCompletionRequest if chat else CompletionRequest)
            prompt_tokens, max_tokens, eos = self._lengths(req, chat)
        except _Refused as refused:
            return refused.response
        self.metrics.submitted(max_tokens)
        stream = self.live.submit(prompt_tokens, max_tokens, eos)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        base = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.model_name}
        try:
            if req.stream:
                return await self._stream(request, stream, base, chat, req.include_usage, prompt_tokens)
            n = 0
            while (await stream.queue.get()) is not None:
                n += 1
        except asyncio.CancelledError:
            # The client went away (aiohttp cancels the handler): abort, as vLLM does, so its KV
            # blocks are freed instead of held until it would have finished.
            self.live.abort(stream.request.request_id)
            raise
        if stream.rejected:
            return error("the request can never fit in the KV cache")
        text = "".join(FILLER[i % len(FILLER)] for i in range(n))
        reason = "stop" if stream.eos_tokens is not None else "length"
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason} if chat
                  else {"index": 0, "text": text, "logprobs": None, "finish_reason": reason})
        return web.json_response({**base, "object": "chat.completion" if chat else "text_completion",
                                  "choices": [choice], "usage": _usage(prompt_tokens, n)})

    async def _write(self, resp: web.StreamResponse, data: bytes) -> None:
        """Write a chunk; a client that has read nothing for ``stream_write_timeout_s`` raises
        ``TimeoutError`` (the write waits on the socket draining only when buffers are full)."""
        if _timeout is not None:
            async with _timeout(self.opts.stream_write_timeout_s):
                await resp.write(data)
        else:
            await asyncio.wait_for(resp.write(data), self.opts.stream_write_timeout_s)

    async def _stream(self, request: web.Request, stream: Stream, base: dict, chat: bool,
                      usage: tuple[bool, bool], prompt_tokens: int) -> web.StreamResponse:
        first = await stream.queue.get()
        if first is None:
            return error("the request can never fit in the KV cache")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            await self._stream_tokens(resp, stream, first, base, chat, usage, prompt_tokens)
        except (ConnectionResetError, asyncio.TimeoutError):
            # The client is gone or reads nothing: abort its request (KV freed) and drop the connection.
            self.live.abort(stream.request.request_id)
            if request.transport is not None:
                request.transport.close()
        return resp

    async def _stream_tokens(self, resp: web.StreamResponse, stream: Stream, first: float, base: dict, chat: bool,
                             usage: tuple[bool, bool], prompt_tokens: int) -> None:
        final_usage, continuous = usage
        # Chunks are spliced from pre-encoded parts: one json.dumps per token would dominate the
        # server's CPU at large batches and make it fall behind the clock.
        head = b"data: " + json.dumps({**base, "choices": []})[:-3].encode() + b'[{"index": 0, '
        if chat:  # vLLM's chat stream opens with the role, before any token
            role = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}]}
            if continuous:
                role["usage"] = _usage(prompt_tokens, 0)
            await self._write(resp, b"data: " + json.dumps(role).encode() + b"\n\n")
        n, item = 0, first
        max_tokens = stream.request.max_tokens
        end_reason = b'"stop"' if stream.eos_tokens is not None else b'"length"'
        while item is not None:
            word = FILLER_JSON[n % len(FILLER_JSON)]
            n += 1
            finish = end_reason if n >= max_tokens else b"null"
            body = b'"delta": {"content": ' + word + b"}" if chat else b'"text": ' + word
            stamp = b', "servesim_t": ' + repr(item).encode()
            if n == 1:
                stamp += b', "servesim_arrival_t": ' + repr(stream.request.arrival_time).encode()
            if continuous:
                stamp += b', "usage": ' + json.dumps(_usage(prompt_tokens, n)).encode()
            await self._write(resp, head + body + b', "logprobs": null, "finish_reason": ' + finish + b"}]" + stamp
                              + b"}\n\n")
            item = await stream.queue.get()
        if final_usage:
            chunk = {**base, "choices": [], "usage": _usage(prompt_tokens, n)}
            await self._write(resp, b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await self._write(resp, b"data: [DONE]\n\n")


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def serve(cfg: EngineConfig, speed: float | ServeOptions, served_model_name: str | None = None,
                host: str = "127.0.0.1", port: int = 8000, ready=None) -> None:
    """Serve until SIGINT/SIGTERM.  Prints vLLM-style start-up lines (KV size) and the address."""
    app = ServeApp(cfg, speed, served_model_name)
    opts = app.opts
    # handler_cancellation: a handler whose client disconnected is cancelled (and aborts its request).
    access = None
    if opts.access_log:  # aiohttp calls the access logger only when a logger is set
        access = logging.getLogger("servesim.access")
        access.setLevel(logging.INFO)
    runner = web.AppRunner(app.build(), access_log_class=AccessLogger, access_log=access, handle_signals=False,
                           shutdown_timeout=2.0, handler_cancellation=True,
                           keepalive_timeout=opts.keepalive_timeout_s)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(QuietAcceptErrors(raise_fd_limit()))
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    mem = app.live.engine.memory
    bound = runner.addresses[0]
    log(f"INFO servesim {__version__}: simulating {cfg.engine.value} {cfg.profile.engine_version} "
        f"{cfg.model.name} on {cfg.parallel.tensor_parallel_size}x {cfg.gpu.name} (profile {cfg.profile.name}), "
        f"speed x{opts.speed:g}")
    log(f"INFO # GPU blocks: {mem.num_gpu_blocks}, # CPU blocks: {app.live.num_cpu_blocks}")
    log(f"INFO GPU KV cache size: {mem.kv_capacity_tokens:,} tokens")
    if app.eos.note:
        log(f"WARNING {app.eos.note}")
    if opts.speed > 1:
        log(f"WARNING --speed {opts.speed:g}: latencies a client measures include this server's real per-request "
            f"overhead (HTTP and event loop, about a millisecond of wall time) multiplied by {opts.speed:g}; "
            "use the simulated stamps (servesim_t; `servesim measure` records them as server_token_times) "
            "for simulated latencies")
    log(f"INFO Serving {app.model_name} on http://{bound[0]}:{bound[1]}")
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(bound)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        print("INFO servesim serve: shut down", file=sys.stderr, flush=True)
