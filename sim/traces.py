"""Request traces on disk, read into :class:`~servesim.sim.workload.Workload` arrays.

Formats (detected by :func:`load_trace`):

* ``azure``: Azure LLM inference trace 2023 (Splitwise), CSV
  ``TIMESTAMP,ContextTokens,GeneratedTokens``;
* ``mooncake``: Mooncake/Kimi JSONL, ``timestamp`` (ms), ``input_length``, ``output_length``,
  ``hash_ids`` (one id per 512-token prompt block);
* ``csv``: this project's plain CSV ``arrival_s,input_tokens,output_tokens``
  (written by :func:`save_plain_csv`);
* ``bench_json``: a ``vllm bench serve --save-result`` JSON; it holds lengths but no send times.

Loaders keep the recorded arrival times exactly (azure and mooncake relative to their first row;
plain CSV as written, so a saved workload round-trips), optionally keep only the first ``limit``
rows, then multiply every inter-arrival gap by ``time_scale`` or rescale to a mean ``rate``
(requests/s).  A recorded output length of 0 (a request that produced nothing) is raised to 1
and counted in ``Workload.num_clamped_outputs``.  A malformed file raises ``ValueError`` naming
the file, the line (data rows start at line 2 of a CSV) and what was expected.

Also here, because it reads a file: :func:`sharegpt_lengths` (length pairs sampled from the
ShareGPT table, found by :func:`~servesim.sim.data_paths.find_shared_data`).
"""
from __future__ import annotations

import csv
import errno
import json
import math
import os
import re
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import numpy as np
import pandas as pd

from .arrivals import gamma_arrivals
from .data_paths import find_shared_data
from .request_streams import Workload, spawn_streams

# ------------------------------------------------------------------------------- column helpers


def _check_file(path: Path) -> None:
    """A readable regular file, else ``FileNotFoundError``/``ValueError`` naming it."""
    if path.is_dir():
        raise ValueError(f"{path} is a directory; expected a trace file")
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such file", str(path))


