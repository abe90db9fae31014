"""The ``serve`` subcommand (registered by ``servesim.cli``): the simulator behind vLLM's HTTP
interface (docs/serve.md).  Bad flags or an unusable address print one-line errors, exit non-zero.
"""
from __future__ import annotations

import asyncio
import os

from .. import argtypes as at
from ..sim.config import create_engine_config


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the simulator as an OpenAI-compatible (vLLM-like) endpoint",
                       description="Run the simulated replica behind /v1/completions, /v1/chat/completions, "
                                   "/v1/models, /health, /version and /metrics, in real time times --speed "
                                   "(docs/serve.md).")
    at.add_engine_args(p)
    p.add_argument("--served-model-name", help="name clients request (default: --model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=at.PORT, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--speed", type=at.float_range(0.0, 1e6), default=1.0,
                   help="simulated seconds per wall second (default 1)")
    p.add_argument("--api-key", action="append", default=[], help="require `Authorization: Bearer KEY` on "
                   "/v1 routes, as vLLM (repeatable; default $VLLM_API_KEY if set)")
    p.add_argument("--output-len-dist", default="sharegpt", help="where a request without max_tokens stops (its "
                   "EOS): sharegpt (ShareGPT output lengths, default) or a distribution such as lognormal:250:1.0")
    p.add_argument("--seed", type=at.SEED, default=0, help="seed of the EOS-length draws (default 0)")
    p.add_argument("--disable-uvicorn-access-log", action="store_true", help="no access-log line per request")
    p.add_argument("--disable-log-stats", action="store_true", help="no periodic stats line")
    p.add_argument("--stream-write-timeout", type=at.POSITIVE, default=30.0,
                   help="drop (and abort) a streaming client that reads nothing for this many seconds (default 30)")
    p.set_defaults(func=cmd_serve)


def _env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment (vLLM's variable names)."""
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"${name}={text!r}: expected a number of seconds") from None
    if not value > 0:
        raise ValueError(f"${name}={text!r}: must be > 0")
    return value


def cmd_serve(args) -> int:
    # Not a circle: the server stack (aiohttp, pydantic, prometheus_client; about a second) loads
    # only when serving, not on every `servesim` start-up, which registers this command.
    from .server import serve
    from .support import ServeOptions
    cfg = create_engine_config(at.engine_args_from(args))
    keys = tuple(args.api_key) or tuple(k for k in (os.environ.get("VLLM_API_KEY"),) if k)
    opts = ServeOptions(speed=args.speed, served_model_name=args.served_model_name or args.model, api_keys=keys,
                        output_len_dist=args.output_len_dist, seed=args.seed,
                        access_log=not args.disable_uvicorn_access_log, log_stats=not args.disable_log_stats,
                        stream_write_timeout_s=args.stream_write_timeout,
                        log_stats_interval_s=_env_seconds("VLLM_LOG_STATS_INTERVAL", 10.0))
    try:
        asyncio.run(serve(cfg, opts, host=args.host, port=args.port))
    except OSError as exc:
        raise ValueError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        pass
    return 0
