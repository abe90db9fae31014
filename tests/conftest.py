"""Factories shared by the engine tests (``test_block_pool``, ``test_scheduler``, ``test_engine``,
``test_properties``, ``test_golden``).

Everything here builds small, explicit objects: a profile with fixed coefficients (never the
shipped profiles, which get refit), a tiny :class:`EngineConfig` with an explicit number of KV
blocks, a scheduler over its own :class:`KVCacheManager`, and small workloads.  Test modules import
these helpers directly (``from conftest import ...``); pytest puts ``tests/`` on ``sys.path``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import simpy

from servesim.sim.config import EngineConfig, EngineVersion, make_engine_config
from servesim.sim.engine import LLMEngine
from servesim.sim.gpus import get_gpu
from servesim.sim.kv_cache_manager import KVCacheManager
from servesim.sim.metrics import InterTokenLatencies, RequestRecords
from servesim.sim.model_catalog import get_model
from servesim.sim.profile import PowerCoefficients, Profile, StepCoefficients
from servesim.sim.request import Request
from servesim.sim.runner import SimResult, make_source
from servesim.sim.scheduler import Scheduler, SchedulerOutput
from servesim.sim.scheduler_v0 import SchedulerV0

MODEL = get_model("llama-3-8b")
GPU = get_gpu("h100-sxm")

# Fixed step coefficients for timeline tests: every term of the step-cost model is non-zero, so a
# wrong batch shape (token count, sequence count, prefill pairs or decode context) changes times.
TEST_STEP = StepCoefficients(eff_bw=0.8, eff_mm=0.7, eff_attn_prefill=0.5, eff_attn_decode=0.6,
                             ar_latency_s=8e-6, ar_bandwidth_bytes_per_s=150e9, layer_overhead_s=1e-5,
                             step_overhead_s=2e-3, per_seq_overhead_s=5e-5, per_token_overhead_s=1e-6)


def fixed_profile(engine: str = "vllm-v1", step: StepCoefficients = TEST_STEP) -> Profile:
    """A profile with the fixed coefficients above (power and memory terms at their defaults)."""
    return Profile(name="t", engine=engine, engine_version="t", gpu="h100-sxm", step=step,
                   power=PowerCoefficients())


def tiny_config(engine: str = "vllm-v1", *, num_gpu_blocks: int | None = 64, block_size: int = 16,
                max_num_seqs: int = 8, max_num_batched_tokens: int | None = None,
                max_model_len: int = 256, enable_prefix_caching: bool | None = False,
                enable_chunked_prefill: bool | None = None, model=MODEL, gpu=GPU, **kw) -> EngineConfig:
    """A small replica: Llama-3-8B on an H100 SXM with an explicit KV size (``num_gpu_blocks``).

    ``max_num_batched_tokens`` defaults to 16 for v1 and to ``max_model_len`` for v0 without
    chunked prefill (vLLM requires the whole prompt to fit in one step there).
    """
    chunked = engine == "vllm-v1" or bool(enable_chunked_prefill)
    if max_num_batched_tokens is None:
        max_num_batched_tokens = 16 if chunked else max_model_len
    return make_engine_config(model, gpu, engine, profile=fixed_profile(engine), num_gpu_blocks=num_gpu_blocks,
                              block_size=block_size, max_num_seqs=max_num_seqs,
                              max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
                              enable_prefix_caching=enable_prefix_caching,
                              enable_chunked_prefill=enable_chunked_prefill, **kw)


class Harness:
    """A scheduler over its own KV cache, driven step by step without SimPy.

    ``step(now)`` schedules, pretends the step took ``dt`` seconds and applies its output;
    ``finished`` collects ``(request_id, finish_time)`` in finishing order.
    """

    def __init__(self, cfg: EngineConfig, exact: bool = True, reserve_null_block: bool | None = None,
                 enable_caching: bool | None = None) -> None:
        v1 = cfg.engine is EngineVersion.V1
        self.kv = KVCacheManager(cfg.cache.num_gpu_blocks_override, cfg.cache.block_size,
                                 cfg.cache.enable_prefix_caching if enable_caching is None else enable_caching,
                                 reserve_null_block=v1 if reserve_null_block is None else reserve_null_block)
        self.finished: list[tuple[int, float]] = []
        cls = Scheduler if v1 else SchedulerV0
        self.sched = cls(cfg, self.kv, InterTokenLatencies(), self._on_finish, exact=exact)
        self.requests: dict[int, Request] = {}
        self.now = 0.0

    def _on_finish(self, request: Request, now: float) -> None:
        self.finished.append((request.request_id, now))

    def add(self, request_id: int, prompt: int, max_tokens: int = 4, arrival: float | None = None,
            block_hashes: tuple | None = None) -> Request:
        r = Request(request_id, self.now if arrival is None else arrival, prompt, max_tokens, block_hashes)
        self.requests[request_id] = r
        self.sched.add_request(r)
        return r

    def schedule(self) -> SchedulerOutput:
        return self.sched.schedule(self.now)

    def finish_step(self, out: SchedulerOutput, dt: float = 1.0) -> None:
        self.now += dt
        self.sched.update_from_output(out, self.now)

    def step(self, dt: float = 1.0) -> SchedulerOutput:
        out = self.schedule()
        self.finish_step(out, dt)
        return out

    @property
    def waiting_ids(self) -> list[int]:
        return [r.request_id for r in self.sched.waiting]

    @property
    def running_ids(self) -> list[int]:
        return list(self.sched.running)


def scheduled(out: SchedulerOutput) -> list[tuple[int, int]]:
    """``(request_id, num_new_tokens)`` of a step scheduled on the per-request path, in order."""
    return [(r.request_id, n) for r, n in out.scheduled]


def build_engine(cfg: EngineConfig, workload, exact: bool = False,
                 sample_interval_s: float = 0.2) -> tuple[simpy.Environment, LLMEngine, RequestRecords]:
    """An :class:`LLMEngine` on a fresh environment, not yet run (tests may wrap its parts first)."""
    source = make_source(workload, cfg)
    records = RequestRecords(len(source))
    env = simpy.Environment()
    return env, LLMEngine(env, cfg, source, records, sample_interval_s, exact), records


def run_engine(cfg: EngineConfig, workload, exact: bool = False,
               sample_interval_s: float = 0.2) -> tuple[LLMEngine, RequestRecords]:
    """Run ``workload`` to the end on a bare :class:`LLMEngine`, so tests can inspect its state."""
    env, engine, records = build_engine(cfg, workload, exact, sample_interval_s)
    env.run()
    return engine, records


def assert_summaries_equal(a: dict, b: dict, rel: float = 1e-12) -> None:
    """Same keys; ints and strings equal, floats equal to ``rel`` (exact where both are exact)."""
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, float) or isinstance(y, float):
            assert math.isclose(x, y, rel_tol=rel, abs_tol=1e-300) or (math.isnan(x) and math.isnan(y)), \
                f"{key}: {x!r} != {y!r}"
        else:
            assert x == y, f"{key}: {x!r} != {y!r}"


def assert_records_equal(a: SimResult, b: SimResult) -> None:
    """Per-request records identical, column by column (NaN equal to NaN)."""
    fa, fb = a.records.to_frame(), b.records.to_frame()
    pd.testing.assert_frame_equal(fa, fb, check_exact=True)


def mooncake_like(n: int, *, seed: int = 0, rate: float = 20.0, num_prefixes: int = 4,
                  prefix_blocks: int = 2, hash_block_tokens: int = 64):
    """A small open-loop workload whose prompts share prefixes, as Mooncake traces do.

    Each request picks one of ``num_prefixes`` shared system prompts of ``prefix_blocks`` trace
    blocks (ids ``p*100 + j``) and adds 0-2 private blocks; ``hash_block_tokens`` tokens per trace
    block.  Prompt length covers its blocks, with a partial last block most of the time.
    """
    from servesim.sim.workload import Workload

    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=n))
    inputs, outputs, hashes = [], [], []
    next_private = 10_000
    for _ in range(n):
        p = int(rng.integers(num_prefixes))
        ids = [p * 100 + j for j in range(prefix_blocks)]
        for _ in range(int(rng.integers(0, 3))):
            ids.append(next_private)
            next_private += 1
        tokens = (len(ids) - 1) * hash_block_tokens + int(rng.integers(1, hash_block_tokens + 1))
        inputs.append(tokens)
        outputs.append(int(rng.integers(1, 40)))
        hashes.append(tuple(ids))
    return Workload(arrivals, np.array(inputs), np.array(outputs), name="mooncake_like",
                    prefix_hashes=hashes, prefix_block_tokens=hash_block_tokens)


# ----- the vLLM oracle's tally (tests/test_oracle_*.py) ----------------------------------------

ORACLE_TALLY = {"comparisons": 0, "steps": 0}


def oracle_tally(num_steps: int) -> None:
    """Count one servesim-vs-vLLM comparison of ``num_steps`` scheduler steps (printed at the end)."""
    ORACLE_TALLY["comparisons"] += 1
    ORACLE_TALLY["steps"] += num_steps


def pytest_terminal_summary(terminalreporter) -> None:
    if ORACLE_TALLY["comparisons"]:
        terminalreporter.write_line(
            f"vLLM oracle: {ORACLE_TALLY['comparisons']} comparisons, {ORACLE_TALLY['steps']} scheduler steps "
            "compared decision for decision")
