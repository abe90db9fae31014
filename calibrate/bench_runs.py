"""A deployment's own ``vllm bench serve --save-result`` runs, read for fitting and validation.

A *deployment* is what the result files do not record: the engine policy and version, its
scheduling options (``--num-scheduler-steps``), ``max_num_seqs`` and ``gpu_memory_utilization``
(:class:`Deployment`).  A *run* is one result file (:class:`BenchRun`): the model, TP and
``max_model_len`` it was served with (from the file's keys when present, else from the Lambda
naming ``..._tp{k}_len{L}.json`` / ``{k}xH100...`` folders), and what it measured.

Cleaning, as the data README asks: requests with 0 output tokens (TTFT 0) are failures that the
client counted as completed; they are dropped from the replayed workload and TTFT statistics are
recomputed from ``ttfts`` without them (TPOT and ITL statistics already exclude them: a request
with fewer than two tokens has no TPOT, a failed one no ITL).  A file whose requests are mostly
failures (more than half), or that has failures but no ``ttfts`` to recompute from, is skipped
with the reason.  A summary-only file (no ``input_lens``) is kept: it is replayed with lengths
drawn to match its mean input and output lengths, and only throughput and latency means are
compared (:attr:`BenchRun.detailed`).
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..sim.arg_spec import check_fields
from ..sim.engine_args import EngineArgs
from ..sim.metrics import summarize
from ..sim.workload import Workload, gamma_arrivals, spawn_streams
from .measured_run import bench_requests

# Metrics a detailed (per-request) run is fitted on, and the subset a summary-only file has.  Output
# throughput is total tokens / duration (the same information as duration); mean TPOT is left out
# of the fit: it is dominated by the few requests with 2-5 output tokens whose one gap is a whole
# prefill stall, so it measures the tail of the length distribution more than the engine.
DETAILED_METRICS = ("duration", "mean_ttft_ms", "median_ttft_ms", "median_tpot_ms", "median_itl_ms")
SUMMARY_METRICS = ("duration", "mean_ttft_ms", "mean_tpot_ms")
# A run at a finite request rate is replayed with freshly drawn send times (the file has none): its
# duration follows the arrivals, and medians of a few requests move with the draw, so it is
# fitted on latency means.
OPEN_LOOP_METRICS = ("mean_ttft_ms", "mean_tpot_ms", "mean_itl_ms")
MAX_FAILED_FRACTION = 0.5


_ENGINE_ARGS = {f.name: f for f in fields(EngineArgs)}
_UNSET = object()


def engine_arg(name: str, default: Any = _UNSET) -> Any:
    """A field declared as :class:`EngineArgs`' field ``name`` (its ArgSpec: help, unit, vLLM name,
    range), with its default unless ``default`` replaces it; :func:`check_fields` checks it."""
    f = _ENGINE_ARGS[name]
    return field(default=f.default if default is _UNSET else default, metadata=f.metadata)


@dataclass(frozen=True)
class Deployment:
    """The server settings a set of runs shares and the files do not record: ``name`` and
    ``engine_version`` label the fit, the rest are :class:`EngineArgs` fields with its checks
    (``engine`` defaults to vllm-v0, the generation of the ML.ENERGY runs; ``num_scheduler_steps``
    to 1, what vLLM 0.5.4 ran)."""

    name: str = "deployment"
    engine: str = engine_arg("engine", "vllm-v0")
    engine_version: str = ""
    gpu: str = engine_arg("gpu")
    num_scheduler_steps: int = engine_arg("num_scheduler_steps", 1)
    max_num_seqs: int | None = engine_arg("max_num_seqs")
    gpu_memory_utilization: float = engine_arg("gpu_memory_utilization")

    def __post_init__(self) -> None:
        check_fields(self)

    def knobs(self) -> dict[str, Any]:
        """The engine knobs (``EngineArgs`` field names) beyond the engine and GPU."""
        return {"num_scheduler_steps": self.num_scheduler_steps, "max_num_seqs": self.max_num_seqs,
                "gpu_memory_utilization": self.gpu_memory_utilization}


@dataclass
class BenchRun:
    """One measured run, cleaned, with what is needed to replay it."""

    key: str
    path: str
    sha256: str
    model: str
    tp: int
    max_model_len: int | None
    num_prompts: int
    num_failed: int
    measured: dict[str, float]
    input_lens: np.ndarray
    output_lens: np.ndarray
    detailed: bool
    request_rate: float = math.inf
    burstiness: float = 1.0
    seed: int = 0
    notes: list[str] = field(default_factory=list)
    origin: dict = field(default_factory=dict)   # the file's own ``source`` record, when it has one

    @property
    def num_requests(self) -> int:
        return int(self.input_lens.size)

    @property
    def metrics(self) -> tuple[str, ...]:
        names: tuple[str, ...]
        if not math.isinf(self.request_rate):
            names = OPEN_LOOP_METRICS
        else:
            names = DETAILED_METRICS if self.detailed else SUMMARY_METRICS
        return tuple(m for m in names if m in self.measured and self.measured[m] > 0)

    def workload(self) -> Workload:
        """The successful requests with their exact lengths: a burst at t=0 for request rate inf (the
        Lambda runs), else arrivals drawn at the file's rate and burstiness from the seed's stream."""
        arrivals = gamma_arrivals(self.num_requests, self.request_rate, self.burstiness,
                                  spawn_streams(self.seed).arrivals)
        return Workload(arrivals, self.input_lens, self.output_lens, self.key)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _int_from(pattern: str, text: str) -> int | None:
    m = re.search(pattern, text)
    return int(m.group(1)) if m else None


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files named by folders (every ``*.json`` below), globs or paths; sorted, no duplicates."""
    out: list[Path] = []
    for raw in inputs:
        raw = str(raw)
        path = Path(raw)
        if path.is_dir():
            found = sorted(path.rglob("*.json"))
        elif any(c in raw for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(raw, recursive=True))
        else:
            if not path.exists():
                raise ValueError(f"bench result {raw} not found (a --save-result JSON, a folder or a glob)")
            found = [path]
        if not found:
            raise ValueError(f"{raw}: no bench result JSON files found there")
        out.extend(found)
    return sorted(dict.fromkeys(p.resolve() for p in out))


