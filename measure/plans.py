"""Measurement plans: which probe points a run sends, read from YAML, bounded before anything is sent.

A plan names probe *families* (the shipped ``quick`` and ``full`` plans, ``measure/plans/*.yaml``,
are documented in ``docs/measure.md``); each family expands into *points*, and a point is the unit
that completes, fails, or is skipped by ``--resume``:

* ``prefill``     one request at a time, prompt lengths from 16 up to the model's context, 1 output token
* ``decode``      N concurrent requests (short prompts, fixed outputs): the decode batch at size N
* ``context``     decode at long contexts: N concurrent requests with long prompts
* ``kv_capacity`` no requests: reads the KV size the server reports (log, ``vllm:cache_config_info``)
* ``concurrency`` a burst of N requests (prompt 128, output 512 in the H100 study)
* ``seqlen``      a burst of N requests for each (input, output) length pair
* ``rate``        Poisson arrivals at each rate, a fixed number of requests

The literal ``max`` in a length list means ``max_model_len - output_len``; lengths that do not fit
the served context are dropped (and listed in ``run.json``).  Every count and duration is bounded
(:data:`LIMITS`), so no plan can send unbounded traffic.
"""
from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

PLAN_DIR = Path(__file__).resolve().parent / "plans"
FAMILIES = ("prefill", "decode", "context", "kv_capacity", "concurrency", "seqlen", "rate")
# Hard bounds on what one plan may send (the harness only ever talks to loopback or a given address,
# but a mistyped plan must still not flood it or run for days).
LIMITS = {"requests_per_point": 4096, "requests": 200_000, "duration_s": 48 * 3600.0,
          "request_timeout_s": 3600.0, "prompt_len": 1_048_576, "output_len": 65_536, "rate": 1000.0}


class Mode(enum.Enum):
    """How a point's requests are sent."""

    SEQUENTIAL = "sequential"   # one after the other, each waiting for the previous to finish
    BURST = "burst"             # all at once
    POISSON = "poisson"         # at exponential gaps (offset_s of each request)
    READOUT = "readout"         # no requests: read server state


@dataclass(frozen=True)
class RequestSpec:
    """One request of a point: exact prompt and output lengths, send offset from the point's start."""

    prompt_len: int
    output_len: int
    offset_s: float = 0.0


@dataclass(frozen=True)
class ProbePoint:
    """A unit of measurement; ``point_id`` is stable across runs of the same plan (resume key)."""

    family: str
    point_id: str
    mode: Mode
    params: dict[str, Any]
    requests: tuple[RequestSpec, ...] = ()


