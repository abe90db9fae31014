"""Argument types for the command line: each checks one kind of value and names what is allowed.

``argparse`` calls a ``type=`` function on the raw text; an ``argparse.ArgumentTypeError`` becomes
``servesim CMD: error: argument --flag: <message>`` and exit status 2, so a zero, negative,
non-finite or absurd value is refused before any work starts instead of being silently replaced
by a default.  Limits that are not vLLM's (``MAX_REQUESTS``) bound what one process can hold in
memory: a request costs about 100 bytes of records and arrays.
"""
from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

# At most this many requests in one simulation (about 2 GB of per-request arrays and records).
MAX_REQUESTS = 20_000_000


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def int_range(lo: int, hi: int | None = None, what: str = "") -> Callable[[str], int]:
    """An integer in ``[lo, hi]``."""
    def parse(text: str) -> int:
        value = _int(text)
        if value < lo or (hi is not None and value > hi):
            bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}{what}, got {text!r}")
        return value
    parse.__name__ = "integer"
    return parse


def float_range(lo: float = 0.0, hi: float = math.inf, *, lo_open: bool = True, allow_inf: bool = False,
                what: str = "") -> Callable[[str], float]:
    """A number ``> lo`` (``>= lo`` when ``lo_open`` is False) and ``<= hi``; NaN is never allowed,
    ``inf`` only when ``allow_inf``."""
    def parse(text: str) -> float:
        value = _float(text)
        ok = (value > lo if lo_open else value >= lo) and value <= hi and not math.isnan(value)
        if math.isinf(value) and not allow_inf:
            ok = False
        if not ok:
            low = f"> {lo:g}" if lo_open else f">= {lo:g}"
            bound = low if hi == math.inf else f"{low} and <= {hi:g}"
            finite = " (or inf)" if allow_inf else " and finite"
            raise argparse.ArgumentTypeError(f"must be a number {bound}{finite}{what}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


POSITIVE_INT = int_range(1)
NON_NEGATIVE_INT = int_range(0)
REQUEST_COUNT = int_range(1, MAX_REQUESTS, " (requests one simulation can hold)")
POSITIVE = float_range(0.0)
NON_NEGATIVE = float_range(0.0, lo_open=False)
RATE = float_range(0.0, allow_inf=True, what=" requests/s")
FRACTION = float_range(0.0, 1.0)
PORT = int_range(0, 65535, " (0 picks a free port)")
SEED = int_range(0, 2**63 - 1)


def input_file(text: str) -> str:
    """An existing regular file (not a directory)."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; expected a file")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"file {text!r} not found")
    return text


def check_writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as an output folder that exists or can be created and written, checked before any
    work so that an hour of simulation is not lost to a typo.  Raises ``ValueError``."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {str(path)!r} exists and is not a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {str(path)!r}: {parent} is not a folder")
    try:  # really try: permission bits do not tell root about a read-only file system
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {str(path)!r}: cannot write in {parent.resolve()} ({exc.strerror})") from None
    return out


def yaml_error(exc: Exception) -> str:
    """A YAML parse error on one line: what, and where (``line L, column C``)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


__all__ = ["FRACTION", "MAX_REQUESTS", "NON_NEGATIVE", "NON_NEGATIVE_INT", "PORT", "POSITIVE", "POSITIVE_INT",
           "RATE", "REQUEST_COUNT", "SEED", "check_writable_dir", "float_range", "input_file", "int_range",
           "yaml_error"]