def _field_count_error(path: Path, width: int, header: list[str]) -> ValueError | None:
    """The first data line whose field count differs from the header's, as an error (or None)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        for lineno, row in enumerate(csv.reader(f, skipinitialspace=True), 1):
            if lineno > 1 and row and len(row) != width:
                return ValueError(f"{path}: line {lineno}: {len(row)} fields, expected {width} "
                                  f"({','.join(header)})")
    return None


def _read_csv(path: Path, columns: tuple[str, ...], limit: int | None) -> pd.DataFrame:
    """The CSV at ``path`` with at least ``columns``, every cell a stripped string, indexed by the
    file line each row is on (the header is line 1).

    Columns are found by the header's names, never by position: a row whose field count differs
    from the header's raises ``ValueError`` naming the line (a row with an extra field must not
    shift the others).  A UTF-8 byte-order mark is accepted; blank lines are skipped.
    """
    _check_file(path)
    try:
        raw = pd.read_csv(path, header=None, dtype=str, na_filter=False, skip_blank_lines=False,
                          skipinitialspace=True, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file; expected a header {','.join(columns)}") from None
    except pd.errors.ParserError as err:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
        if m:
            raise ValueError(f"{path}: line {m[2]}: {m[3]} fields, expected {m[1]} as in the header "
                             "(columns are matched by the header's names)") from None
        raise ValueError(f"{path}: not a well-formed CSV ({err})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    raw.index = np.arange(1, len(raw) + 1)  # file line numbers
    raw = raw[(raw != "").any(axis=1)]      # blank lines
    if raw.empty:
        raise ValueError(f"{path}: empty file; expected a header {','.join(columns)}")
    header = [str(c).strip() for c in raw.iloc[0]]
    frame = raw.iloc[1:].copy()
    frame.columns = header
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise ValueError(f"{path}: header repeats column(s) {duplicated}; header is {header}")
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; header is {header}, "
                         f"expected {','.join(columns)}")
    frame = frame[list(columns)].apply(lambda col: col.str.strip())
    if (frame == "").any(axis=None):  # a short row pads with empty cells: name it as such
        short = _field_count_error(path, len(header), header)
        first_empty = int(frame.index[(frame == "").any(axis=1)][0])
        if short is not None and int(str(short).split("line ")[1].split(":")[0]) <= first_empty:
            raise short
    return frame.iloc[:limit] if limit is not None else frame


def _first_bad(path: Path, column: str, bad: np.ndarray, values: pd.Series, expected: str) -> None:
    """Raise ``ValueError`` for the first true entry of ``bad`` (a CSV row), if any."""
    rows = np.flatnonzero(bad)
    if rows.size:
        i = int(rows[0])
        value = values.iloc[i]
        shown = "(empty)" if pd.isna(value) or value == "" else repr(str(value))
        raise ValueError(f"{path}: line {values.index[i]}: {column}={shown}; expected {expected}")


def _number_column(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    """``column`` as finite float64; the first non-numeric or missing cell raises ``ValueError``."""
    raw = frame[column]
    numbers = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    _first_bad(path, column, ~np.isfinite(numbers), raw, "a finite number")
    return numbers


def _count_column(frame: pd.DataFrame, column: str, path: Path, minimum: int) -> np.ndarray:
    """``column`` as int64 whole numbers >= ``minimum``."""
    numbers = _number_column(frame, column, path)
    _first_bad(path, column, numbers != np.round(numbers), frame[column], "a whole number of tokens")
    _first_bad(path, column, numbers < minimum, frame[column], f"a token count >= {minimum}")
    return numbers.astype(np.int64)


def _check_sorted(path: Path, column: str, times: np.ndarray, lines: pd.Index) -> None:
    back = np.flatnonzero(np.diff(times) < 0)
    if back.size:
        i = int(back[0]) + 1
        raise ValueError(f"{path}: line {lines[i]}: {column} goes back in time "
                         f"({times[i]} after {times[i - 1]}); expected rows sorted by arrival")


def _clamp_outputs(outputs: np.ndarray) -> tuple[np.ndarray, int]:
    """Outputs with 0 raised to 1, and how many were raised."""
    zero = outputs == 0
    return np.where(zero, 1, outputs), int(zero.sum())


def read_length_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All ``(num_prefill_tokens, num_decode_tokens)`` rows of a ShareGPT lengths CSV."""
    path = Path(path)
    frame = _read_csv(path, ("num_prefill_tokens", "num_decode_tokens"), None)
    return (_count_column(frame, "num_prefill_tokens", path, 1),
            _count_column(frame, "num_decode_tokens", path, 1))


