"""Whole-engine differential runs: a servesim :class:`LLMEngine` run, recorded step by step, and
the same request stream (with the engine's arrival ticks) replayed through vLLM's scheduler.

:func:`engine_vs_vllm` is what ``tests/test_oracle_engine.py`` and ``oracle/run_poisson.py``
call; it returns both logs so a caller can report step counts and the first mismatch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from servesim.sim.config import EngineConfig
from servesim.sim.engine import LLMEngine
from servesim.sim.metrics import RequestRecords
from servesim.sim.runner import make_source
from servesim.sim.workload import Workload

from .records import OracleConfig, StepLog, first_mismatch
from .servesim_driver import EngineRecorder


@dataclass
class EngineReplay:
    """One engine run and its vLLM replay."""

    cfg: OracleConfig
    engine_log: StepLog
    vllm_log: StepLog | None
    engine_num_steps: int
    num_requests: int
    num_bulk_steps: int

    def mismatch(self) -> str | None:
        assert self.vllm_log is not None
        return first_mismatch(self.vllm_log, self.engine_log, ("vllm", "engine"))


def run_engine_recorded(cfg: EngineConfig, workload, exact: bool = False) -> tuple[EngineRecorder, LLMEngine]:
    """Run ``workload`` on a servesim engine with an :class:`EngineRecorder` attached."""
    source = make_source(workload, cfg)
    records = RequestRecords(len(source))
    env = simpy.Environment()
    engine = LLMEngine(env, cfg, source, records, exact=exact, record_itl=False)
    recorder = EngineRecorder(engine)
    env.run()
    return recorder, engine


def engine_vs_vllm(cfg: EngineConfig, workload, exact: bool = False, replay: bool = True) -> EngineReplay:
    """The engine's step log for ``workload`` and (``replay``) vLLM's log for the same stream."""
    recorder, engine = run_engine_recorded(cfg, workload, exact)
    ocfg = recorder.oracle_config()
    vllm_log = None
    if replay:
        from .vllm_driver import run_vllm
        vllm_log = run_vllm(ocfg, recorder.stream())
    return EngineReplay(ocfg, recorder.log, vllm_log, engine.num_steps, len(recorder.specs), recorder.num_bulk_steps)


def poisson_workload(n: int, rate: float, seed: int, max_input: int, max_output: int,
                     num_prefixes: int = 0, prefix_blocks: int = 2, hash_block_tokens: int = 64) -> Workload:
    """``n`` Poisson arrivals at ``rate`` req/s with uniform lengths, optionally sharing prompt
    prefixes (``num_prefixes`` system prompts of ``prefix_blocks`` hashed trace blocks each)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=n))
    inputs = rng.integers(1, max_input + 1, size=n)
    outputs = rng.integers(1, max_output + 1, size=n)
    hashes = None
    if num_prefixes:
        hashes, private = [], 1_000_000
        for i in range(n):
            p = int(rng.integers(num_prefixes))
            ids = [p * 1000 + j for j in range(prefix_blocks)]
            extra = max(0, -(-int(inputs[i]) // hash_block_tokens) - prefix_blocks)
            ids += list(range(private, private + extra))
            private += extra
            hashes.append(tuple(ids))
    return Workload(arrivals, inputs, outputs, name="oracle-poisson", prefix_hashes=hashes,
                    prefix_block_tokens=hash_block_tokens)


__all__ = ["EngineReplay", "engine_vs_vllm", "poisson_workload", "run_engine_recorded"]
