"""What a ``vllm serve`` start-up log tells: version, arguments, memory profile, KV capacity, or why it failed.

:func:`parse_startup_log` reads the lines vLLM prints while it sizes its KV cache:

* v1 (0.8+): the version banner (``version 0.19.0``), ``non-default args: {...}``, ``worker init
  memory snapshot: ... total_memory=79.19GiB``, ``Model loading took 12.56 GiB``, ``Memory profiling
  takes ... torch peak memory increase: 0.77GiB; non-torch forward increase memory: 0.25GiB; weights
  memory: 12.56GiB``, ``Available KV cache memory: 61.66 GiB``, ``GPU KV cache size: 126,256 tokens``,
  ``Maximum concurrency for 8,192 tokens per request: 15.41x``, ``CUDA graph pool memory: 0.89 GiB
  (actual)`` / ``Graph capturing finished in 4 secs, took 0.89 GiB``, ``num_gpu_blocks is: 7891``;
* v0 (0.5-0.8): ``# GPU blocks: N, # CPU blocks: M`` (``# cuda blocks`` in 0.7/0.8), ``Memory profiling
  results: total_gpu_memory=... non_torch_memory=... kv_cache_size=...`` (0.6.5) and ``model weights
  took ...; non_torch_memory takes ...; PyTorch activation peak memory takes ...; the rest of the
  memory reserved for KV Cache is ...`` (0.7/0.8).

A log without a KV capacity is a failed start; :class:`StartupFailure` names the root cause (the
first exception that is not one of vLLM's wrappers such as "Engine core initialization failed"),
classified as a :class:`FailureKind`.  The profiling lines repeat once per TP worker; the first
occurrence is kept, from the worker that reports the available KV memory (TP workers report the
same values; pipeline stages do not).  With vLLM's hybrid KV-cache manager
(sliding-window models such as Gemma 2/3, gpt-oss) ``num_gpu_blocks`` counts the shared block pool
of all KV-cache groups, so it is a multiple of ``GPU KV cache size / block_size``.
"""
from __future__ import annotations

import ast
import enum
import re
from dataclasses import dataclass, field

_NUM = r"(-?[\d.]+)"


class FailureKind(enum.Enum):
    """Why a vLLM server did not start, as its log says."""

    INSUFFICIENT_FREE_MEMORY = "insufficient_free_memory"   # GPU already partly used by another process
    OUT_OF_MEMORY = "out_of_memory"                          # CUDA OOM while profiling / warming up
    NO_KV_CACHE_MEMORY = "no_kv_cache_memory"                # nothing left for a single KV block
    MAX_MODEL_LEN = "max_model_len"                          # max_model_len above what model or cache allows
    MODEL_UNAVAILABLE = "model_unavailable"                  # checkpoint could not be downloaded (gated, offline)
    UNSUPPORTED_MODEL = "unsupported_model"                  # architecture unknown to this vLLM/Transformers
    INVALID_PARALLEL_CONFIG = "invalid_parallel_config"      # TP/DP sizes the model or machine cannot take
    OTHER = "other"


_KIND_PATTERNS: tuple[tuple[FailureKind, re.Pattern[str]], ...] = (
    (FailureKind.INSUFFICIENT_FREE_MEMORY, re.compile(r"Free memory on device .* less than desired")),
    (FailureKind.NO_KV_CACHE_MEMORY, re.compile(r"No available memory for the cache blocks")),
    (FailureKind.OUT_OF_MEMORY, re.compile(r"out of memory", re.I)),
    (FailureKind.MAX_MODEL_LEN, re.compile(r"max_model_len|max seq len", re.I)),
    (FailureKind.MODEL_UNAVAILABLE, re.compile(r"huggingface\.co|LocalEntryNotFound|Client Error|gated repo", re.I)),
    (FailureKind.UNSUPPORTED_MODEL, re.compile(r"does not recognize this architecture|not supported", re.I)),
    (FailureKind.INVALID_PARALLEL_CONFIG, re.compile(r"not divisible by|rank .* out of bounds|world size", re.I)),
)
# "SomethingError: message" / "Exception: message", after an optional "(Worker pid=1) ERROR ... ]" prefix.
_EXCEPTION = re.compile(r"^(?:\([^)]*\)\s*)?(?:ERROR [\d\- :]+\[[^\]]*\]\s*)?"
                        r"((?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception)):\s*(.*)$")
# Exceptions vLLM raises around the root cause, which only say "see above".
_WRAPPERS = re.compile(r"Engine core initialization failed|WorkerProc initialization failed|Broken pipe|"
                       r"see (?:the )?(?:stack trace|root cause)", re.I)