def sharegpt_lengths(n: int, rng: np.random.Generator, path: str | Path | None = None,
                     max_input: int | None = None,
                     max_output: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (input, output) length pairs sampled from ShareGPT conversations.

    Reads ``num_prefill_tokens,num_decode_tokens`` from ``path`` (default: the shared
    ``traces/sharegpt_lengths_llama2.csv``, found by :func:`find_shared_data`).
    Rows longer than ``max_input`` / ``max_output`` are dropped (not clipped, so the joint shape
    of the remaining rows is kept); rows are drawn without replacement when ``n`` <= rows left.
    """
    path = find_shared_data("traces/sharegpt_lengths_llama2.csv") if path is None else Path(path)
    inputs, outputs = read_length_pairs(path)
    keep = np.ones(inputs.size, dtype=bool)
    if max_input is not None:
        keep &= inputs <= max_input
    if max_output is not None:
        keep &= outputs <= max_output
    inputs, outputs = inputs[keep], outputs[keep]
    if inputs.size == 0:
        raise ValueError(f"{path}: no row has input <= {max_input} and output <= {max_output} tokens")
    rows = rng.choice(inputs.size, size=n, replace=n > inputs.size)
    return inputs[rows], outputs[rows]


# ------------------------------------------------------------------------------------- loaders


# Arrival times past this (~317 years) cannot be told apart at sub-millisecond resolution in
# float64 (the spacing of doubles near 1e10 is ~2 us; near 1e13 it is ms): a timestamp this large
# is a unit mix-up, not a trace.
MAX_ARRIVAL_S = 1e10


def _check_horizon(arrival_s: np.ndarray) -> np.ndarray:
    if arrival_s.size and not float(arrival_s[-1] - arrival_s[0]) <= MAX_ARRIVAL_S:
        raise ValueError(f"arrival times beyond {MAX_ARRIVAL_S:g} s after the first request (last at "
                         f"{float(arrival_s[-1] - arrival_s[0]):g} s): check the timestamp unit")
    return arrival_s


def rescale_arrivals(arrival_s: np.ndarray, time_scale: float | None = None,
                     rate: float | None = None) -> np.ndarray:
    """Arrival times with every inter-arrival gap multiplied by one factor; the first is kept.

    ``time_scale`` is the factor itself (2.0 = half the load).  ``rate`` asks for a mean rate
    ``(n - 1) / duration`` in requests/s instead; a burst (zero duration) cannot be rescaled that
    way.  At most one of the two may be given; with neither the input is returned unchanged.
    """
    if time_scale is not None and rate is not None:
        raise ValueError("give time_scale or rate, not both")
    if time_scale is None and rate is None:
        return _check_horizon(arrival_s)
    if rate is not None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive finite requests/s, got {rate}")
        span = float(arrival_s[-1] - arrival_s[0]) if arrival_s.size > 1 else 0.0
        if span <= 0:
            raise ValueError("cannot rescale to a rate: all arrivals are at the same instant")
        time_scale = (arrival_s.size - 1) / (span * rate)
    assert time_scale is not None  # given, or derived from rate above
    if not (time_scale > 0 and math.isfinite(time_scale)):
        raise ValueError(f"time_scale must be a positive finite factor, got {time_scale}")
    return _check_horizon(arrival_s[0] + (arrival_s - arrival_s[0]) * time_scale if arrival_s.size else arrival_s)


def load_azure_trace(path: str | Path, limit: int | None = None, time_scale: float | None = None,
                     rate: float | None = None, name: str | None = None) -> Workload:
    """An Azure LLM inference trace (``TIMESTAMP,ContextTokens,GeneratedTokens``).

    ``TIMESTAMP`` is wall-clock text like ``2023-11-16 18:17:03.9799600`` (parsed as ISO 8601,
    vectorised); arrivals are seconds since the first row.  ``GeneratedTokens`` of 0 is raised
    to 1 and counted in ``num_clamped_outputs``.
    """
    path = Path(path)
    frame = _read_csv(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens"), limit)
    stamps = pd.to_datetime(frame["TIMESTAMP"], format="ISO8601", errors="coerce")
    _first_bad(path, "TIMESTAMP", stamps.isna().to_numpy(), frame["TIMESTAMP"],
               "a timestamp like '2023-11-16 18:17:03.9799600'")
    seconds = np.zeros(0)
    if len(frame):
        seconds = (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy(dtype=np.float64)
    _check_sorted(path, "TIMESTAMP", seconds, frame.index)
    inputs = _count_column(frame, "ContextTokens", path, 1)
    outputs, clamped = _clamp_outputs(_count_column(frame, "GeneratedTokens", path, 0))
    return Workload(rescale_arrivals(seconds, time_scale, rate), inputs, outputs,
                    name or path.stem, num_clamped_outputs=clamped)


def _json_count(path: Path, lineno: int, record: dict, key: str, minimum: int) -> int:
    value = record.get(key)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value != int(value) or value < minimum):
        raise ValueError(f"{path}: line {lineno}: {key}={value!r}; expected a whole number >= {minimum}")
    return int(value)


def load_mooncake_trace(path: str | Path, limit: int | None = None, time_scale: float | None = None,
                        rate: float | None = None, name: str | None = None,
                        prefix_block_tokens: int = 512) -> Workload:
    """A Mooncake JSONL trace; ``hash_ids`` become ``prefix_hashes`` when every row has them.

    ``timestamp`` is in ms; arrivals are seconds since the first row.  Parsing is a Python loop
    over lines (``json.loads``), a few seconds per million rows.
    """
    path = Path(path)
    stamps_ms: list[float] = []
    inputs: list[int] = []
    outputs: list[int] = []
    hashes: list[tuple[int, ...]] = []
    with_hashes = False
    expected = "one JSON object a line with timestamp, input_length, output_length, hash_ids"
    _check_file(path)
    with open(path, "rb") as lines:
        for lineno, raw in enumerate(lines, 1):
            if limit is not None and len(inputs) >= limit:
                break
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}: line {lineno}: not UTF-8 text ({err.reason}); expected {expected}") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {lineno}: invalid JSON ({err.msg}); "
                                 f"expected {expected}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}: line {lineno}: got {type(record).__name__}; expected {expected}")
            stamp = record.get("timestamp")
            if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp):
                raise ValueError(f"{path}: line {lineno}: timestamp={stamp!r}; expected a number of ms")
            if stamps_ms and stamp < stamps_ms[-1]:
                raise ValueError(f"{path}: line {lineno}: timestamp {stamp} goes back in time "
                                 f"(after {stamps_ms[-1]}); expected rows sorted by timestamp")
            stamps_ms.append(stamp)
            inputs.append(_json_count(path, lineno, record, "input_length", 1))
            outputs.append(_json_count(path, lineno, record, "output_length", 0))
            ids = record.get("hash_ids")
            if len(inputs) == 1:
                with_hashes = ids is not None
            if (ids is not None) != with_hashes:
                raise ValueError(f"{path}: line {lineno}: hash_ids present on some rows only; "
                                 "expected all rows or none")
            if ids is not None:
                if not isinstance(ids, list) or not all(isinstance(h, int) for h in ids):
                    raise ValueError(f"{path}: line {lineno}: hash_ids={ids!r}; expected a list of ints")
                negative = [h for h in ids if h < 0]
                if negative:
                    raise ValueError(f"{path}: line {lineno}: hash_ids holds {negative[0]}; "
                                     "expected non-negative ints (prefix block ids)")
                hashes.append(tuple(ids))
    stamps = np.asarray(stamps_ms, dtype=np.float64)
    seconds = (stamps - stamps[0]) / 1000.0 if stamps.size else stamps
    out, clamped = _clamp_outputs(np.asarray(outputs, dtype=np.int64))
    return Workload(rescale_arrivals(seconds, time_scale, rate), np.asarray(inputs, dtype=np.int64),
                    out, name or path.stem, hashes if with_hashes else None, prefix_block_tokens, clamped)


PLAIN_COLUMNS = ("arrival_s", "input_tokens", "output_tokens")


def load_plain_csv(path: str | Path, limit: int | None = None, time_scale: float | None = None,
                   rate: float | None = None, name: str | None = None) -> Workload:
    """A plain CSV ``arrival_s,input_tokens,output_tokens``; times kept as written (>= 0, sorted)."""
    path = Path(path)
    frame = _read_csv(path, PLAIN_COLUMNS, limit)
    arrivals = _number_column(frame, "arrival_s", path)
    _first_bad(path, "arrival_s", arrivals < 0, frame["arrival_s"], "seconds >= 0")
    _check_sorted(path, "arrival_s", arrivals, frame.index)
    inputs = _count_column(frame, "input_tokens", path, 1)
    outputs = _count_column(frame, "output_tokens", path, 1)
    return Workload(rescale_arrivals(arrivals, time_scale, rate), inputs, outputs, name or path.stem)


def save_plain_csv(workload: Workload, path: str | Path) -> Path:
    """Write ``workload`` as a plain CSV that :func:`load_plain_csv` reads back exactly.

    Written to a temporary file beside ``path`` and renamed, so no half-written file is left.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    pd.DataFrame({"arrival_s": workload.arrival_s, "input_tokens": workload.input_tokens,
                  "output_tokens": workload.output_tokens}).to_csv(tmp, index=False, float_format="%.17g")
    os.replace(tmp, path)
    return path


def _json_counts(path: Path, data: dict, key: str, minimum: int) -> np.ndarray:
    values = data.get(key)
    if not isinstance(values, list):
        raise ValueError(f"{path}: missing list {key!r}; expected a vllm bench serve --save-result JSON")
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.array([v if isinstance(v, (int, float)) else np.nan for v in values], dtype=np.float64)
    bad = ~np.isfinite(arr) | (arr != np.round(arr)) | (arr < minimum)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}: {key}[{i}]={values[i]!r}; expected a whole number >= {minimum}")
    return arr.astype(np.int64)


