"""Hypothesis-generated streams through vLLM's v1 scheduler and servesim's (exact and fast paths).

Each example draws a small replica (KV blocks, block size, max_num_seqs, max_num_batched_tokens,
max_model_len, prefix caching, the full-prompt admission gate, long_prefill_token_threshold) and a
stream of up to 30 requests (lengths, arrival ticks, optional shared prefixes from three prefix
chains, some too long for max_model_len).  Small caches make preemption, resumption and eviction
common.  Derandomized (``derandomize=True``): CI runs the same examples every time; raise
``SERVESIM_ORACLE_EXAMPLES`` to search further.
"""
from __future__ import annotations

import os

from conftest import oracle_tally
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from servesim.oracle.availability import vllm_driver_or_skip
from servesim.oracle.records import OracleConfig, RequestSpec, first_mismatch
from servesim.oracle.servesim_driver import run_servesim

vllm_driver = vllm_driver_or_skip()

EXAMPLES = int(os.environ.get("SERVESIM_ORACLE_EXAMPLES", "300"))
# Shrinking a failure re-runs vLLM hundreds of times; CI reports the failing example unshrunk,
# SERVESIM_ORACLE_SHRINK=1 shrinks it locally.
PHASES = tuple(Phase) if os.environ.get("SERVESIM_ORACLE_SHRINK") == "1" else \
    (Phase.explicit, Phase.reuse, Phase.generate)


@st.composite
def cases(draw) -> tuple[OracleConfig, list[RequestSpec]]:
    block_size = draw(st.sampled_from([8, 16]))
    num_gpu_blocks = draw(st.integers(4, 80))
    max_num_seqs = draw(st.integers(1, 12))
    max_num_batched_tokens = draw(st.integers(max(max_num_seqs, 2), 300))
    max_model_len = draw(st.integers(max(2, block_size), (num_gpu_blocks - 1) * block_size))
    cfg = OracleConfig(num_gpu_blocks=num_gpu_blocks, max_num_seqs=max_num_seqs,
                       max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
                       block_size=block_size, enable_prefix_caching=draw(st.booleans()),
                       scheduler_reserve_full_isl=draw(st.booleans()),
                       long_prefill_token_threshold=min(max_model_len, draw(st.sampled_from([0, 0, 0, 4, 33]))))
    n = draw(st.integers(1, 30))
    stream = []
    for i in range(n):
        prompt = draw(st.integers(1, max_model_len + 16))
        max_tokens = draw(st.integers(1, 60))
        chain = draw(st.sampled_from([None, 0, 1, 2]))
        hashes: tuple = ()
        if chain is not None:
            k = draw(st.integers(0, prompt // block_size))
            hashes = tuple((chain, j) for j in range(k))
        stream.append(RequestSpec(i, prompt, max_tokens, draw(st.integers(0, 40)), hashes))
    return cfg, stream


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, phases=PHASES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_random_streams_match_vllm(case):
    cfg, stream = case
    want = vllm_driver.run_vllm(cfg, stream)
    for exact in (True, False):
        got = run_servesim(cfg, stream, exact=exact)
        mismatch = first_mismatch(want, got)
        assert mismatch is None, f"{cfg}\n{stream}\nexact={exact}:\n{mismatch}"
    oracle_tally(want.num_steps)
