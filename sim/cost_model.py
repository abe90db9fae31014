"""Step-cost model: how long one engine step takes, as a pure function of the batch.

The form is roofline features times fitted coefficients (docs/design.md, "Step cost"): features are
bytes and FLOPs that follow from the model, the GPU and tensor parallelism; coefficients are
efficiencies and overheads from a :class:`~servesim.sim.profile.Profile`.  Per GPU of a TP group:

* linear layers: ``max(weight_bytes / (BW * eff_bw), linear_flops * tokens / (FLOPS * eff_mm))``
  (weight-streaming bound for small batches, compute bound for large ones: Williams et al. 2009);
  the LM head's FLOPs count once per sequence, not per prefill token;
* prefill attention: FLOPs of every (query, key) pair of each chunk against its whole context,
  over ``FLOPS * eff_attn_prefill``;
* decode attention: KV bytes read, ``kv_bytes_per_token * context``, over ``BW * eff_attn_decode``;
* tensor parallelism: two all-reduces per layer of ``tokens * hidden * 2`` bytes;
* CPU side: a fixed per-step overhead (plus one per extra TP rank: the step is broadcast to every
  worker) and per-sequence and per-token terms; a step holding a prefill adds a per-layer term
  (prefill runs without CUDA graphs) and a per-prompt-token one.

Multi-step scheduling (vLLM 0.6 ``--num-scheduler-steps K``, :meth:`StepCostModel.window_time`):
one scheduling pass runs K decode steps; the pass's own CPU work (``step_overhead_s``: schedule,
prepare inputs, process outputs; ``per_seq_overhead_s``: per-sequence output processing and
streaming) is paid once per window, while every inner step still pays the GPU terms, the
per-layer launches, the all-reduces, the per-token input work and the per-rank broadcast (vLLM
0.6 ``MultiStepWorker`` broadcasts the advanced model input to the TP workers every step).

Nothing here knows about SimPy or the scheduler; the scheduler hands over a :class:`BatchShape`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .gpus import GPUSpec
from .models import ModelSpec
from .profile import StepCoefficients


@dataclass(slots=True)
class BatchShape:
    """What one step computes, reduced to the quantities cost depends on.

    ``prefill_attn_pairs`` counts (query, key) pairs of the prefill chunks: a chunk of ``c`` tokens
    starting after ``s`` computed tokens contributes ``c*s + c*(c+1)/2`` (causal attention).
    ``decode_context_tokens`` sums, over decoding sequences, the tokens each one attends to.
    """

    num_prefill_tokens: int = 0
    num_prefill_seqs: int = 0
    prefill_attn_pairs: float = 0.0
    num_decode_seqs: int = 0
    decode_context_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_seqs

    @property
    def num_seqs(self) -> int:
        return self.num_prefill_seqs + self.num_decode_seqs

    def add_prefill_chunk(self, num_computed_tokens: int, chunk_tokens: int) -> None:
        self.num_prefill_tokens += chunk_tokens
        self.num_prefill_seqs += 1
        self.prefill_attn_pairs += chunk_tokens * num_computed_tokens + chunk_tokens * (chunk_tokens + 1) / 2


# Coefficients that divide their feature (efficiencies, a bandwidth); every other one multiplies it.
INVERSE_COEFFICIENTS = ("eff_bw", "eff_mm", "eff_attn_prefill", "eff_attn_decode", "ar_bandwidth_bytes_per_s")


class StepCostModel:
    """Step time in seconds for a batch on one replica (a TP group of ``tp`` GPUs).

    There is one step-cost expression, :meth:`step_time_of`; :meth:`terms` is its feature view
    (what each coefficient of :class:`StepCoefficients` multiplies, or divides), and
    :func:`step_time_from_terms` evaluates that view for any coefficients, vectorised, which is
    what calibration fits against (``tests/test_cost_model.py`` checks that both agree).  The
    model/GPU-dependent constants are computed once here, so :meth:`step_time` is a few
    multiplications: it runs once per simulated step.
    """

    def __init__(self, model: ModelSpec, gpu: GPUSpec, coeffs: StepCoefficients, tp: int = 1,
                 weight_dtype: str | None = None, kv_cache_dtype: str = "auto") -> None:
        if tp < 1:
            raise ValueError(f"tensor parallel size must be >= 1, got {tp}")
        self.model, self.gpu, self.coeffs, self.tp = model, gpu, coeffs, tp
        weight_dtype = weight_dtype or model.serving_dtype
        kv_dtype = weight_dtype if kv_cache_dtype in ("auto", "", None) else kv_cache_dtype
        if kv_dtype == "int4":
            kv_dtype = "fp16"  # int4 weights still keep a 16-bit KV cache
        peak_flops = gpu.flops(weight_dtype)
        bw = gpu.hbm_bandwidth_bytes_per_s
        c = coeffs
        layers = model.num_layers
        # Features at coefficient 1 (the unit the feature view of :meth:`terms` uses).
        # Seconds to stream all weights once (per GPU: weights are split by TP).
        self.unit_weight_stream_s = model.weight_bytes(weight_dtype) / tp / bw
        # Seconds per token of GEMM compute at peak.  The LM head runs only for the position
        # sampled in each sequence (vLLM prunes the other prefill positions first).
        lm_head_flops = 2.0 * model.vocab_size * model.hidden_size
        self.unit_linear_s_per_token = (model.linear_flops_per_token() - lm_head_flops) / tp / peak_flops
        self.unit_lm_head_s_per_seq = lm_head_flops / tp / peak_flops
        # Seconds per prefill (query, key) pair; attention runs in 16-bit (fp8 KV is dequantised).
        self.unit_prefill_s_per_pair = model.attention_flops_per_pair() / tp / gpu.bf16_flops
        # Seconds per decode context token: its K and V read from HBM.
        self.unit_decode_s_per_ctx_token = model.kv_bytes_per_token(kv_dtype, tp) / bw
        # Two all-reduces per layer (after attention and after the MLP) of a 16-bit hidden state.
        self.num_allreduces = 2 * layers if tp > 1 else 0
        self.allreduce_bytes_per_token = 2 * layers * model.hidden_size * 2 if tp > 1 else 0
        # The same features times the coefficients: the constants of the step-cost expression.
        self.weight_stream_s = self.unit_weight_stream_s / c.eff_bw
        self.linear_s_per_token = self.unit_linear_s_per_token / c.eff_mm
        self.lm_head_s_per_seq = self.unit_lm_head_s_per_seq / c.eff_mm
        self.prefill_s_per_pair = self.unit_prefill_s_per_pair / c.eff_attn_prefill
        self.decode_s_per_ctx_token = self.unit_decode_s_per_ctx_token / c.eff_attn_decode
        self.comm_fixed_s = self.num_allreduces * c.ar_latency_s
        self.comm_s_per_token = self.allreduce_bytes_per_token / c.ar_bandwidth_bytes_per_s
        self.fixed_s = (c.step_overhead_s + c.tp_step_overhead_s * (tp - 1)
                        + c.layer_overhead_s * layers + self.comm_fixed_s)
        self.per_token_s = c.per_token_overhead_s + self.comm_s_per_token
        self.per_seq_s = c.per_seq_overhead_s
        self.per_prefill_token_s = c.per_prefill_token_overhead_s
        self.prefill_fixed_s = c.prefill_layer_overhead_s * layers  # eager (graph-less) prefill

    def step_time(self, batch: BatchShape) -> float:
        """Seconds one step of ``batch`` takes (0 tokens costs nothing: no step is run)."""
        return self.step_time_of(batch.num_prefill_tokens + batch.num_decode_seqs,
                                 batch.num_prefill_seqs + batch.num_decode_seqs,
                                 batch.prefill_attn_pairs, batch.decode_context_tokens, batch.num_prefill_tokens)

    def step_time_of(self, num_tokens: int, num_seqs: int, prefill_pairs: float,
                     decode_context_tokens: float, num_prefill_tokens: int = 0,
                     clock: float = 1.0, memory: float = 1.0) -> float:
        """The step-cost expression, on plain numbers (the engine's hot path avoids building objects).

        ``clock`` is the SM clock as a fraction of full clock (compute-bound parts take ``1/clock``
        as long) and ``memory`` the slow-down of memory-bound parts under it
        (:class:`~servesim.sim.power.CappedStepCostModel`); both 1 when the GPU runs at full clock,
        where multiplying and dividing by 1.0 changes no bit."""
        if num_tokens <= 0:
            return 0.0
        linear = max(self.weight_stream_s * memory,
                     (self.linear_s_per_token * num_tokens + self.lm_head_s_per_seq * num_seqs) / clock)
        return (linear + self.prefill_s_per_pair * prefill_pairs / clock
                + self.decode_s_per_ctx_token * decode_context_tokens * memory
                + self.fixed_s + self.per_token_s * num_tokens
                + self.per_seq_s * num_seqs
                + self.per_prefill_token_s * num_prefill_tokens
                + (self.prefill_fixed_s if num_prefill_tokens else 0.0))

    def terms(self, batch: BatchShape) -> dict[str, float]:
        """The feature view of :meth:`step_time`: :meth:`terms_of` for ``batch``."""
        return self.terms_of(batch.num_prefill_tokens + batch.num_decode_seqs,
                             batch.num_prefill_seqs + batch.num_decode_seqs,
                             batch.prefill_attn_pairs, batch.decode_context_tokens, batch.num_prefill_tokens)

    def terms_of(self, num_tokens, num_seqs, prefill_pairs, decode_context_tokens, num_prefill_tokens=0):
        """``{coefficient name: feature}`` for a step (scalars or numpy arrays of steps).

        :func:`step_time_from_terms` turns it into seconds: a feature keyed by one of
        :data:`INVERSE_COEFFICIENTS` is divided by that coefficient, every other one multiplied,
        and the weight-streaming and GEMM parts (``eff_bw``, ``eff_mm``) enter as their maximum."""
        layers = self.model.num_layers
        has_prefill = num_prefill_tokens > 0
        return {
            "eff_bw": self.unit_weight_stream_s + 0.0 * num_tokens,
            "eff_mm": self.unit_linear_s_per_token * num_tokens + self.unit_lm_head_s_per_seq * num_seqs,
            "eff_attn_prefill": self.unit_prefill_s_per_pair * prefill_pairs,
            "eff_attn_decode": self.unit_decode_s_per_ctx_token * decode_context_tokens,
            "ar_bandwidth_bytes_per_s": self.allreduce_bytes_per_token * num_tokens,
            "ar_latency_s": float(self.num_allreduces),
            "step_overhead_s": 1.0,
            "tp_step_overhead_s": float(self.tp - 1),
            "layer_overhead_s": float(layers),
            "per_token_overhead_s": num_tokens,
            "per_seq_overhead_s": num_seqs,
            "per_prefill_token_overhead_s": num_prefill_tokens,
            "prefill_layer_overhead_s": layers * has_prefill,
        }

    def decode_terms(self, num_seqs: int) -> tuple[float, float, float, float, float]:
        """``(a, b, fixed, c1, c2)`` such that a decode-only step of ``num_seqs`` sequences with
        summed context ``ctx`` takes ``(((a + b*ctx) + fixed) + c1) + c2`` seconds, which is
        :meth:`step_time_of`'s expression evaluated in the same order, so bit for bit equal.
        Used to take many decode steps in a tight loop (:meth:`decode_step_ends`)."""
        linear = max(self.weight_stream_s, self.linear_s_per_token * num_seqs + self.lm_head_s_per_seq * num_seqs)
        return (linear + self.prefill_s_per_pair * 0.0, self.decode_s_per_ctx_token, self.fixed_s,
                self.per_token_s * num_seqs, self.per_seq_s * num_seqs)

    def decode_step_ends(self, now: float, num_seqs: int, context_tokens: int, num_steps: int,
                         horizon: float) -> list[float]:
        """End times of up to ``num_steps`` decode-only steps of ``num_seqs`` sequences run back to
        back from ``now``, the first attending ``context_tokens`` (each later one ``num_seqs``
        more); stops after the first step ending at or after ``horizon``.  The times are those
        the steps taken one by one reach: the same expression (:meth:`decode_terms`), summed in
        the same order."""
        return decode_step_ends(self.decode_terms(num_seqs), now, num_seqs, context_tokens, num_steps, horizon)

    def window_time(self, num_seqs: int, decode_context_tokens: float, num_steps: int) -> float:
        """Seconds a multi-step window takes: :func:`window_time` over this model's steps."""
        return window_time(self.step_time_of, self.coeffs, num_seqs, decode_context_tokens, num_steps)


def step_time_from_terms(terms: dict, coeffs) -> object:
    """Seconds of the steps whose features are ``terms`` (:meth:`StepCostModel.terms_of`) under
    ``coeffs`` (a :class:`StepCoefficients` or a mapping of coefficient names, e.g. a fit's
    trial values); vectorises over numpy arrays of steps."""
    get = coeffs.__getitem__ if isinstance(coeffs, dict) else coeffs.__getattribute__
    linear = np.maximum(terms["eff_bw"] / get("eff_bw"), terms["eff_mm"] / get("eff_mm"))
    total = linear
    for name, feature in terms.items():
        if name in ("eff_bw", "eff_mm"):
            continue
        total = total + (feature / get(name) if name in INVERSE_COEFFICIENTS else feature * get(name))
    return total


def decode_step_ends(decode_terms: tuple[float, float, float, float, float], now: float, num_seqs: int,
                     context_tokens: int, num_steps: int, horizon: float) -> list[float]:
    """:meth:`StepCostModel.decode_step_ends` for a cost model's :meth:`~StepCostModel.decode_terms`."""
    a, b, fixed, c1, c2 = decode_terms
    ends: list[float] = []
    append = ends.append
    t, ctx = now, context_tokens
    for _ in range(num_steps):
        t = t + ((((a + b * ctx) + fixed) + c1) + c2)
        ctx += num_seqs
        append(t)
        if t >= horizon:
            break
    return ends


def window_time(step_time_of, coeffs: StepCoefficients, num_seqs: int, decode_context_tokens: float,
                num_steps: int) -> float:
    """Seconds a multi-step window of ``num_steps`` decode steps of ``num_seqs`` sequences takes,
    the first step attending ``decode_context_tokens`` (each later one ``num_seqs`` more), with the
    per-pass CPU terms (``step_overhead_s``, ``per_seq_overhead_s``) paid once; ``step_time_of`` is
    a cost model's (plain or power-capped).

    Every sequence scheduled in the window is computed for every step, also after it finished
    (vLLM 0.6 drops its surplus tokens only when the window's outputs are processed)."""
    if num_seqs <= 0:
        return 0.0
    total = 0.0
    for j in range(num_steps):
        total += step_time_of(num_seqs, num_seqs, 0.0, decode_context_tokens + j * num_seqs)
    pass_cpu = coeffs.step_overhead_s + coeffs.per_seq_overhead_s * num_seqs
    return total - (num_steps - 1) * pass_cpu