def load_bench_json(path: str | Path, rate: float | None = None, burstiness: float | None = None,
                    seed: int = 0, limit: int | None = None, name: str | None = None) -> Workload:
    """The lengths of a ``vllm bench serve --save-result`` run, with fresh arrival times.

    The file holds ``input_lens``/``output_lens`` but not when requests were sent; they are drawn
    by :func:`~servesim.sim.workload.gamma_arrivals` from the arrivals stream of ``seed`` with
    ``rate`` (inf = burst) and ``burstiness``, defaulting to the file's ``request_rate`` and
    ``burstiness`` (else inf and 1).  Failed requests record output 0 and are clamped to 1.
    A ``max_concurrency`` in the file is not a property of arrivals and is not applied here.
    """
    path = Path(path)
    _check_file(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with input_lens and output_lens")
    inputs = _json_counts(path, data, "input_lens", 1)
    outputs = _json_counts(path, data, "output_lens", 0)
    if inputs.size != outputs.size:
        raise ValueError(f"{path}: input_lens has {inputs.size} entries, output_lens "
                         f"{outputs.size}; expected equal")
    outputs, clamped = _clamp_outputs(outputs[:limit])
    inputs = inputs[:limit]
    try:
        rate = float(data.get("request_rate", math.inf) if rate is None else rate)
        burstiness = float(data.get("burstiness", 1.0) if burstiness is None else burstiness)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: request_rate/burstiness must be numbers or 'inf', got "
                         f"{data.get('request_rate')!r}/{data.get('burstiness')!r}") from None
    arrivals = gamma_arrivals(inputs.size, rate, burstiness, spawn_streams(seed).arrivals)
    return Workload(arrivals, inputs, outputs, name or path.stem, num_clamped_outputs=clamped)


