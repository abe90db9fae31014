"""Model architectures as public ``config.json`` facts, and what follows from them.

A :class:`ModelSpec` holds the handful of numbers of a Hugging Face ``config.json`` that decide
serving cost: layer count, widths, attention heads (multi-head, grouped-query or multi-query),
MLP shape, experts, vocabulary.  Everything the engine needs is derived from them as plain
arithmetic with units: parameter count, weight bytes per dtype, KV-cache bytes per token, FLOPs
per token.  The built-in catalogue lives in :mod:`servesim.sim.model_catalog`.
"""
from __future__ import annotations

from dataclasses import dataclass

# Bytes per element of the dtypes weights and KV cache are stored in.  int4 packs two weights a
# byte (AWQ/GPTQ); its scales and zero points are ignored (< 1% of the weights at group size 128).
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0, "float32": 4.0,
    "bf16": 2.0, "bfloat16": 2.0,
    "fp16": 2.0, "float16": 2.0, "half": 2.0,
    "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of ``dtype``; raises ``ValueError`` naming the valid choices."""
    try:
        return DTYPE_BYTES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {sorted(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer as its ``config.json`` describes it.

    Invariants (checked at construction): heads divide into KV-head groups, all sizes positive,
    ``num_experts_per_tok <= num_experts``.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    # Gated MLP (SwiGLU/GeGLU: gate, up, down = 3 matrices) or plain (up, down = 2; gpt2, Falcon).
    mlp_gated: bool = True
    # Mixture of experts: 0 experts means dense.  ``moe_intermediate_size`` is each expert's width;
    # ``shared_expert_intermediate_size`` is the width of an always-active shared expert
    # (Qwen1.5/Qwen2-MoE), 0 when there is none.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    # Default weight dtype of the released checkpoint.
    torch_dtype: str = "bf16"
    hf_id: str = ""

    def __post_init__(self) -> None:
        for field_name in ("num_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                           "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings"):
            if getattr(self, field_name) <= 0:
                raise ValueError(f"model {self.name}: {field_name} must be > 0")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"model {self.name}: num_attention_heads ({self.num_attention_heads}) is "
                             f"not a multiple of num_key_value_heads ({self.num_key_value_heads})")
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError(f"model {self.name}: num_experts_per_tok > num_experts")
        dtype_bytes(self.torch_dtype)  # raises ValueError on an unknown dtype

    # ----- parameter counts ---------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def attention_params_per_layer(self) -> int:
        """q, k, v and o projections (biases ignored: < 0.1% of the weights)."""
        q_and_o = 2 * self.hidden_size * self.num_attention_heads * self.head_dim
        k_and_v = 2 * self.hidden_size * self.num_key_value_heads * self.head_dim
        return q_and_o + k_and_v

    def _mlp_params(self, width: int) -> int:
        return (3 if self.mlp_gated else 2) * self.hidden_size * width

    @property
    def mlp_params_per_layer(self) -> int:
        """All MLP weights of a layer, every expert counted (what has to sit in memory)."""
        if self.is_moe:
            width = self.moe_intermediate_size or self.intermediate_size
            router = self.hidden_size * self.num_experts
            return self.num_experts * self._mlp_params(width) + router + self._shared_expert_params
        return self._mlp_params(self.intermediate_size)

    @property
    def active_mlp_params_per_layer(self) -> int:
        """MLP weights one token passes through (top-k experts for MoE)."""
        if self.is_moe:
            width = self.moe_intermediate_size or self.intermediate_size
            router = self.hidden_size * self.num_experts
            return self.num_experts_per_tok * self._mlp_params(width) + router + self._shared_expert_params
        return self._mlp_params(self.intermediate_size)

    @property
    def _shared_expert_params(self) -> int:
        return self._mlp_params(self.shared_expert_intermediate_size) if self.shared_expert_intermediate_size else 0

    @property
    def embedding_params(self) -> int:
        """Input embedding plus LM head (one matrix when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def num_params(self) -> int:
        """Total parameters (norms and biases ignored)."""
        per_layer = self.attention_params_per_layer + self.mlp_params_per_layer
        return self.num_layers * per_layer + self.embedding_params

    @property
    def num_active_params(self) -> int:
        """Parameters touched per token in matrix multiplies: layers plus the LM head.

        The input embedding is a lookup, not a GEMM, so it is excluded.
        """
        per_layer = self.attention_params_per_layer + self.active_mlp_params_per_layer
        return self.num_layers * per_layer + self.vocab_size * self.hidden_size

    @property
    def serving_dtype(self) -> str:
        """Weight dtype vLLM serves the checkpoint in with ``dtype="auto"``.

        fp32 checkpoints (gpt2-xl, Gemma-2 2B/9B) are served in 16 bits: vLLM's
        ``_get_and_verify_dtype`` casts float32 to bfloat16 (Gemma-2) or float16 (others), which
        cost the same bytes and FLOP/s, so this returns "bf16" for both.
        """
        return "bf16" if dtype_bytes(self.torch_dtype) > 2 else self.torch_dtype

    def weight_bytes(self, dtype: str | None = None) -> float:
        """Bytes of all weights in ``dtype`` (default: the checkpoint's dtype)."""
        return self.num_params * dtype_bytes(dtype or self.torch_dtype)

    # ----- KV cache ------------------------------------------------------------------------
    def kv_bytes_per_token(self, kv_dtype: str = "bf16", tp: int = 1) -> float:
        """KV-cache bytes one token occupies on one GPU of a TP group.

        ``2 (K and V) * layers * kv_heads * head_dim * bytes``; KV heads are split across TP ranks,
        and replicated when there are fewer KV heads than ranks (vLLM does the same).
        """
        kv_heads_per_gpu = max(1, self.num_key_value_heads // tp)
        return 2 * self.num_layers * kv_heads_per_gpu * self.head_dim * dtype_bytes(kv_dtype)

    # ----- FLOPs ---------------------------------------------------------------------------
    def linear_flops_per_token(self) -> float:
        """FLOPs of the matrix multiplies one token costs (2 per multiply-accumulate)."""
        return 2.0 * self.num_active_params

    def attention_flops_per_pair(self) -> float:
        """FLOPs of one (query token, key token) pair summed over layers and heads.

        QK^T and PV each cost 2*head_dim FLOPs per pair and head (Kaplan et al. 2020, eq. 2.1
        counts the same 2 * n_layer * n_ctx * d_attn per direction).
        """
        return 4.0 * self.num_layers * self.num_attention_heads * self.head_dim

    def flops_per_token(self, context_tokens: int = 0) -> float:
        """Forward FLOPs of one token attending to ``context_tokens`` earlier tokens."""
        return self.linear_flops_per_token() + self.attention_flops_per_pair() * context_tokens

    def describe(self) -> str:
        attn = ("MHA" if self.num_key_value_heads == self.num_attention_heads
                else "MQA" if self.num_key_value_heads == 1 else "GQA")
        moe = f", MoE {self.num_experts_per_tok}/{self.num_experts}" if self.is_moe else ""
        return (f"{self.name}: {self.num_params / 1e9:.2f}B params, {self.num_layers} layers, "
                f"{attn} {self.num_attention_heads}/{self.num_key_value_heads} heads x {self.head_dim}"
                f"{moe}, KV {self.kv_bytes_per_token() / 1024:.0f} KiB/token (bf16)")


__all__ = ["DTYPE_BYTES", "ModelSpec", "dtype_bytes"]
