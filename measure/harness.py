"""The measurement harness: run a plan's probe points against a live server and record everything.

``servesim measure --url URL --plan quick --out RUN_DIR`` (see ``docs/measure.md``).  One asyncio
loop runs three things: the probe points in plan order (sequential, burst or Poisson sends through
:mod:`servesim.measure.client`), a 200 ms ``/metrics`` scraper writing ``metrics.csv``, and
checks of the server's health after a failed request.  Each finished request is appended to
``requests.jsonl`` at once; each ended point attempt to ``points.jsonl``; ``run.json`` is rewritten
atomically after every point, so a run killed at any moment is a valid partial run.

Faults: a failed request is recorded with its status and the point goes on; if the server no
longer answers ``/health`` (or a launched server exited), the point is marked ``aborted``, nothing
more is sent, and the run stops with exit status 3.  ``--resume`` continues a run directory: points
with a ``complete`` line are skipped, the others run again as a new attempt (earlier records kept).
"""
from __future__ import annotations

import asyncio
import signal
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .client import Clock, completion_body, prompt_token_ids, send_request
from .launcher import Launcher, check_url, gpu_info, health_ok, is_loopback, parse_kv_log
from .metrics_csv import MetricsCSV, cache_config, parse_metrics
from .plans import Mode, Plan, ProbePoint
from .rundir import (
    METRICS,
    POINTS,
    REQUESTS,
    RUN_JSON,
    SCHEMA_VERSION,
    SERVER_LOG,
    JsonlAppender,
    attempts_so_far,
    complete_attempts,
    load_run,
    write_json_atomic,
)

EXIT_OK, EXIT_ABORTED, EXIT_INTERRUPTED, EXIT_INCOMPLETE = 0, 3, 4, 5


@dataclass(frozen=True)
class MeasureOptions:
    """What ``servesim measure`` was asked to do (CLI flags, validated)."""

    url: str
    out: Path
    plan: Plan
    model: str | None = None
    resume: bool = False
    launch: str | None = None
    launch_timeout_s: float = 1800.0
    max_model_len: int | None = None
    scrape_interval_s: float = 0.2
    settle_s: float = 1.0
    usage: bool = True
    plots: bool = True
    argv: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class ScrapeStats:
    scrapes: int = 0
    failures: int = 0
    last_values: dict = field(default_factory=dict)


def parse_flags(argv: list[str]) -> dict[str, object]:
    """``--key value`` / ``--flag`` pairs of a launch command, keys with ``_`` (``max_num_seqs``)."""
    flags: dict[str, object] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            key = key.replace("-", "_")
            if eq:
                flags[key] = value
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                flags[key] = argv[i + 1]
                i += 1
            else:
                flags[key] = True
        i += 1
    return flags


async def _get_json(session: aiohttp.ClientSession, url: str) -> dict | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            return await resp.json(content_type=None) if resp.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None


async def server_info(session: aiohttp.ClientSession, url: str) -> dict:
    """``/version`` and ``/v1/models`` as the server reports them."""
    version = await _get_json(session, url + "/version") or {}
    models = (await _get_json(session, url + "/v1/models") or {}).get("data", [])
    return {"version": version.get("version"), "version_info": version, "models": models,
            "time_scale": float(version.get("time_scale", 1.0) or 1.0)}


