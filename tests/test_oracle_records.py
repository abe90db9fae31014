"""The oracle's servesim side, without vLLM: the record format, and servesim's three paths (exact
scheduler, decode-batch scheduler, whole engine with bulk decode runs) giving identical records.
These run in every environment; the comparisons with vLLM itself are in the other test_oracle_*.
"""
from __future__ import annotations

import pytest
from conftest import mooncake_like

from servesim.oracle.cases import named_cases
from servesim.oracle.records import OracleConfig, RequestSpec, StepLog, StepRecord, first_mismatch
from servesim.oracle.replay import poisson_workload, run_engine_recorded
from servesim.oracle.servesim_driver import run_servesim
from servesim.sim.config import make_engine_config
from servesim.sim.gpus import get_gpu
from servesim.sim.model_catalog import get_model


@pytest.mark.parametrize("case", named_cases(), ids=lambda c: c.name)
def test_named_cases_exact_and_fast_paths_agree_and_exercise_their_situation(case):
    exact = run_servesim(case.cfg, list(case.stream), exact=True)
    assert case.check(exact) is None, case.check(exact)
    assert first_mismatch(exact, run_servesim(case.cfg, list(case.stream), exact=False)) is None


def test_first_mismatch_names_the_differing_fields():
    a = StepLog([StepRecord(0, ((1, 16),), new=(1,), num_blocks_used=2, num_blocks_free=8)], {1: 0})
    b = StepLog([StepRecord(0, ((1, 15),), new=(1,), num_blocks_used=2, num_blocks_free=8)], {1: 0})
    assert first_mismatch(a, a) is None
    msg = first_mismatch(a, b)
    assert "step 0" in msg and "scheduled" in msg and "new" not in msg
    c = StepLog(list(a.records), {1: 1})
    assert "finish steps differ for requests [1]" in first_mismatch(a, c)
    d = StepLog(list(a.records), {1: 0}, {7: 0})
    assert "rejected" in first_mismatch(a, d)


def test_bad_oracle_config_and_spec_are_refused():
    with pytest.raises(ValueError, match="max_num_seqs"):
        OracleConfig(num_gpu_blocks=10, max_num_seqs=8, max_num_batched_tokens=4, max_model_len=64)
    with pytest.raises(ValueError, match="long_prefill_token_threshold"):
        OracleConfig(num_gpu_blocks=10, max_num_seqs=1, max_num_batched_tokens=4, max_model_len=64,
                     long_prefill_token_threshold=65)
    with pytest.raises(ValueError, match="request 3"):
        RequestSpec(3, 0, 4)


@pytest.mark.parametrize("caching", [False, True])
def test_engine_recorder_fast_and_exact_paths_record_the_same_steps(caching):
    cfg = make_engine_config(get_model("llama-3.1-8b"), get_gpu("h100-sxm"), "vllm-v1", max_model_len=900,
                             num_gpu_blocks=60 if caching else 150, max_num_seqs=24, max_num_batched_tokens=256,
                             enable_prefix_caching=caching)
    wl = mooncake_like(300, seed=2, rate=300.0) if caching else poisson_workload(300, 20.0, 2, 600, 200)
    fast, fast_engine = run_engine_recorded(cfg, wl, exact=False)
    exact, exact_engine = run_engine_recorded(cfg, wl, exact=True)
    assert fast.num_bulk_steps > 0 and exact.num_bulk_steps == 0
    assert fast.log.num_steps == fast_engine.num_steps == exact_engine.num_steps
    assert first_mismatch(exact.log, fast.log, ("exact", "fast")) is None
    assert fast.stream() == exact.stream()
    assert any(r.preempted for r in fast.log.records)