_QUIET = re.compile(r"^(?:\([^)]*\)\s*)?(?:DEBUG|INFO|WARNING) \d")
# The API server came up: whatever failed after this line is not a start-up failure.
_STARTED = re.compile(r"Application startup complete|Starting vLLM (?:API )?server")
_PREFIX = re.compile(r"^(?:\([^)]*\)\s*)?(?:(?:DEBUG|INFO|WARNING|ERROR) [\d\- :]+\[[^\]]*\]\s*)?")

# Per field, patterns tried in order (v1 first, then the v0 formats); the first match counts.
_FLOAT_PATTERNS: dict[str, tuple[re.Pattern[str], ...]] = {
    "total_memory_gib": (re.compile(r"total_memory=" + _NUM + r"GiB"),
                         re.compile(r"total_gpu_memory[=\s(]+" + _NUM + r"\s*GiB")),
    "weights_gib": (re.compile(r"weights memory:\s*" + _NUM + r"\s*GiB"),
                    re.compile(r"Model loading took " + _NUM + r"\s*GiB"),
                    re.compile(r"model weights took " + _NUM + r"\s*GiB")),
    "activation_peak_gib": (re.compile(r"torch peak memory increase:\s*" + _NUM + r"\s*GiB"),
                            re.compile(r"activation peak memory takes " + _NUM + r"\s*GiB")),
    "non_torch_gib": (re.compile(r"non-torch forward increase memory:\s*" + _NUM + r"\s*GiB"),
                      re.compile(r"Memory profiling results:.*non_torch_memory=" + _NUM + r"\s*GiB"),
                      re.compile(r"non_torch_memory takes " + _NUM + r"\s*GiB")),
    "available_kv_gib": (re.compile(r"Available KV cache memory:\s*" + _NUM + r"\s*GiB"),
                         re.compile(r"kv_cache_size=" + _NUM + r"\s*GiB"),
                         re.compile(r"reserved for KV Cache is " + _NUM + r"\s*GiB")),
    "cuda_graph_gib": (re.compile(r"CUDA graph pool memory:\s*" + _NUM + r"\s*GiB \(actual\)"),
                       re.compile(r"Graph capturing finished in \d+ secs?, took " + _NUM + r"\s*GiB")),
    "requested_memory_gib": (re.compile(r"Requested memory: [\d.]+ \(util\), " + _NUM + r"\s*GiB"),),
}
_INT_PATTERNS = {
    "kv_cache_tokens": re.compile(r"GPU KV cache size:\s*([\d,]+)\s*tokens"),
    "num_gpu_blocks": re.compile(r"(?:# (?:GPU|cuda) blocks:|num_gpu_blocks is:)\s*([\d,]+)"),
    "num_cpu_blocks": re.compile(r"# CPU blocks:\s*([\d,]+)"),
}
_VERSION = re.compile(r"version (\d+\.\d+\.\d+\S*)|Initializing an? (V[01]) LLM engine \(v(\d+\.\d+\.\d+\S*)\)|"
                      r"vLLM API server version (\d+\.\d+\.\d+\S*)")
_ENGINE = re.compile(r"Initializing an? (V[01]) LLM engine")
_ARGS = re.compile(r"non-default args: (\{.*\})\s*$")
_CONCURRENCY = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request:\s*([\d.]+)x")
_UTIL = re.compile(r"Requested memory: ([\d.]+) \(util\)|gpu_memory_utilization[=:]\s*([\d.]+)")


@dataclass(frozen=True)
class StartupFailure:
    """The root cause of a failed start: its kind, exception type, message and 1-based line."""

    kind: FailureKind
    exception: str
    message: str
    line: int

    def describe(self) -> str:
        return f"{self.kind.value}: {self.exception}: {self.message} (log line {self.line})"


@dataclass(frozen=True)
class StartupLog:
    """Facts of one vLLM start-up log; ``None`` where the log does not say.  GiB are as logged."""

    vllm_version: str | None = None
    engine: str | None = None                       # "v1" or "v0"
    non_default_args: dict = field(default_factory=dict)
    total_memory_gib: float | None = None
    gpu_memory_utilization: float | None = None
    requested_memory_gib: float | None = None
    weights_gib: float | None = None
    activation_peak_gib: float | None = None
    non_torch_gib: float | None = None
    available_kv_gib: float | None = None
    cuda_graph_gib: float | None = None
    kv_cache_tokens: int | None = None
    num_gpu_blocks: int | None = None
    num_cpu_blocks: int | None = None
    max_concurrency: dict | None = None             # {"tokens_per_request": int, "concurrency": float}
    failure: StartupFailure | None = None

    @property
    def kv_sized(self) -> bool:
        """True when the log reports a KV capacity (the server got past sizing its cache)."""
        return self.kv_cache_tokens is not None or self.num_gpu_blocks is not None

    @property
    def succeeded(self) -> bool:
        """True when the server sized its KV cache and came up (no start-up failure)."""
        return self.kv_sized and self.failure is None