def _lengths(path: Path, data: dict, key: str) -> np.ndarray | None:
    values = data.get(key)
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and v >= 0 for v in values):
        raise ValueError(f"{path}: {key} must be a list of non-negative token counts")
    return np.asarray(values, dtype=np.int64)


def read_bench_run(path: str | Path, root: Path | None = None, seed: int = 0) -> tuple[BenchRun | None, str]:
    """One result file as a :class:`BenchRun`, or ``(None, reason)`` when it is skipped."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict) or "duration" not in data:
        raise ValueError(f"{path}: not a vllm bench serve --save-result file (no 'duration')")
    model = data.get("model_id") or data.get("model")
    if not model:
        raise ValueError(f"{path}: the result names no model_id")
    key = str(path.relative_to(root)) if root and path.is_relative_to(root) else path.stem
    notes = []
    tp = data.get("tensor_parallel_size") or _int_from(r"_tp(\d+)", path.name) or _int_from(r"(\d+)x[^/]*$", path.parent.name)
    if tp is None:
        tp = 1
        notes.append("TP not recorded: 1 assumed")
    max_len = data.get("max_model_len") or _int_from(r"_len(\d+)", path.name)
    inputs, outputs = _lengths(path, data, "input_lens"), _lengths(path, data, "output_lens")
    detailed = False
    measured = {k: float(data[k]) for k in ("duration", "output_throughput", "mean_tpot_ms", "median_tpot_ms",
                                             "p99_tpot_ms", "mean_itl_ms", "median_itl_ms", "mean_ttft_ms",
                                             "median_ttft_ms") if isinstance(data.get(k), (int, float))}
    num_prompts = int(data.get("num_prompts") or data.get("completed") or 0)
    failed = 0
    if inputs is not None and outputs is not None:
        detailed = True
        if inputs.size != outputs.size:
            raise ValueError(f"{path}: input_lens has {inputs.size} entries, output_lens {outputs.size}")
        ok = outputs > 0
        failed = int((~ok).sum())
        if failed > MAX_FAILED_FRACTION * outputs.size:
            return None, f"{key}: {failed} of {outputs.size} requests failed (0 output tokens): mostly failures"
        ttfts = data.get("ttfts")
        if ttfts is not None and len(ttfts) == outputs.size:
            requests = bench_requests(data)  # per-request arrays exist here (ttfts), so never None
            assert requests is not None
            stats = summarize(*requests)  # the requests that produced tokens
            measured.update({k: stats[k] for k in ("mean_ttft_ms", "median_ttft_ms")})
        elif failed:
            return None, f"{key}: {failed} failed requests and no per-request ttfts to recompute TTFT without them"
        if failed:
            notes.append(f"{failed} failed requests (0 output tokens) dropped; TTFT recomputed without them")
        inputs, outputs = inputs[ok], outputs[ok]
    else:
        n = num_prompts
        mean_in = float(data.get("total_input_tokens", 0)) / max(n, 1)
        mean_out = float(data.get("total_output_tokens", 0)) / max(n, 1)
        if n < 1 or mean_in < 1 or mean_out < 1:
            return None, f"{key}: summary-only file without num_prompts/total_input_tokens/total_output_tokens"
        inputs, outputs = _summary_lengths(n, mean_in, mean_out, seed)
        notes.append("summary only: lengths drawn to the file's mean input/output lengths; "
                     f"compared on {', '.join(SUMMARY_METRICS)}")
    try:
        rate = float(data.get("request_rate", math.inf))
        burstiness = float(data.get("burstiness", 1.0) or 1.0)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: request_rate/burstiness must be numbers or 'inf', got "
                         f"{data.get('request_rate')!r}/{data.get('burstiness')!r}") from None
    if data.get("max_concurrency"):
        notes.append(f"max_concurrency={data['max_concurrency']} is not reproduced: open-loop arrivals")
    run = BenchRun(key=key, path=str(path), sha256=_sha256(path), model=str(model), tp=int(tp),
                   max_model_len=int(max_len) if max_len else None, num_prompts=num_prompts, num_failed=failed,
                   measured=measured, input_lens=inputs, output_lens=outputs, detailed=detailed,
                   request_rate=rate, burstiness=burstiness, seed=seed, notes=notes,
                   origin=data["source"] if isinstance(data.get("source"), dict) else {})
    return run, ""


def _summary_lengths(n: int, mean_in: float, mean_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Lognormal lengths (sigma 0.8, ShareGPT-like spread) rescaled to the given means."""
    rng = spawn_streams(seed).lengths
    draw = rng.lognormal(0.0, 0.8, (2, n))
    inputs = np.maximum(np.rint(draw[0] * mean_in / draw[0].mean()), 1).astype(np.int64)
    outputs = np.maximum(np.rint(draw[1] * mean_out / draw[1].mean()), 1).astype(np.int64)
    return inputs, outputs


def load_bench_runs(inputs: Sequence[str | Path], seed: int = 0) -> tuple[list[BenchRun], list[str]]:
    """Every result file named by ``inputs`` (folders, globs, files): the runs kept and, for each
    file skipped, why."""
    paths = expand_inputs(inputs)
    roots = [Path(p).resolve() for p in inputs if Path(p).is_dir()]
    runs, skipped = [], []
    for path in paths:
        root = next((r for r in roots if path.is_relative_to(r)), None)
        run, reason = read_bench_run(path, root, seed)
        if run is None:
            skipped.append(reason)
        else:
            runs.append(run)
    return runs, skipped


def is_bench_result(path: Path) -> bool:
    """Whether a JSON file looks like a ``vllm bench serve --save-result`` result."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "duration" in data and ("input_lens" in data or "total_input_tokens" in data)
