"""Argument types for the command line: each checks one kind of value and names what is allowed.

``argparse`` calls a ``type=`` function on the raw text; an ``argparse.ArgumentTypeError`` becomes
``servesim CMD: error: argument --flag: <message>`` and exit status 2, so a zero, negative,
non-finite or absurd value is refused before any work starts instead of being silently replaced
by a default.  Limits that are not vLLM's (``MAX_REQUESTS``) bound what one process can hold in
memory: a request costs about 100 bytes of records and arrays.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .sim.arg_spec import ArgSpec, arg_fields, vllm_flags
from .sim.engine_args import EngineArgs

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
                what: str = "", hi_open: bool = False) -> Callable[[str], float]:
    """A number ``> lo`` (``>= lo`` when ``lo_open`` is False) and ``<= hi`` (``< hi`` with
    ``hi_open``); NaN is never allowed, ``inf`` only when ``allow_inf``."""
    def parse(text: str) -> float:
        value = _float(text)
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi) \
            and not math.isnan(value)
        if math.isinf(value) and not allow_inf:
            ok = False
        if not ok:
            low = f"> {lo:g}" if lo_open else f">= {lo:g}"
            bound = low if hi == math.inf else f"{low} and {'<' if hi_open else '<='} {hi:g}"
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


# --------------------------------------------------------------- flags generated from dataclasses


def _flag_type(spec: ArgSpec, base: type) -> Callable[[str], Any] | None:
    """The ``type=`` of a field's flag: the range-checking parsers above, from the spec's bounds."""
    if spec.input_file:
        return input_file
    if base is int:
        if spec.choices:
            return int
        return int_range(int(spec.lo), None if spec.hi is None else int(spec.hi)) if spec.lo is not None else _int
    if base is float:
        return float_range(spec.lo if spec.lo is not None else -math.inf, math.inf if spec.hi is None else spec.hi,
                           lo_open=spec.lo_open, hi_open=spec.hi_open, allow_inf=spec.allow_inf)
    return None


def flag_help(spec: ArgSpec, default: Any) -> str:
    """A flag's help: what it is, its unit, its default (per engine generation where they differ)
    and the vLLM argument it mirrors."""
    parts = [spec.help]
    if spec.unit:
        parts.append(f"[{spec.unit}]")
    if spec.defaults and len({text for _, text in spec.defaults}) == 1:
        parts.append(f"(default: {spec.defaults[0][1]})")
    elif spec.defaults:
        parts.append("(default: " + "; ".join(f"{engine} {text}" for engine, text in spec.defaults) + ")")
    elif default is not None and default != "":
        parts.append(f"(default {default})")
    elif spec.omitted:
        parts.append(f"(default: {spec.omitted})")
    if spec.vllm:
        parts.append(f"(vLLM {vllm_flags(spec)})")
    return " ".join(parts).replace("%", "%%")


def add_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
             names: Sequence[str] | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None,
             groups: Mapping[str, argparse._ArgumentGroup] | None = None) -> None:
    """Add a flag for each :func:`~servesim.sim.arg_spec.arg` field of ``cls`` (the ``names``
    given, in that order; default: every field that has flags).  The destination is the field
    name, the type and choices follow the spec, the default is the field's.  ``overrides[name]``
    replaces ``add_argument`` keywords (``default``, ``help``, ``flags`` ...) for one command;
    ``groups[section]`` puts a section's flags in an argument group."""
    by_name = {f.name: (f, spec, base) for f, spec, base, _ in arg_fields(cls)}
    for name in names if names is not None else [n for n, (_, s, _) in by_name.items() if s.flags]:
        f, spec, base = by_name[name]
        extra = dict((overrides or {}).get(name, {}))
        flags = tuple(extra.pop("flags", spec.flags))
        default = extra.get("default", f.default)
        kw: dict[str, Any] = {"dest": name, "default": default, "help": flag_help(spec, default)}
        if base is not bool and not (spec.choices and spec.cli_choices):
            long = next((f for f in flags if f.startswith("--")), flags[0])
            kw["metavar"] = long.lstrip("-").upper().replace("-", "_")
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _flag_type(spec, base)
            if spec.choices and spec.cli_choices:
                kw["choices"] = list(spec.choices)
        kw.update(extra)
        target = (groups or {}).get(spec.section, parser)
        target.add_argument(*flags, **kw)


def add_engine_args(parser: argparse.ArgumentParser, names: Sequence[str] | None = None,
                    overrides: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """The :class:`~servesim.sim.engine_args.EngineArgs` flags (``names``; default: all), in a
    "deployment" and an "engine knobs" group; :func:`engine_args_from` reads them back."""
    groups = {"deployment": parser.add_argument_group("deployment"),
              "knobs": parser.add_argument_group("engine knobs (vLLM names; defaults as vLLM sets them for the "
                                                 "engine; docs/cli.md)")}
    add_args(parser, EngineArgs, names, overrides, groups)


def engine_args_from(ns: argparse.Namespace, **changes: Any) -> EngineArgs:
    """The :class:`EngineArgs` of parsed flags: every field with a flag on the parser that produced
    ``ns``, ``changes`` on top; a field left ``None`` whose default is not ``None`` keeps its default."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(EngineArgs):
        if hasattr(ns, f.name):
            value = getattr(ns, f.name)
            if value is not None or f.default is None:
                values[f.name] = value
    values.update(changes)
    return EngineArgs(**values)


__all__ = ["add_args", "add_engine_args", "engine_args_from", "flag_help",
           "FRACTION", "MAX_REQUESTS", "NON_NEGATIVE", "NON_NEGATIVE_INT", "PORT", "POSITIVE", "POSITIVE_INT",
           "RATE", "REQUEST_COUNT", "SEED", "check_writable_dir", "float_range", "input_file", "int_range",
           "yaml_error"]
