"""Named differential cases: the situations issue 10 lists, each a configuration and a stream.

Every case is built from a seeded numpy generator, so it is the same on every run.  Each comes
with a ``check`` saying what the case must exercise (preemptions happen, prefix hits happen, ...):
a case that stops exercising its situation after a change fails instead of passing vacuously.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .records import OracleConfig, RequestSpec, StepLog


@dataclass(frozen=True)
class Case:
    name: str
    cfg: OracleConfig
    stream: tuple[RequestSpec, ...]
    check: Callable[[StepLog], str | None]  # None: the log exercises the situation; else why not


def _lengths(rng: np.random.Generator, n: int, lo: int, hi: int) -> list[int]:
    return [int(x) for x in rng.integers(lo, hi + 1, size=n)]


def _stream(seed: int, n: int, prompt: tuple[int, int], output: tuple[int, int], arrival_gap: int = 0,
            prefixes: int = 0, prefix_blocks: int = 0, block_size: int = 16) -> tuple[RequestSpec, ...]:
    rng = np.random.default_rng(seed)
    prompts, outputs = _lengths(rng, n, *prompt), _lengths(rng, n, *output)
    specs = []
    for i in range(n):
        hashes: tuple = ()
        if prefixes:
            p = int(rng.integers(prefixes))
            k = min(prefix_blocks, prompts[i] // block_size)
            hashes = tuple((p, j) for j in range(k))
        specs.append(RequestSpec(i, prompts[i], outputs[i], i * arrival_gap, hashes))
    return tuple(specs)


def _needs(field: str, what: str) -> Callable[[StepLog], str | None]:
    def check(log: StepLog) -> str | None:
        return None if any(getattr(r, field) for r in log.records) else f"no step has {what}"
    return check


def _all(*checks: Callable[[StepLog], str | None]) -> Callable[[StepLog], str | None]:
    def check(log: StepLog) -> str | None:
        return next((m for m in (c(log) for c in checks) if m), None)
    return check


def _seqs_bound(bound: int) -> Callable[[StepLog], str | None]:
    def check(log: StepLog) -> str | None:
        peak = max(len(r.scheduled) for r in log.records)
        return None if peak == bound else f"peak batch {peak} != max_num_seqs {bound}"
    return check


def _rejects(log: StepLog) -> str | None:
    return None if log.rejected else "no request was rejected for length"


def _chunks(budget: int) -> Callable[[StepLog], str | None]:
    def check(log: StepLog) -> str | None:
        full = any(r.num_scheduled_tokens == budget for r in log.records)
        return None if full else f"no step used the whole budget of {budget}"
    return check


def _chunk_of(n: int) -> Callable[[StepLog], str | None]:
    def check(log: StepLog) -> str | None:
        return None if any(k == n for r in log.records for _, k in r.scheduled) else f"no chunk of {n} tokens"
    return check


def _evicted_prefix(log: StepLog) -> str | None:
    """Some admission hit fewer blocks than an earlier one of the same length class: evictions."""
    hits = [n for r in log.records for _, n in r.prefix_hits]
    return None if hits and len(set(hits)) > 1 else "prefix hits never varied (no eviction seen)"


def named_cases() -> list[Case]:
    big = OracleConfig(num_gpu_blocks=400, max_num_seqs=16, max_num_batched_tokens=128, max_model_len=2048)
    cases = [
        Case("burst", big, _stream(1, 40, (1, 300), (1, 60)), _chunks(128)),
        Case("trickle", big, _stream(2, 40, (1, 200), (1, 40), arrival_gap=3), _needs("finished", "finishes")),
    ]
    for budget in (16, 48, 100, 512):
        cfg = OracleConfig(num_gpu_blocks=300, max_num_seqs=8, max_num_batched_tokens=budget, max_model_len=2048)
        cases.append(Case(f"chunked_prefill_mnbt{budget}", cfg, _stream(3, 24, (100, 900), (1, 30), arrival_gap=2),
                          _chunks(budget)))
    for seqs in (1, 3):
        cfg = OracleConfig(num_gpu_blocks=400, max_num_seqs=seqs, max_num_batched_tokens=256, max_model_len=2048)
        cases.append(Case(f"max_num_seqs{seqs}", cfg, _stream(4, 20, (1, 100), (1, 50)), _seqs_bound(seqs)))
    for full in (True, False):
        cfg = OracleConfig(num_gpu_blocks=40, max_num_seqs=16, max_num_batched_tokens=128, max_model_len=600,
                           scheduler_reserve_full_isl=full)
        cases.append(Case(f"kv_exhaustion_full_isl_{full}", cfg, _stream(5, 30, (20, 200), (20, 200), arrival_gap=1),
                          _all(_needs("preempted", "a preemption"), _needs("resumed", "a resumption"))))
        cfg = OracleConfig(num_gpu_blocks=40, max_num_seqs=16, max_num_batched_tokens=128, max_model_len=600,
                           enable_prefix_caching=True, scheduler_reserve_full_isl=full)
        cases.append(Case(f"kv_exhaustion_prefix_caching_full_isl_{full}", cfg,
                          _stream(5, 30, (20, 200), (20, 200), arrival_gap=1),
                          _all(_needs("preempted", "a preemption"), _needs("prefix_hits", "a prefix hit"))))
    for blocks in (60, 400):
        cfg = OracleConfig(num_gpu_blocks=blocks, max_num_seqs=8, max_num_batched_tokens=256, max_model_len=900,
                           enable_prefix_caching=True)
        check = _all(_needs("prefix_hits", "a prefix hit"), _evicted_prefix) if blocks == 60 else \
            _needs("prefix_hits", "a prefix hit")
        cases.append(Case(f"shared_prefixes_{blocks}blocks", cfg,
                          _stream(6, 40, (40, 400), (1, 80), arrival_gap=2, prefixes=3, prefix_blocks=12), check))
    for threshold in (8, 64):
        cfg = OracleConfig(num_gpu_blocks=300, max_num_seqs=8, max_num_batched_tokens=256, max_model_len=2048,
                           long_prefill_token_threshold=threshold)
        cases.append(Case(f"long_prefill_threshold{threshold}", cfg, _stream(7, 20, (10, 600), (1, 20)),
                          _chunk_of(threshold)))
    cfg = OracleConfig(num_gpu_blocks=100, max_num_seqs=8, max_num_batched_tokens=128, max_model_len=300)
    cases.append(Case("rejected_for_length", cfg, _stream(8, 30, (1, 320), (1, 100), arrival_gap=1), _rejects))
    return cases


__all__ = ["Case", "named_cases"]
