"""Differential tests against vLLM itself: the named cases of issue 10 (burst and trickle
arrivals, chunked prefill at several budgets, the max_num_seqs bound, KV exhaustion with
preemption and resumption, prefix caching with shared prefixes and eviction,
long_prefill_token_threshold, requests rejected for length).

Each case runs through vLLM 0.27's real v1 scheduler and through servesim's scheduler on the exact
and the decode-batch paths; the per-step records must be identical, and each case must still
exercise its situation.  Skips (saying why) without vLLM; fails instead under
``SERVESIM_REQUIRE_ORACLE=1`` (CI).
"""
from __future__ import annotations

import pytest
from conftest import oracle_tally

from servesim.oracle.availability import vllm_driver_or_skip
from servesim.oracle.cases import named_cases
from servesim.oracle.records import first_mismatch
from servesim.oracle.servesim_driver import run_servesim

vllm_driver = vllm_driver_or_skip()

CASES = {c.name: c for c in named_cases()}


@pytest.mark.parametrize("name", list(CASES))
def test_named_case_matches_vllm(name):
    case = CASES[name]
    stream = list(case.stream)
    want = vllm_driver.run_vllm(case.cfg, stream)
    assert case.check(want) is None, f"{name}: {case.check(want)}"
    for exact in (True, False):
        got = run_servesim(case.cfg, stream, exact=exact)
        mismatch = first_mismatch(want, got)
        assert mismatch is None, f"{name} (exact={exact}) differs from vLLM {vllm_driver.VLLM_VERSION}:\n{mismatch}"
        oracle_tally(want.num_steps)
