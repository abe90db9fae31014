"""The step-cost expression and its feature view agree, for every coefficient and for capped steps.

:meth:`StepCostModel.terms` is what calibration fits against (:mod:`servesim.calibrate.probe_fit`);
:meth:`StepCostModel.step_time` is what the engine runs.  They must be one model: for random
batches and random coefficients (every coefficient, tensor parallelism on, prefill terms on) the
features times the coefficients give the step time.  The power-capped model evaluates the same
expression at its clock, so its prefill terms cannot go missing again.
"""
from __future__ import annotations

import numpy as np
import pytest

from servesim.sim.cost_model import BatchShape, StepCostModel, step_time_from_terms
from servesim.sim.gpus import get_gpu
from servesim.sim.model_catalog import get_model
from servesim.sim.power import CappedStepCostModel, PowerCap
from servesim.sim.profile import PowerCoefficients, StepCoefficients


def _random_coeffs(rng) -> StepCoefficients:
    return StepCoefficients(
        eff_bw=rng.uniform(.2, 1), eff_mm=rng.uniform(.2, 1), eff_attn_prefill=rng.uniform(.2, 1),
        eff_attn_decode=rng.uniform(.2, 1), ar_latency_s=rng.uniform(0, 2e-5),
        ar_bandwidth_bytes_per_s=rng.uniform(5e10, 3e11), layer_overhead_s=rng.uniform(0, 2e-5),
        step_overhead_s=rng.uniform(0, 5e-3), tp_step_overhead_s=rng.uniform(0, 1e-3),
        per_seq_overhead_s=rng.uniform(0, 1e-4), per_token_overhead_s=rng.uniform(0, 1e-6),
        per_prefill_token_overhead_s=rng.uniform(0, 1e-6), prefill_layer_overhead_s=rng.uniform(0, 1e-4))


def _random_batch(rng) -> BatchShape:
    batch = BatchShape(num_decode_seqs=int(rng.integers(0, 200)),
                       decode_context_tokens=int(rng.integers(0, 10**6)))
    for _ in range(int(rng.integers(0, 4))):
        batch.add_prefill_chunk(int(rng.integers(0, 4000)), int(rng.integers(1, 4000)))
    if batch.num_tokens == 0:
        batch.add_prefill_chunk(0, 17)
    return batch


@pytest.mark.parametrize("tp", [1, 4])
def test_features_times_coefficients_are_the_step_time(tp):
    rng = np.random.default_rng(tp)
    model, gpu = get_model("llama-3-70b" if tp > 1 else "llama-3-8b"), get_gpu("h100-sxm")
    for _ in range(200):
        coeffs = _random_coeffs(rng)
        cost = StepCostModel(model, gpu, coeffs, tp)
        batch = _random_batch(rng)
        assert step_time_from_terms(cost.terms(batch), coeffs) == pytest.approx(cost.step_time(batch), rel=1e-12)
        # and the view does not depend on the coefficients of the model it was taken from
        other = StepCostModel(model, gpu, StepCoefficients(), tp)
        assert other.terms(batch) == pytest.approx(cost.terms(batch), rel=1e-12)


def test_feature_view_vectorises_over_steps():
    cost = StepCostModel(get_model("llama-3-8b"), get_gpu("h100-sxm"), _random_coeffs(np.random.default_rng(7)))
    tokens = np.array([1.0, 64.0, 2048.0])
    seqs = np.array([1.0, 64.0, 2.0])
    pairs = np.array([0.0, 0.0, 2 * 1024 * 1025 / 2])
    ctx = np.array([500.0, 64 * 900.0, 0.0])
    prefill = np.array([0.0, 0.0, 2048.0])
    got = step_time_from_terms(cost.terms_of(tokens, seqs, pairs, ctx, prefill), cost.coeffs)
    want = [cost.step_time_of(int(t), int(s), p, c, int(pt)) for t, s, p, c, pt in zip(tokens, seqs, pairs, ctx, prefill)]
    assert got == pytest.approx(want, rel=1e-12)


def test_capped_model_is_the_same_expression_at_a_lower_clock():
    rng = np.random.default_rng(3)
    coeffs = _random_coeffs(rng)
    inner = StepCostModel(get_model("llama-3-8b"), get_gpu("h100-sxm"), coeffs)
    power = PowerCoefficients(idle_w=75, prefill_w=700, decode_w=380)
    capped = CappedStepCostModel(inner, power, PowerCap(300.0))
    for _ in range(100):
        batch = _random_batch(rng)
        share = batch.num_prefill_tokens / batch.num_tokens
        c = PowerCap(300.0).clock_ratio(380 + (700 - 380) * share, 75)
        mem = 1.0 + 0.1 * (1.0 / c - 1.0)
        t = capped.step_time(batch)
        # the unscaled CPU-side terms (prefill ones included) are all there
        cpu = (inner.fixed_s + inner.per_token_s * batch.num_tokens + inner.per_seq_s * batch.num_seqs
               + inner.per_prefill_token_s * batch.num_prefill_tokens
               + (inner.prefill_fixed_s if batch.num_prefill_tokens else 0.0))
        gpu = (max(inner.weight_stream_s * mem, (inner.linear_s_per_token * batch.num_tokens
                                                 + inner.lm_head_s_per_seq * batch.num_seqs) / c)
               + inner.prefill_s_per_pair * batch.prefill_attn_pairs / c
               + inner.decode_s_per_ctx_token * batch.decode_context_tokens * mem)
        assert t == pytest.approx(cpu + gpu, rel=1e-12)
        assert t >= inner.step_time(batch)


def test_bulk_decode_times_are_the_per_step_times_bit_for_bit():
    cost = StepCostModel(get_model("llama-3-8b"), get_gpu("h100-sxm"), _random_coeffs(np.random.default_rng(5)))
    n, ctx, now = 37, 37 * 812, 12.345
    ends = cost.decode_step_ends(now, n, ctx, 50, float("inf"))
    t = now
    for j, end in enumerate(ends):
        t = t + cost.step_time_of(n, n, 0.0, ctx + j * n)
        assert end == t
    assert len(cost.decode_step_ends(now, n, ctx, 50, ends[9])) == 10  # stops at the first step reaching the horizon
