"""GPU power by phase, power caps as clock scaling, and the energy a replica uses.

What a power cap does to a step (the model; docs/design.md "Beyond one replica"):

* A GPU draws the profile's phase power at full clock: ``prefill_w`` while computing prompt
  tokens, ``decode_w`` while decoding, ``idle_w`` between steps (:class:`PowerCoefficients`).  A
  step's demand is the token-weighted mix, ``decode_w + (prefill_w - decode_w) * f_prefill``.
* Under a cap below that demand the GPU lowers its SM clock until it fits.  The dynamic part of
  the power is taken to scale with the clock ratio ``c`` as ``c ** exponent``:
  ``P(c) = idle_w + (demand - idle_w) * c ** exponent``, so ``c = ((cap - idle_w) /
  (demand - idle_w)) ** (1 / exponent)``.  ``exponent = 1`` (the default) is the conservative end:
  a cubic law (``P ~ f V^2`` with voltage following frequency) would throttle less for the same
  cap.  The clock never drops below ``min_clock_ratio`` (H100's lowest application clock is
  about a third of its boost clock).
* A step's time splits into parts with different sensitivities (the split comes from the step-cost
  model's own terms, :class:`~servesim.sim.cost_model.StepCostModel`): compute-bound parts (GEMMs
  when they are FLOP-bound, prefill attention) scale with ``1 / c``; memory-bound parts (weight
  streaming, decode attention's KV reads) scale much less, ``1 + memory_clock_sensitivity *
  (1/c - 1)``, because capping lowers the SM clock, not the HBM clock; CPU-side overheads and
  collectives are unchanged.  This follows the observations of POLCA (Patel et al., "POLCA: Power
  Oversubscription in LLM Cloud Providers", arXiv:2308.12908, 2023: prompt phases are
  compute-bound and lose throughput under frequency caps, token phases are memory-bound and lose
  little) and DynamoLLM (Stojkovic et al., HPCA 2025, arXiv:2408.00741: decode latency is nearly
  flat over a wide frequency range, prefill latency is not).  ``memory_clock_sensitivity`` is an
  assumption (0.1), not a fit: no capped runs are in ``../shared/data``.
* Energy: busy time at ``min(phase power, cap)`` per phase, idle time at ``idle_w``, times the
  GPUs of the replica.
"""
from __future__ import annotations

from dataclasses import dataclass

from .cost_model import BatchShape, StepCostModel, decode_step_ends, window_time
from .profile import PowerCoefficients


@dataclass(frozen=True)
class PowerCap:
    """A per-GPU power cap and the clock-scaling model it acts through (see the module docstring).

    ``cap_w = None`` means uncapped.  Invariant: a cap lies above the GPU's idle power.
    """

    cap_w: float | None = None
    exponent: float = 1.0
    memory_clock_sensitivity: float = 0.1
    min_clock_ratio: float = 0.35

    def __post_init__(self) -> None:
        if self.cap_w is not None and not self.cap_w > 0:
            raise ValueError(f"power cap must be > 0 W (got {self.cap_w})")
        if not self.exponent > 0:
            raise ValueError(f"power-clock exponent must be > 0 (got {self.exponent})")
        if not 0 <= self.memory_clock_sensitivity <= 1:
            raise ValueError(f"memory_clock_sensitivity must be in [0, 1] (got {self.memory_clock_sensitivity})")
        if not 0 < self.min_clock_ratio <= 1:
            raise ValueError(f"min_clock_ratio must be in (0, 1] (got {self.min_clock_ratio})")

    def check(self, power: PowerCoefficients, gpu_name: str) -> None:
        if self.cap_w is not None and self.cap_w <= power.idle_w:
            raise ValueError(f"power cap {self.cap_w:g} W per GPU is not above {gpu_name}'s idle power "
                             f"({power.idle_w:g} W): nothing could run")

    def clock_ratio(self, demand_w: float, idle_w: float) -> float:
        """SM clock as a fraction of full clock for a step that would draw ``demand_w`` uncapped."""
        if self.cap_w is None or demand_w <= self.cap_w:
            return 1.0
        c = ((self.cap_w - idle_w) / (demand_w - idle_w)) ** (1.0 / self.exponent)
        return max(c, self.min_clock_ratio)

    def power_w(self, demand_w: float) -> float:
        return demand_w if self.cap_w is None else min(demand_w, self.cap_w)


