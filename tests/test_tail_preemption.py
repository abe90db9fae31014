"""Preemption without taking the decode batch apart (issue 13, small-KV and overload modes).

When the batch's new blocks do not all fit and only batch members run, the v1 scheduler hands
blocks out and preempts tail members on the batch itself (``Scheduler._preempt_from_tail``)
instead of putting every member back on the per-request path.  The run must equal ``exact=True``
record for record and in every summary value and time-series sample, and the cases must actually
take that path.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import assert_records_equal, mooncake_like, tiny_config

from servesim.sim.metrics import InterTokenLatencies
from servesim.sim.runner import SimOptions, simulate
from servesim.sim.scheduler import Scheduler
from servesim.sim.workload import WorkloadSpec, build_workload


def _burst(n: int, seed: int):
    return build_workload(WorkloadSpec(kind="burst", num_requests=n, input_len=150, output_len=120,
                                       dataset="random", range_ratio=0.6), seed)


CASES = {
    "small_kv_burst": (lambda: tiny_config("vllm-v1", num_gpu_blocks=80, max_num_seqs=32,
                                           max_num_batched_tokens=128, max_model_len=512),
                       lambda: _burst(60, 0)),
    "tiny_kv_many_seqs": (lambda: tiny_config("vllm-v1", num_gpu_blocks=50, max_num_seqs=64,
                                              max_num_batched_tokens=256, max_model_len=512),
                          lambda: _burst(80, 5)),
    "prefix_caching": (lambda: tiny_config("vllm-v1", num_gpu_blocks=40, max_num_seqs=16,
                                           max_num_batched_tokens=64, max_model_len=512,
                                           enable_prefix_caching=True),
                       lambda: mooncake_like(80, seed=4, rate=40.0)),
}


# Means over the ITL pairs and the time series: the batch records a step's gap once for all its
# members where the per-request path records it member by member, so these float sums add the
# same terms in another grouping (last-ulp differences; the fast path without this change has them
# too).  Every other summary value, every record and every sample must be equal.
SUMMED_IN_ANOTHER_ORDER = {"mean_itl_ms", "std_itl_ms", "mean_num_running"}


@pytest.mark.parametrize("case", list(CASES))
def test_tail_preemption_on_the_batch_equals_exact(case, monkeypatch):
    make_cfg, make_workload = CASES[case]
    cfg, wl = make_cfg(), make_workload()
    exact = simulate(cfg, wl, SimOptions(exact=True, sample_interval_s=0.05))
    calls = []
    original = Scheduler._preempt_from_tail

    def counting(self, out):
        calls.append(len(self.batch.members))
        return original(self, out)

    monkeypatch.setattr(Scheduler, "_preempt_from_tail", counting)
    fast = simulate(cfg, wl, SimOptions(exact=False, sample_interval_s=0.05))
    assert calls, "the case never preempted on the batch"
    assert exact.summary["num_preemptions"] > 0
    assert_records_equal(exact, fast)
    for key, x in exact.summary.items():
        y = fast.summary[key]
        if isinstance(x, float) and math.isnan(x):
            assert isinstance(y, float) and math.isnan(y), key
        elif key in SUMMED_IN_ANOTHER_ORDER:
            assert math.isclose(x, y, rel_tol=1e-12), f"{key}: {x!r} != {y!r}"
        else:
            assert x == y, f"{key}: {x!r} != {y!r}"
    pd.testing.assert_frame_equal(exact.series.to_frame(), fast.series.to_frame(), check_exact=True)


def test_add_steps_records_the_per_step_gaps_bit_for_bit():
    rng = np.random.default_rng(3)
    ends = np.cumsum(rng.exponential(0.03, size=200)).tolist()
    itl = InterTokenLatencies()
    itl.add_steps(ends, 7)
    itl.add_steps(ends[:1], 5)  # a single step end: no gap
    values, counts = itl.arrays()
    assert values.tolist() == [ends[j] - ends[j - 1] for j in range(1, len(ends))]
    assert counts.tolist() == [7] * (len(ends) - 1)