# ------------------------------------------------------------------------------------ dispatch


class TraceKind(str, Enum):
    """The trace formats :func:`load_trace` reads."""

    AZURE = "azure"
    MOONCAKE = "mooncake"
    CSV = "csv"
    BENCH_JSON = "bench_json"


def detect_trace_kind(path: str | Path) -> TraceKind:
    """The format of ``path`` from its extension and, for CSV, its header line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return TraceKind.MOONCAKE
    if suffix == ".json":
        return TraceKind.BENCH_JSON
    _check_file(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            first = f.readline().strip()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    if first.startswith("{"):
        return TraceKind.MOONCAKE
    header = {c.strip() for c in first.split(",")}
    if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= header:
        return TraceKind.AZURE
    if set(PLAIN_COLUMNS) <= header:
        return TraceKind.CSV
    if "num_prefill_tokens" in header:
        raise ValueError(f"{path}: a lengths-only file without arrival times; use it through "
                         "sharegpt_lengths() / dataset='sharegpt' instead")
    raise ValueError(f"{path}: unknown trace format (header {first[:80]!r}); expected .jsonl (mooncake), "
                     ".json (bench_json), or a CSV with header TIMESTAMP,ContextTokens,GeneratedTokens "
                     f"(azure) or {','.join(PLAIN_COLUMNS)}")


def load_trace(path: str | Path, kind: TraceKind | str | None = None, **options: object) -> Workload:
    """Load ``path`` with the loader for ``kind`` (detected when None); ``options`` pass through.

    ``rate``, ``limit`` and ``name`` apply to every kind; ``time_scale`` to all but bench_json,
    which takes ``burstiness`` and ``seed`` instead.  Options that are None are dropped.
    """
    try:
        kind = detect_trace_kind(path) if kind is None else TraceKind(kind)
    except ValueError as err:
        if kind is None:
            raise
        raise ValueError(f"unknown trace kind {kind!r}; valid: {[k.value for k in TraceKind]}") from err
    loaders: dict[TraceKind, Callable[..., Workload]] = {
        TraceKind.AZURE: load_azure_trace, TraceKind.MOONCAKE: load_mooncake_trace,
        TraceKind.CSV: load_plain_csv, TraceKind.BENCH_JSON: load_bench_json}
    return loaders[kind](path, **{k: v for k, v in options.items() if v is not None})
