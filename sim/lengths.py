"""Token-length samplers for synthetic workloads, each a pure function of its arguments and one
``numpy.random.Generator``: :func:`fixed_lengths`, :func:`random_lengths` (vLLM's ``random``
dataset), :func:`sample_lengths` (a parametric :class:`LengthDist`) and :func:`first_turn_lengths`
(ShareGPT first turns, as ``vllm bench serve --dataset-name sharegpt`` sends them, from the
shipped table).  ShareGPT *conversation* lengths are read from a file of the shared data, so they
live in :mod:`servesim.sim.traces`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

import numpy as np

_E = TypeVar("_E", bound=Enum)


def _enum(cls: type[_E], value: object, field: str) -> _E:
    """``value`` as a member of ``cls``; a ``ValueError`` names ``field`` and the valid values."""
    try:
        return cls(value)
    except ValueError:
        raise ValueError(f"{field} must be one of {[m.value for m in cls]}, got {value!r}") from None


def fixed_lengths(n: int, input_len: int, output_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` requests of exactly ``input_len`` prompt and ``output_len`` output tokens."""
    if input_len < 1 or output_len < 1:
        raise ValueError(f"input_len and output_len must be >= 1, got {input_len}, {output_len}")
    return np.full(n, input_len, dtype=np.int64), np.full(n, output_len, dtype=np.int64)