def _first_float(patterns: tuple[re.Pattern[str], ...], text: str) -> float | None:
    for pattern in patterns:
        m = pattern.search(text)
        if m is not None:
            return float(m.group(1))
    return None


def _reporting_worker_lines(text: str) -> str:
    """Lines of the worker that logs the available KV memory (under PP the stages differ; the
    first stage reports), or the whole text when no such line or prefix exists."""
    m = re.search(r"^(\([^)]*\)) .*Available KV cache memory", text, re.M)
    if m is None:
        return text
    prefix = m.group(1)
    return "\n".join(line for line in text.splitlines() if line.startswith(prefix))


def _last_int(pattern: re.Pattern[str], text: str) -> int | None:
    found = pattern.findall(text)
    return int(found[-1].replace(",", "")) if found else None


def _version(text: str) -> tuple[str | None, str | None]:
    version = None
    m = _VERSION.search(text)
    if m:
        version = m.group(1) or m.group(3) or m.group(4)
    e = _ENGINE.search(text)
    return version, (e.group(1).lower() if e else None)


def _non_default_args(text: str) -> dict:
    for line in text.splitlines():
        m = _ARGS.search(line)
        if m:
            try:
                value = ast.literal_eval(m.group(1))
            except (ValueError, SyntaxError):
                return {}
            return value if isinstance(value, dict) else {}
    return {}


def find_failure(text: str) -> StartupFailure | None:
    """The root-cause exception of a log, or None when the log shows none.

    The first exception line that is not a wrapper wins (tracebacks print the root cause first;
    later lines re-raise it).  A pydantic ``ValidationError`` takes its message from the following
    ``Value error, ...`` line.
    """
    lines = text.splitlines()
    for i, raw in enumerate(lines):
        if _QUIET.search(raw):
            continue  # DEBUG/INFO/WARNING tracebacks (a missing chat template) are not the failure
        line = _PREFIX.sub("", raw, count=1)
        m = _EXCEPTION.match(line.strip())
        if m is None or _WRAPPERS.search(m.group(2)) or m.group(1).endswith("BrokenPipeError"):
            continue
        exception, message = m.group(1), m.group(2).strip()
        if exception.endswith("ValidationError"):
            for follow in lines[i + 1:i + 4]:
                body = _PREFIX.sub("", follow, count=1).strip()
                if body.lower().startswith("value error"):
                    message = body.split(",", 1)[-1].strip()
                    break
        kind = next((k for k, pat in _KIND_PATTERNS if pat.search(message) or pat.search(exception)),
                    FailureKind.OTHER)
        return StartupFailure(kind, exception.rsplit(".", 1)[-1], message, i + 1)
    return None


def parse_startup_log(text: str) -> StartupLog:
    """Parse a vLLM start-up log (see the module docstring for the lines read)."""
    version, engine = _version(text)
    scope = _reporting_worker_lines(text)
    floats = {k: _first_float(p, scope) if _first_float(p, scope) is not None else _first_float(p, text)
              for k, p in _FLOAT_PATTERNS.items()}
    ints = {k: _last_int(p, text) for k, p in _INT_PATTERNS.items()}
    concurrency = _CONCURRENCY.findall(text)
    util_match = _UTIL.search(text)
    args = _non_default_args(text)
    util = None
    if util_match:
        util = float(util_match.group(1) or util_match.group(2))
    elif isinstance(args.get("gpu_memory_utilization"), (int, float)):
        util = float(args["gpu_memory_utilization"])
    log = StartupLog(
        vllm_version=version, engine=engine, non_default_args=args, gpu_memory_utilization=util,
        max_concurrency=({"tokens_per_request": int(concurrency[-1][0].replace(",", "")),
                          "concurrency": float(concurrency[-1][1])} if concurrency else None),
        **floats, **ints)
    if _STARTED.search(text):
        return log
    failure = find_failure(text)
    if failure is None and log.kv_sized:
        return log  # a fragment, or a server still starting: nothing failed so far
    failure = failure or StartupFailure(FailureKind.OTHER, "", "the log ends before the KV cache was sized and "
                                        "shows no exception", len(text.splitlines()))
    return StartupLog(**{**log.__dict__, "failure": failure})


__all__ = ["FailureKind", "StartupFailure", "StartupLog", "find_failure", "parse_startup_log"]
