"""The ``measure`` and ``serve`` subcommands (registered by ``servesim.cli``).

``servesim measure`` runs a plan against a live server (``--backend http``, the default) or times
the kernels of an architecture with PyTorch (``--backend torch-kernels``); ``servesim serve`` runs
the simulator behind vLLM's HTTP interface.  Both print one-line errors and exit non-zero.
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from .. import argtypes as at


def register(sub) -> None:
    _add_measure(sub)
    _add_serve(sub)


# ----- measure -----------------------------------------------------------------------------------
def _add_measure(sub) -> None:
    p = sub.add_parser("measure", help="probe a live vLLM server (or time kernels) and record a run directory",
                       description="Run a measurement plan against an OpenAI-compatible server (vLLM, or "
                                   "`servesim serve`) and write requests.jsonl, metrics.csv, run.json and plots "
                                   "into --out (docs/measure.md).")
    p.add_argument("--out", required=True, help="run directory to create (or continue with --resume)")
    p.add_argument("--backend", choices=["http", "torch-kernels"], default="http",
                   help="http: probe a server (default); torch-kernels: time GEMM/attention kernels with PyTorch")
    h = p.add_argument_group("http backend")
    h.add_argument("--url", default="http://127.0.0.1:8000", help="server address (default http://127.0.0.1:8000)")
    h.add_argument("--plan", default="quick", help="quick, full, or a plan YAML file (default quick)")
    h.add_argument("--model", help="model name to request (default: the server's first; torch-kernels: "
                   "catalogue name or config.json)")
    h.add_argument("--resume", action="store_true", help="continue --out, skipping points already complete")
    h.add_argument("--launch", metavar="CMD", help='start the server with CMD if none answers, e.g. '
                   '"vllm serve meta-llama/Llama-3.1-8B-Instruct --port 8000"; stopped at the end')
    h.add_argument("--launch-timeout", type=at.POSITIVE, default=1800.0, help="seconds to wait for /health (default 1800)")
    h.add_argument("--max-model-len", type=at.int_range(2), help="context length, if the server does not report it")
    h.add_argument("--scrape-interval", type=at.float_range(0.05, 60.0, lo_open=False), default=0.2, help="seconds between /metrics scrapes (0.2)")
    h.add_argument("--settle", type=at.NON_NEGATIVE, default=1.0, help="idle seconds between probe points (default 1)")
    h.add_argument("--no-usage", action="store_true", help="do not ask for stream_options.include_usage")
    h.add_argument("--no-plots", action="store_true", help="skip the figures")
    h.add_argument("--dry-run", action="store_true", help="print the points the plan expands to and exit")
    k = p.add_argument_group("torch-kernels backend")
    k.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    k.add_argument("--shapes", default="quick", choices=["tiny", "quick", "full"], help="shape grid (default quick)")
    k.add_argument("--tp", type=at.int_range(1, 8), action="append", help="TP shard sizes to time (repeatable; default 1)")
    k.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="kernel dtype (default bf16)")
    p.set_defaults(func=cmd_measure)


def cmd_measure(args) -> int:
    if args.backend == "torch-kernels":
        from .torch_probe import ProbeOptions, run_probe
        if not args.model:
            raise ValueError("--backend torch-kernels needs --model (a catalogue name or a config.json)")
        return run_probe(ProbeOptions(model=args.model, out=Path(args.out), device=args.device, shapes=args.shapes,
                                      tp=tuple(args.tp or (1,)), dtype=args.dtype))
    from .harness import MeasureOptions, run_measurement
    from .plans import load_plan
    plan = load_plan(args.plan)
    if args.dry_run:
        points, dropped = plan.points(args.max_model_len or 131072)
        for pt in points:
            print(f"{pt.point_id:<32} {pt.mode.value:<10} {len(pt.requests):>5} requests  {pt.params}")
        print(f"{len(points)} points, {sum(len(pt.requests) for pt in points)} requests; dropped (too long): {dropped}")
        return 0
    if args.resume:
        if not Path(args.out).is_dir():
            raise ValueError(f"--resume: {args.out} is not a measurement run directory (no such folder)")
    else:
        at.check_writable_dir(args.out)
    opts = MeasureOptions(url=args.url, out=Path(args.out), plan=plan, model=args.model, resume=args.resume,
                          launch=args.launch, launch_timeout_s=args.launch_timeout, max_model_len=args.max_model_len,
                          scrape_interval_s=args.scrape_interval, settle_s=max(args.settle, 0.0),
                          usage=not args.no_usage, plots=not args.no_plots, argv=tuple(sys.argv))
    status = run_measurement(opts)
    print(f"servesim measure: run {'complete' if status == 0 else 'incomplete'} in {Path(args.out).resolve()}",
          file=sys.stderr)
    _report_speed_overhead(Path(args.out))
    return status


def _report_speed_overhead(out: Path) -> None:
    """Against ``servesim serve --speed K`` (K > 1), say how much of the scaled client TTFT is the
    server's real overhead counted K times (``scaled_client_overhead_s``, docs/serve.md)."""
    from .rundir import load_requests, load_run
    try:
        scale = float(load_run(out).get("time_scale") or 1.0)
    except ValueError:
        return
    if scale <= 1:
        return
    df = load_requests(out, complete_only=False)
    if "scaled_client_overhead_s" not in df or df["scaled_client_overhead_s"].isna().all():
        return
    median_ms = float(df["scaled_client_overhead_s"].median()) * 1e3
    print(f"servesim measure: the server ran at --speed {scale:g}: scaled client TTFTs include its real "
          f"per-request overhead times {scale:g}, median {median_ms:.1f} simulated ms (column "
          "scaled_client_overhead_s; server_ttft_s excludes it)", file=sys.stderr)


# ----- serve -------------------------------------------------------------------------------------
def _add_serve(sub) -> None:
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
    import os
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
    import os

    from ..sim.config import create_engine_config
    from .serve import serve
    from .serve_support import ServeOptions
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