def random_lengths(n: int, input_len: int, output_len: int, range_ratio: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """vLLM's ``random`` dataset: lengths uniform on the integers ``[len*(1-r), len*(1+r)]``.

    ``range_ratio`` 0 gives fixed lengths (still consuming the stream, so draws stay aligned).
    Inputs are drawn before outputs; the lower bound is raised to 1 token.
    """
    if not 0 <= range_ratio < 1:
        raise ValueError(f"range_ratio must be in [0, 1), got {range_ratio}")
    out = []
    for length in (input_len, output_len):
        if length < 1:
            raise ValueError(f"lengths must be >= 1 token, got {length}")
        lo = max(1, int(length * (1 - range_ratio)))
        hi = max(lo, int(length * (1 + range_ratio)))
        out.append(rng.integers(lo, hi, size=n, endpoint=True, dtype=np.int64))
    return out[0], out[1]


class DistKind(str, Enum):
    """The parametric length distributions :class:`LengthDist` knows."""

    FIXED = "fixed"              # fixed:k
    UNIFORM = "uniform"          # uniform:lo:hi, integers, both inclusive
    NORMAL = "normal"            # normal:mean:std
    LOGNORMAL = "lognormal"      # lognormal:mean:sigma (mean in tokens, sigma of log-length)
    EXPONENTIAL = "exponential"  # exponential:mean


_NUM_PARAMS = {DistKind.FIXED: 1, DistKind.UNIFORM: 2, DistKind.NORMAL: 2,
               DistKind.LOGNORMAL: 2, DistKind.EXPONENTIAL: 1}


@dataclass(frozen=True)
class LengthDist:
    """A token-length distribution; samples are rounded to integers and clipped to >= 1.

    ``lognormal`` takes the arithmetic mean of the lengths in tokens and ``sigma``, the standard
    deviation of log-length (so ``lognormal:1000:0.5`` has mean ~1000 tokens): the underlying
    normal has mean ``ln(mean) - sigma**2 / 2``.  Parse the text form with :meth:`parse`.
    """

    kind: DistKind
    params: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _enum(DistKind, self.kind, "length distribution kind"))
        name, params = self.kind.value, self.params
        if len(params) != _NUM_PARAMS[self.kind]:
            raise ValueError(f"{name} takes {_NUM_PARAMS[self.kind]} parameter(s), got {params}")
        if not all(math.isfinite(p) and p >= 0 for p in params):
            raise ValueError(f"{name} parameters must be finite and >= 0, got {params}")
        if self.kind is DistKind.UNIFORM and self.params[0] > self.params[1]:
            raise ValueError(f"uniform needs lo <= hi, got {self.params}")

    @classmethod
    def parse(cls, text: str) -> LengthDist:
        """``"kind:p1[:p2]"``, e.g. ``"uniform:100:2000"``; a bare integer means ``fixed``."""
        parts = text.strip().split(":")
        if len(parts) == 1:
            parts = ["fixed", parts[0]]
        try:
            kind = DistKind(parts[0].lower())
            params = tuple(float(p) for p in parts[1:])
        except ValueError:
            raise ValueError(f"bad length distribution {text!r}; expected one of fixed:k, "
                             "uniform:lo:hi, normal:mean:std, lognormal:mean:sigma, "
                             "exponential:mean") from None
        return cls(kind, params)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` int64 lengths >= 1."""
        p = self.params
        if self.kind is DistKind.FIXED:
            raw = np.full(n, p[0])
        elif self.kind is DistKind.UNIFORM:
            raw = rng.integers(round(p[0]), round(p[1]), size=n, endpoint=True).astype(np.float64)
        elif self.kind is DistKind.NORMAL:
            raw = rng.normal(p[0], p[1], size=n)
        elif self.kind is DistKind.LOGNORMAL:
            if p[0] <= 0:
                raise ValueError(f"lognormal mean must be > 0, got {p[0]}")
            raw = rng.lognormal(math.log(p[0]) - p[1] ** 2 / 2, p[1], size=n)
        else:
            raw = rng.exponential(p[0], size=n)
        return np.maximum(np.rint(raw), 1).astype(np.int64)


def sample_lengths(n: int, dist: str | LengthDist, rng: np.random.Generator) -> np.ndarray:
    """``n`` token lengths from ``dist`` (a :class:`LengthDist` or its text form)."""
    return (LengthDist.parse(dist) if isinstance(dist, str) else dist).sample(n, rng)


# ------------------------------------------------------------------------ ShareGPT first turns

SHAREGPT_TOKENIZERS = ("llama3", "mistral")
# Statistics of the shipped table (llama3 rows), stated in --help and the docs; a test checks them.
SHAREGPT_FIRST_TURN_STATS = "304 prompts, input mean 194 / median 67 tokens, output mean 219 / median 188"
SHAREGPT_CONVERSATIONS_STATS = "30,731 conversations, input mean 2,340 / median 1,730 tokens, output mean 439 / median 415"


def first_turn_table(tokenizer: str = "llama3") -> tuple[np.ndarray, np.ndarray]:
    """(input, output) token lengths of the shipped ShareGPT first-turn table for ``tokenizer``
    (``sim/data/sharegpt_first_turn.csv``, derived by :mod:`servesim.sim.sharegpt_first_turn`)."""
    import csv
    from importlib import resources
    if tokenizer not in SHAREGPT_TOKENIZERS:
        raise ValueError(f"ShareGPT tokenizer must be one of {list(SHAREGPT_TOKENIZERS)}, got {tokenizer!r}")
    text = (resources.files("servesim.sim") / "data" / "sharegpt_first_turn.csv").read_text()
    rows = [r for r in csv.DictReader(text.splitlines()) if r["tokenizer"] == tokenizer]
    return (np.array([int(r["input_tokens"]) for r in rows], dtype=np.int64),
            np.array([int(r["output_tokens"]) for r in rows], dtype=np.int64))


def first_turn_lengths(n: int, rng: np.random.Generator, tokenizer: str = "llama3", max_input: int | None = None,
                       max_output: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (prompt, output) pairs as ``vllm bench serve --dataset-name sharegpt`` sends them:
    first-turn prompts with their reply's length as the output, drawn with replacement from the
    shipped table (pairs longer than ``max_input`` / ``max_output`` dropped first)."""
    inputs, outputs = first_turn_table(tokenizer)
    keep = np.ones(inputs.size, dtype=bool)
    if max_input is not None:
        keep &= inputs <= max_input
    if max_output is not None:
        keep &= outputs <= max_output
    if not keep.any():
        raise ValueError(f"no ShareGPT first-turn pair has input <= {max_input} and output <= {max_output} tokens")
    inputs, outputs = inputs[keep], outputs[keep]
    rows = rng.integers(0, inputs.size, size=n)
    return inputs[rows], outputs[rows]