@dataclass(frozen=True)
class Plan:
    """A validated plan (see the module docstring); ``families`` keeps the YAML's order."""

    name: str
    families: dict[str, dict[str, Any]]
    description: str = ""
    request_timeout_s: float = 600.0
    stall_timeout_s: float = 120.0       # no byte from the server for this long: the request timed out
    seed: int = 0
    token_id_range: tuple[int, int] = (100, 30000)
    max_requests: int = 20000
    max_duration_s: float = 3600.0
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.families) - set(FAMILIES)
        if unknown:
            raise ValueError(f"plan {self.name}: unknown families {sorted(unknown)}; valid: {list(FAMILIES)}")
        if not 0 < self.request_timeout_s <= LIMITS["request_timeout_s"]:
            raise ValueError(f"plan {self.name}: request_timeout_s must be in (0, {LIMITS['request_timeout_s']:.0f}]")
        if not 0 < self.max_duration_s <= LIMITS["duration_s"]:
            raise ValueError(f"plan {self.name}: max_duration_s must be in (0, {LIMITS['duration_s']:.0f}]")
        if not 0 < self.max_requests <= LIMITS["requests"]:
            raise ValueError(f"plan {self.name}: max_requests must be in (0, {LIMITS['requests']}]")
        low, high = self.token_id_range
        if not 0 <= low < high:
            raise ValueError(f"plan {self.name}: token_id_range must be [low, high) with 0 <= low < high")

    @property
    def digest(self) -> str:
        """Hash of the plan's content: ``--resume`` refuses a different plan."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def points(self, max_model_len: int) -> tuple[list[ProbePoint], list[str]]:
        """Expand every family for a server with ``max_model_len``; returns (points, dropped ids)."""
        points, dropped = [], []
        for family, spec in self.families.items():
            for point in resolve_max(_EXPANDERS[family](spec or {}, self.seed), max_model_len):
                too_long = [r for r in point.requests
                            if r.prompt_len < 1 or r.prompt_len + r.output_len > max_model_len]
                (dropped.append(point.point_id) if too_long else points.append(point))
        total = sum(len(p.requests) for p in points)
        if total > self.max_requests:
            raise ValueError(f"plan {self.name} sends {total} requests, more than its max_requests "
                             f"({self.max_requests}); raise max_requests (at most {LIMITS['requests']}) or trim it")
        return points, dropped


# ----- family expansion ------------------------------------------------------------------------
def _lengths(values, output_len: int, what: str) -> list[int | str]:
    out = []
    for v in values:
        if v == "max":
            out.append("max")
        elif isinstance(v, int) and 1 <= v <= LIMITS["prompt_len"]:
            out.append(v)
        else:
            raise ValueError(f"{what}: {v!r} is not a length in [1, {LIMITS['prompt_len']}] or 'max'")
    return out


def _int(spec: dict, key: str, default: int | None = None, low: int = 1, high: int = 1 << 30) -> int:
    value = spec.get(key, default)
    if not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"plan key {key!r}: {value!r} must be an integer in [{low}, {high}]")
    return value


def _counts(spec: dict, key: str) -> list[int]:
    values = spec.get(key)
    if not isinstance(values, list) or not values:
        raise ValueError(f"plan key {key!r} must be a non-empty list of integers")
    return [_int({key: v}, key, high=LIMITS["requests_per_point"]) for v in values]


def _burst(family: str, point_id: str, n: int, prompt: int, out: int, **params) -> ProbePoint:
    return ProbePoint(family, point_id, Mode.BURST, dict(params, concurrency=n, prompt_len=prompt, output_len=out),
                      tuple(RequestSpec(prompt, out) for _ in range(n)))


def _prefill(spec: dict, seed: int) -> list[ProbePoint]:
    out_len = _int(spec, "output_len", 1, high=LIMITS["output_len"])
    repeats = _int(spec, "repeats", 3, high=LIMITS["requests_per_point"])
    points = []
    for p in _lengths(spec.get("prompt_lens", []), out_len, "prefill.prompt_lens"):
        pid = f"prefill/p{p}"
        points.append(ProbePoint("prefill", pid, Mode.SEQUENTIAL, {"prompt_len": p, "output_len": out_len},
                                 tuple(RequestSpec(p if p != "max" else -1, out_len) for _ in range(repeats))))
    return points


def _decode(spec: dict, seed: int) -> list[ProbePoint]:
    prompt = _int(spec, "prompt_len", 128, high=LIMITS["prompt_len"])
    out = _int(spec, "output_len", 128, high=LIMITS["output_len"])
    return [_burst("decode", f"decode/n{n}", n, prompt, out) for n in _counts(spec, "concurrency")]


def _context(spec: dict, seed: int) -> list[ProbePoint]:
    out = _int(spec, "output_len", 64, high=LIMITS["output_len"])
    points = []
    for p in _lengths(spec.get("prompt_lens", []), out, "context.prompt_lens"):
        for n in _counts(spec, "concurrency"):
            points.append(_burst("context", f"context/p{p}/n{n}", n, p if p != "max" else -1, out))
    return points


def _kv_capacity(spec: dict, seed: int) -> list[ProbePoint]:
    return [ProbePoint("kv_capacity", "kv_capacity", Mode.READOUT, {})]


def _concurrency(spec: dict, seed: int) -> list[ProbePoint]:
    prompt = _int(spec, "prompt_len", 128, high=LIMITS["prompt_len"])
    out = _int(spec, "output_len", 512, high=LIMITS["output_len"])
    return [_burst("concurrency", f"concurrency/n{n}", n, prompt, out) for n in _counts(spec, "concurrency")]


def _seqlen(spec: dict, seed: int) -> list[ProbePoint]:
    n = _int(spec, "concurrency", 64, high=LIMITS["requests_per_point"])
    pairs = spec.get("lengths")
    if not isinstance(pairs, list) or not pairs:
        raise ValueError("plan key 'seqlen.lengths' must be a list of [input_len, output_len] pairs")
    points = []
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ValueError(f"seqlen.lengths: {pair!r} is not an [input_len, output_len] pair")
        i = _int({"input_len": pair[0]}, "input_len", high=LIMITS["prompt_len"])
        o = _int({"output_len": pair[1]}, "output_len", high=LIMITS["output_len"])
        points.append(_burst("seqlen", f"seqlen/i{i}-o{o}/n{n}", n, i, o))
    return points


def _rate(spec: dict, seed: int) -> list[ProbePoint]:
    prompt = _int(spec, "prompt_len", 512, high=LIMITS["prompt_len"])
    out = _int(spec, "output_len", 128, high=LIMITS["output_len"])
    n = _int(spec, "num_requests", 200, high=LIMITS["requests_per_point"])
    rates = spec.get("rates")
    if not isinstance(rates, list) or not rates:
        raise ValueError("plan key 'rate.rates' must be a non-empty list of requests per second")
    points = []
    for k, rate in enumerate(rates):
        if not isinstance(rate, (int, float)) or not 0 < rate <= LIMITS["rate"]:
            raise ValueError(f"rate.rates: {rate!r} must be in (0, {LIMITS['rate']}] requests/s")
        rng = np.random.default_rng([seed, 7, k])  # one stream per point: adding a rate changes no other
        offsets = np.cumsum(rng.exponential(1.0 / rate, size=n)) - 0.0
        offsets -= offsets[0]  # the first request at the point's start
        points.append(ProbePoint("rate", f"rate/r{rate:g}", Mode.POISSON,
                                 {"rate": float(rate), "num_requests": n, "prompt_len": prompt, "output_len": out},
                                 tuple(RequestSpec(prompt, out, float(t)) for t in offsets)))
    return points


_EXPANDERS = {"prefill": _prefill, "decode": _decode, "context": _context, "kv_capacity": _kv_capacity,
              "concurrency": _concurrency, "seqlen": _seqlen, "rate": _rate}


def resolve_max(points: list[ProbePoint], max_model_len: int) -> list[ProbePoint]:
    """Replace the ``max`` length placeholder (-1) by ``max_model_len - output_len``."""
    out = []
    for p in points:
        if any(r.prompt_len == -1 for r in p.requests):
            reqs = tuple(RequestSpec(max_model_len - r.output_len if r.prompt_len == -1 else r.prompt_len,
                                     r.output_len, r.offset_s) for r in p.requests)
            p = ProbePoint(p.family, p.point_id, p.mode, dict(p.params, prompt_len=reqs[0].prompt_len), reqs)
        out.append(p)
    return out


# ----- loading ---------------------------------------------------------------------------------
def shipped_plans() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PLAN_DIR.glob("*.yaml"))}


def load_plan(name_or_path: str) -> Plan:
    """A shipped plan by name (``quick``, ``full``) or a YAML file; errors name the problem."""
    shipped = shipped_plans()
    path = shipped.get(name_or_path, Path(name_or_path))
    if not path.is_file():
        raise ValueError(f"plan {name_or_path!r} is neither a shipped plan ({sorted(shipped)}) nor a file")
    from ..argtypes import yaml_error
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        raise ValueError(f"plan {path} is not valid YAML: {yaml_error(exc)}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"plan {path} is not UTF-8 text ({exc.reason})") from None
    try:
        return plan_from_dict(raw, default_name=path.stem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def plan_from_dict(raw: dict, default_name: str = "plan") -> Plan:
    if not isinstance(raw, dict) or not isinstance(raw.get("families"), dict):
        raise ValueError(f"plan {default_name}: expected a mapping with a 'families' mapping")
    known = {"name", "description", "families", "request_timeout_s", "stall_timeout_s", "seed",
             "token_id_range", "max_requests", "max_duration_s"}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"plan {default_name}: unknown keys {sorted(unknown)}; valid: {sorted(known)}")
    plan = Plan(name=str(raw.get("name", default_name)), families=dict(raw["families"]),
                description=str(raw.get("description", "")).strip(),
                request_timeout_s=float(raw.get("request_timeout_s", 600.0)),
                stall_timeout_s=float(raw.get("stall_timeout_s", 120.0)), seed=int(raw.get("seed", 0)),
                token_id_range=tuple(raw.get("token_id_range", (100, 30000))),
                max_requests=int(raw.get("max_requests", 20000)),
                max_duration_s=float(raw.get("max_duration_s", 3600.0)), raw=raw)
    plan.points(max_model_len=1 << 30)  # validates every family now, not halfway through a run
    return plan
