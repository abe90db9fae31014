"""Starting a server for a run (``--launch "vllm serve MODEL ..."``), and what only a local server tells.

:class:`Launcher` starts the command only if nothing answers ``/health`` at the run's URL, keeps
its output in ``server.log``, waits for ``/health`` (a server that exits while loading is an error
that quotes the log's tail), reads the KV-cache size vLLM logs, and stops the server at the end
only if it started it (SIGINT to its process group, then SIGKILL after a grace period).

The log lines read (:func:`parse_kv_log`): ``GPU KV cache size: 441,216 tokens`` (vLLM v1),
``# GPU blocks: 27153, # CPU blocks: 2048`` (vLLM v0), ``num_gpu_blocks is: N`` values, and through
:mod:`servesim.measure.startup_log` the version, non-default arguments, memory-profile lines and the
root cause of a failed start (tested on 74 real vLLM 0.19 start-up logs).
:func:`gpu_info` asks ``nvidia-smi`` about the local GPUs (only for a loopback server).
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import aiohttp

from .startup_log import parse_startup_log

KV_PATTERNS = {
    "kv_cache_tokens": re.compile(r"GPU KV cache size:\s*([\d,]+)\s*tokens"),
    # "# GPU blocks: 27153" (v0), "# cuda blocks: 1381" (v0 0.7/0.8), "num_gpu_blocks is: 7891" (v1
    # cache_config_info).  Not "Overriding num_gpu_blocks=0 with num_gpu_blocks_override=512": that
    # is the minimal cache of the CUDA-graph profiling, not the capacity.
    "num_gpu_blocks": re.compile(r"(?:# (?:GPU|cuda) blocks:|num_gpu_blocks is:)\s*([\d,]+)"),
    "num_cpu_blocks": re.compile(r"# CPU blocks:\s*([\d,]+)"),
    "max_concurrency": re.compile(r"Maximum concurrency for ([\d,]+) tokens per request:\s*([\d.]+)x"),
}
def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> str:
    """An http(s) URL with a host; the harness talks to no other address than this one."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"--url {url!r} must be http://HOST:PORT (e.g. http://127.0.0.1:8000)")
    return url.rstrip("/")


def parse_kv_log(text: str) -> dict:
    """KV-cache facts from a vLLM log (last occurrence of each; ints), plus what
    :func:`~servesim.measure.startup_log.parse_startup_log` reads: ``vllm_version``, ``engine``,
    ``non_default_args``, ``memory_profile`` (GiB as logged) and, for a failed start, ``failure``."""
    out: dict = {}
    for key, pattern in KV_PATTERNS.items():
        matches = pattern.findall(text)
        if not matches:
            continue
        last = matches[-1]
        if key == "max_concurrency":
            out[key] = {"tokens_per_request": int(last[0].replace(",", "")), "concurrency": float(last[1])}
        else:
            out[key] = int(last.replace(",", ""))
    log = parse_startup_log(text)
    for key in ("vllm_version", "engine"):
        if getattr(log, key) is not None:
            out[key] = getattr(log, key)
    if log.non_default_args:
        out["non_default_args"] = log.non_default_args
    profile = {k: getattr(log, k) for k in ("total_memory_gib", "gpu_memory_utilization", "weights_gib",
                                             "activation_peak_gib", "non_torch_gib", "available_kv_gib",
                                             "cuda_graph_gib") if getattr(log, k) is not None}
    if profile:
        out["memory_profile"] = profile
    if log.failure is not None:
        out["failure"] = {"kind": log.failure.kind.value, "exception": log.failure.exception,
                          "message": log.failure.message, "line": log.failure.line}
    return out


def gpu_info() -> list[dict] | None:
    """Local GPUs from ``nvidia-smi`` (None when it is absent or fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    fields = "name,driver_version,memory.total,power.limit,clocks.max.sm,pci.bus_id"
    try:
        out = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=15, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    keys = fields.split(",")
    return [dict(zip(keys, (v.strip() for v in line.split(",")))) for line in out.splitlines() if line.strip()]


async def health_ok(session: aiohttp.ClientSession, url: str, timeout_s: float = 2.0) -> bool:
    try:
        async with session.get(url + "/health", timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return False


class Launcher:
    """Owns a server process the harness started (see the module docstring)."""

    def __init__(self, command: str, log_path: Path, url: str) -> None:
        if not is_loopback(url):
            raise ValueError(f"--launch starts a local server, so --url must be a loopback address (got {url})")
        self.argv = shlex.split(command)
        if not self.argv:
            raise ValueError("--launch needs a command, e.g. \"vllm serve meta-llama/Llama-3.1-8B-Instruct\"")
        self.command, self.log_path, self.url = command, log_path, url
        self.proc: subprocess.Popen | None = None
        self.started = False

    async def ensure_running(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        """Start the command unless a server already answers; wait for ``/health``."""
        if await health_ok(session, self.url):
            return
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        except OSError as exc:
            raise ValueError(f"cannot start {self.argv[0]!r}: {exc}") from None
        finally:
            log.close()
        self.started = True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                failure = self.kv_facts().get("failure")
                reason = f" ({failure['kind']}: {failure['message']})" if failure else ""
                raise ValueError(f"the launched server exited with status {self.proc.returncode} before "
                                 f"answering /health{reason}; last log lines:\n{self.log_tail()}")
            if await health_ok(session, self.url):
                return
            await asyncio.sleep(0.5)
        self.stop()
        raise ValueError(f"the launched server did not answer {self.url}/health within {timeout_s:g} s; "
                         f"last log lines:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kv_facts(self) -> dict:
        try:
            return parse_kv_log(self.log_path.read_text(errors="replace"))
        except OSError:
            return {}

    def stop(self, grace_s: float = 30.0) -> int | None:
        """Stop the server if this launcher started it; returns its exit status."""
        if not self.started or self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        return self.proc.returncode