class Harness:
    """One session of a run (a fresh run, or a ``--resume``)."""

    def __init__(self, opts: MeasureOptions) -> None:
        self.opts, self.plan, self.out = opts, opts.plan, opts.out
        self.clock = Clock.start()
        self.stats = ScrapeStats()
        self.launcher: Launcher | None = None
        self._health_lock = asyncio.Lock()
        self.server_dead = False

    # ----- run directory ------------------------------------------------------------------
    def _prepare_dir(self) -> dict:
        out = self.out
        if (out / RUN_JSON).exists() and not self.opts.resume:
            raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose a new --out")
        if self.opts.resume:
            run = load_run(out)
            if run["plan"]["digest"] != self.plan.digest:
                raise ValueError(f"--resume: {out} was measured with plan {run['plan']['name']} "
                                 f"({run['plan']['digest']}), not {self.plan.name} ({self.plan.digest})")
            return run
        out.mkdir(parents=True, exist_ok=True)
        return {"schema_version": SCHEMA_VERSION, "plan": {"name": self.plan.name, "digest": self.plan.digest,
                                                            "spec": self.plan.raw}, "sessions": []}

    def _save(self) -> None:
        write_json_atomic(self.out / RUN_JSON, self.run)

    # ----- health -------------------------------------------------------------------------
    async def _check_server(self) -> None:
        """After a failed request: is the server still there?  Sets ``server_dead`` if not."""
        if self.server_dead:
            return
        async with self._health_lock:
            if self.server_dead:
                return
            launched_dead = self.launcher is not None and self.launcher.started and not self.launcher.alive()
            if launched_dead or not await health_ok(self.session, self.opts.url, timeout_s=3.0):
                self.server_dead = True

    # ----- metrics ------------------------------------------------------------------------
    async def _scrape_loop(self, csv_out: MetricsCSV) -> None:
        interval = self.opts.scrape_interval_s
        deadline = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=max(1.0, 5 * interval))
        while True:
            t = self.clock.now()
            try:
                async with self.session.get(self.opts.url + "/metrics", timeout=timeout) as resp:
                    text = await resp.text() if resp.status == 200 else None
                if text is None:
                    self.stats.failures += 1
                else:
                    values = parse_metrics(text)
                    csv_out.append(t, values)
                    self.stats.scrapes += 1
                    self.stats.last_values = values
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError):
                self.stats.failures += 1
            deadline += interval
            now = time.monotonic()
            if deadline < now:  # fell behind (a slow scrape): keep the grid, skip the missed ticks
                deadline = now + interval - (now - deadline) % interval
            await asyncio.sleep(deadline - now)

    # ----- points -------------------------------------------------------------------------
    async def _send_one(self, point: ProbePoint, attempt: int, index: int, requests: JsonlAppender,
                        statuses: Counter) -> None:
        spec = point.requests[index]
        prompt = prompt_token_ids(point.point_id, attempt, index, spec.prompt_len, self.plan.token_id_range,
                                  self.plan.seed)
        record = {"point_id": point.point_id, "family": point.family, "attempt": attempt, "index": index,
                  "params": point.params, "prompt_tokens": spec.prompt_len, "max_tokens": spec.output_len}
        try:
            await send_request(self.session, self.opts.url, completion_body(self.model, prompt, spec.output_len,
                                                                              self.opts.usage),
                               self.clock, self.plan.request_timeout_s, self.plan.stall_timeout_s, record)
        except Exception as exc:  # a client bug must cost this request only, never its point's records
            record.update(status="client_error", error=f"{type(exc).__name__}: {exc}"[:500],
                          finish_time=self.clock.now())
        finally:  # also when cancelled (SIGTERM, Ctrl-C): what was sent is recorded
            record.setdefault("status", "interrupted")
            requests.write(record)
            statuses[record["status"]] += 1
        if record["status"] in ("connect_error", "dropped", "timeout") or (record["http_status"] or 0) >= 500:
            await self._check_server()

    async def _run_point(self, point: ProbePoint, attempt: int, requests: JsonlAppender,
                         points: JsonlAppender) -> str:
        """Send the point's requests; returns its status: ``complete`` (every request ``ok``),
        ``failed`` (some request failed: ``--resume`` measures the point again) or ``aborted``
        (the server stopped answering)."""
        start = self.clock.now()
        statuses: Counter = Counter()
        extra: dict = {}
        sent = 0
        if point.mode is Mode.READOUT:
            extra["kv_capacity"] = self.run["kv_capacity"] = self._kv_readout()
        elif point.mode is Mode.SEQUENTIAL:
            for i in range(len(point.requests)):
                if self.server_dead:
                    break
                sent += 1
                await self._send_one(point, attempt, i, requests, statuses)
        elif point.mode is Mode.BURST:
            sent = len(point.requests)
            await asyncio.gather(*(self._send_one(point, attempt, i, requests, statuses)
                                   for i in range(len(point.requests))))
        else:  # Poisson: each request at its offset from the point's start
            t0, tasks = time.monotonic(), []
            for i, spec in enumerate(point.requests):
                delay = t0 + spec.offset_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self.server_dead:
                    break
                sent += 1
                tasks.append(asyncio.create_task(self._send_one(point, attempt, i, requests, statuses)))
            await asyncio.gather(*tasks)
        failed = sum(n for st, n in statuses.items() if st != "ok")
        status = "aborted" if self.server_dead else "failed" if failed else "complete"
        points.write({"point_id": point.point_id, "family": point.family, "attempt": attempt, "status": status,
                      "mode": point.mode.value, "params": point.params, "start_time": start,
                      "end_time": self.clock.now(), "num_requests": len(point.requests), "num_sent": sent,
                      "statuses": dict(statuses), **extra})
        self.last_statuses = dict(statuses)
        return status

    def _kv_readout(self) -> dict:
        """KV capacity as the server reports it: its log (if launched here) and cache_config_info."""
        out: dict = {}
        log = self.out / SERVER_LOG
        if log.exists():
            out.update(parse_kv_log(log.read_text(errors="replace")))
        labels = cache_config(self.stats.last_values)
        if labels:
            out["cache_config_info"] = labels
            for key in ("num_gpu_blocks", "block_size"):
                if labels.get(key, "").isdigit():
                    out.setdefault(key, int(labels[key]))
        if "num_gpu_blocks" in out and "block_size" in out:
            out.setdefault("kv_cache_tokens", out["num_gpu_blocks"] * out["block_size"])
        out["reported"] = "kv_cache_tokens" in out or "num_gpu_blocks" in out
        return out

    # ----- the session --------------------------------------------------------------------
    async def run_async(self) -> int:
        opts = self.opts
        # SIGTERM (a job scheduler, `kill`) stops the run as Ctrl-C does: in-flight requests are
        # recorded, files closed, and a server this session launched is stopped (it holds GPUs).
        if threading.current_thread() is threading.main_thread():  # signal handlers need the main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
        self.run = self._prepare_dir()
        session_info = {"start_time": self.clock.now(), "resumed": opts.resume, "argv": list(opts.argv),
                        "host": socket.gethostname(), "status": "running"}
        self.run["sessions"].append(session_info)
        connector = aiohttp.TCPConnector(limit=4200)
        async with aiohttp.ClientSession(connector=connector) as self.session:
            if opts.launch:
                self.launcher = Launcher(opts.launch, self.out / SERVER_LOG, opts.url)
            try:
                if self.launcher is not None:
                    await self.launcher.ensure_running(self.session, opts.launch_timeout_s)
                elif not await health_ok(self.session, opts.url, timeout_s=5.0):
                    raise ValueError(f"no server answers {opts.url}/health; start one or pass "
                                     "--launch \"vllm serve ...\"")
                points = await self._describe_server(session_info["start_time"])
                status = await self._run_points(points)
            finally:  # a server this session started is stopped whatever happened
                if self.launcher is not None and self.launcher.started:
                    self.run.setdefault("launch", {})["kv_log"] = self.launcher.kv_facts()
                    self.run["launch"]["exit_status"] = self.launcher.stop()
        session_info.update(end_time=self.clock.now(), status=status)
        self.run.update(status=status, end_time=session_info["end_time"])
        self._save()
        return {"complete": EXIT_OK, "aborted": EXIT_ABORTED, "incomplete": EXIT_INCOMPLETE}.get(status,
                                                                                               EXIT_INTERRUPTED)

    async def _describe_server(self, start_time: float) -> list[ProbePoint]:
        """Ask the server what it is, record it in ``run.json``, expand the plan for its context."""
        opts = self.opts
        info = await server_info(self.session, opts.url)
        served = [m.get("id") for m in info["models"]]
        self.model = opts.model or (served[0] if served else None)
        if self.model is None:
            raise ValueError("the server lists no model at /v1/models; pass --model")
        card = next((m for m in info["models"] if m.get("id") == self.model), {})
        max_len = opts.max_model_len or card.get("max_model_len")
        if not max_len:
            raise ValueError(f"the server does not report max_model_len for {self.model}; pass --max-model-len")
        points, dropped = self.plan.points(int(max_len))
        self.run.update(url=opts.url, model=self.model, max_model_len=int(max_len), server=info,
                        time_scale=info["time_scale"])
        self.run.setdefault("kv_capacity", {})
        if self.launcher is not None:
            argv = self.launcher.argv
            self.run["launch"] = {"command": opts.launch, "argv": argv, "flags": parse_flags(argv[1:]),
                                  "started_by_harness": self.launcher.started, "log": SERVER_LOG}
        if is_loopback(opts.url):
            self.run["gpu"] = gpu_info()
        self.run.setdefault("start_time", start_time)
        self.run["points"] = {"planned": len(points), "dropped_too_long": dropped}
        self.run["status"] = "running"
        self._save()
        return points

    async def _run_points(self, points: list[ProbePoint]) -> str:
        opts = self.opts
        done, attempts = complete_attempts(self.out), attempts_so_far(self.out)
        metrics = MetricsCSV(self.out / METRICS)
        requests, point_log = JsonlAppender(self.out / REQUESTS), JsonlAppender(self.out / POINTS)
        scraper = asyncio.create_task(self._scrape_loop(metrics))
        status = "complete"
        num_failed = 0
        deadline = time.monotonic() + self.plan.max_duration_s
        try:
            await asyncio.sleep(min(2 * opts.scrape_interval_s, 1.0))  # a baseline scrape before any load
            todo = [p for p in points if p.point_id not in done]
            for k, point in enumerate(todo):
                if time.monotonic() > deadline:
                    status = "stopped_max_duration"
                    break
                print(f"[{k + 1}/{len(todo)}] {point.point_id}", file=sys.stderr, flush=True)
                outcome = await self._run_point(point, attempts.get(point.point_id, 0) + 1, requests, point_log)
                self.run["metrics"] = {"file": METRICS, "scrape_interval_s": opts.scrape_interval_s,
                                       "scrapes": self.stats.scrapes, "failures": self.stats.failures,
                                       "columns": len(metrics.columns)}
                self._save()
                if outcome == "failed":
                    num_failed += 1
                    print(f"servesim measure: {point.point_id}: some requests failed "
                          f"({', '.join(f'{n} {st}' for st, n in self.last_statuses.items())}); --resume measures it again", file=sys.stderr)
                if outcome == "aborted":
                    status = "aborted"
                    print(f"servesim measure: the server at {opts.url} stopped answering during "
                          f"{point.point_id}; the partial run is in {self.out} (continue with --resume)",
                          file=sys.stderr)
                    break
                await asyncio.sleep(opts.settle_s)
        except asyncio.CancelledError:
            status = "interrupted"
        finally:
            if status == "complete" and num_failed:
                status = "incomplete"
            scraper.cancel()
            await asyncio.gather(scraper, return_exceptions=True)
            metrics.close()
            requests.close()
            point_log.close()
        return status


def run_measurement(opts: MeasureOptions) -> int:
    """Run a session; returns the exit status (0 complete, 3 server lost, 4 interrupted,
    5 some points had failed requests: ``--resume`` measures them again)."""
    opts = MeasureOptions(**{**opts.__dict__, "url": check_url(opts.url)})
    harness = Harness(opts)
    try:
        status = asyncio.run(harness.run_async())
    except (KeyboardInterrupt, asyncio.CancelledError):
        status = EXIT_INTERRUPTED
        if hasattr(harness, "run") and (opts.out / RUN_JSON).exists():
            harness.run.update(status="interrupted", end_time=harness.clock.now())
            write_json_atomic(opts.out / RUN_JSON, harness.run)
    if opts.plots and (opts.out / REQUESTS).exists():
        from .plots import plot_run
        try:
            plot_run(opts.out)
        except Exception as exc:  # a figure must never cost the measurements: report and go on
            print(f"servesim measure: plotting failed ({type(exc).__name__}: {exc})", file=sys.stderr)
    return status