class CappedStepCostModel:
    """A :class:`StepCostModel` whose steps run at the clock a power cap allows.

    Same interface as the wrapped model (``step_time``, ``step_time_of``, ``decode_terms``,
    ``decode_step_ends``, ``window_time``), so an engine uses it unchanged.  It does not restate
    the step-cost expression: it evaluates the wrapped model's one expression at the capped clock
    (:meth:`StepCostModel.step_time_of`'s ``clock`` and ``memory`` factors).  With no cap, or a cap
    above the step's demand, times are the wrapped model's bit for bit.
    """

    def __init__(self, inner: StepCostModel, power: PowerCoefficients, cap: PowerCap) -> None:
        self.inner, self.power, self.cap = inner, power, cap
        self.coeffs = inner.coeffs
        self._decode_clock = cap.clock_ratio(power.decode_w, power.idle_w)

    def _memory(self, clock: float) -> float:
        """Slow-down of the memory-bound parts at SM clock ratio ``clock`` (HBM keeps its clock)."""
        return 1.0 + self.cap.memory_clock_sensitivity * (1.0 / clock - 1.0)

    def step_time(self, batch: BatchShape) -> float:
        return self.step_time_of(batch.num_prefill_tokens + batch.num_decode_seqs,
                                 batch.num_prefill_seqs + batch.num_decode_seqs,
                                 batch.prefill_attn_pairs, batch.decode_context_tokens,
                                 batch.num_prefill_tokens)

    def step_time_of(self, num_tokens: int, num_seqs: int, prefill_pairs: float,
                     decode_context_tokens: float, num_prefill_tokens: int = 0) -> float:
        if num_tokens <= 0:
            return 0.0
        p = self.power
        share = num_prefill_tokens / num_tokens
        c = self.cap.clock_ratio(p.decode_w + (p.prefill_w - p.decode_w) * share, p.idle_w)
        if c == 1.0:
            return self.inner.step_time_of(num_tokens, num_seqs, prefill_pairs, decode_context_tokens,
                                           num_prefill_tokens)
        # CPU-side and launch terms (fixed, per token, per sequence, per prefill token, the eager
        # prefill's per-layer cost) do not run on the GPU's clock: the expression leaves them unscaled.
        return self.inner.step_time_of(num_tokens, num_seqs, prefill_pairs, decode_context_tokens,
                                       num_prefill_tokens, c, self._memory(c))

    def window_time(self, num_seqs: int, decode_context_tokens: float, num_steps: int) -> float:
        """A multi-step window (vLLM 0.6) of capped steps: :func:`~.cost_model.window_time`."""
        return window_time(self.step_time_of, self.inner.coeffs, num_seqs, decode_context_tokens, num_steps)

    def decode_terms(self, num_seqs: int) -> tuple[float, float, float, float, float]:
        """:meth:`StepCostModel.decode_terms` at the decode clock (a decode step's demand is
        ``decode_w``); the parts come from the same constants as the expression."""
        a, b, fixed, c1, c2 = self.inner.decode_terms(num_seqs)
        c = self._decode_clock
        if c == 1.0:
            return a, b, fixed, c1, c2
        inner, mem = self.inner, self._memory(c)
        gemm = inner.linear_s_per_token * num_seqs + inner.lm_head_s_per_seq * num_seqs
        return max(inner.weight_stream_s * mem, gemm / c), b * mem, fixed, c1, c2

    def decode_step_ends(self, now: float, num_seqs: int, context_tokens: int, num_steps: int,
                         horizon: float) -> list[float]:
        return decode_step_ends(self.decode_terms(num_seqs), now, num_seqs, context_tokens, num_steps, horizon)


def replica_energy_j(power: PowerCoefficients, cap: PowerCap, num_gpus: int, duration_s: float,
                     busy_s: float, prefill_busy_s: float) -> float:
    """Joules a replica's GPUs use over ``duration_s``: busy time at the (capped) phase powers,
    the rest at idle power."""
    decode_busy = max(busy_s - prefill_busy_s, 0.0)
    idle = max(duration_s - busy_s, 0.0)
    return num_gpus * (power.idle_w * idle + cap.power_w(power.prefill_w) * prefill_busy_s
                       + cap.power_w(power.decode_w) * decode_busy)


__all__ = ["CappedStepCostModel", "PowerCap", "replica_energy_j"]
