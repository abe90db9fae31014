"""KV capacity from the GPU memory budget, in the form of vLLM's start-up profiling.

vLLM sizes its KV cache once, at start-up (v1 ``Worker.determine_available_memory``, v0
``Worker.determine_num_available_blocks``)::

    requested = ceil(gpu_memory_utilization * total)      # total: cudaMemGetInfo, not nvidia-smi
    available = requested - weights - activation_peak - non_torch [- cuda_graphs]
    num_gpu_blocks = available // (block_size * kv_bytes_per_token_per_gpu)

Each term here follows what vLLM measures (``docs/memory.md`` cites the source lines):

* **weights**: the parameters one GPU of the TP group holds, as vLLM shards them: attention and
  MLP matrices split by TP (K/V replicated when there are fewer KV heads than ranks), the
  vocabulary padded to a multiple of 64 and split by TP, embeddings kept in the activation dtype
  when the linear layers are quantized (fp8/int8: 1 byte, int4: 0.5 byte plus group-128 scales),
  plus a fitted load overhead.
* **activation peak**: the torch allocator's peak during ``profile_run``: a forward pass of
  ``max_num_batched_tokens`` dummy tokens, then a dummy sampler run on ``min(max_num_seqs, tokens)``
  rows of full-vocabulary logits with temperature, top-k and top-p (fp32 working copies: logits,
  probabilities, the random sampler's noise; older versions also sorted the vocabulary with int64
  indices).  The two are sequential, so the peak is the larger of
  ``tokens * act_bytes * (n_h * hidden + n_i * intermediate/tp)`` and
  ``rows * vocab * (sampler_bytes_per_logit + act_bytes) + tokens * hidden * act_bytes``.
  MoE models add fused_moe's workspaces, which vLLM 0.17+ keeps in a persistent workspace manager
  (so they sit under both phases).
* **non-torch**: memory outside PyTorch's allocator added during profiling; at TP > 1 the NCCL
  and custom all-reduce buffers.
* **CUDA graphs**: captured after the KV cache is sized and not deducted by vLLM up to 0.19
  (unless ``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1``); ``cuda_graph_bytes`` is what is deducted.

The coefficients are a profile's ``memory`` section, fitted per engine version on real start-up
records by :mod:`servesim.calibrate.kv_capacity`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .config import EngineConfig
from .models import ModelSpec, dtype_bytes
from .profile import MemoryCoefficients

_GIB = 2**30
# vLLM pads the vocabulary of VocabParallelEmbedding / ParallelLMHead to a multiple of 64
# (``DEFAULT_VOCAB_PADDING_SIZE``) before splitting it across TP ranks.
VOCAB_PADDING = 64
# GPTQ/AWQ int4 checkpoints keep one fp16 scale per group of 128 weights.
INT4_GROUP_SIZE = 128


def _pad(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def activation_dtype(weight_dtype: str) -> str:
    """Dtype of activations: the weight dtype, or bf16 for 8/4-bit quantized linear layers."""
    return weight_dtype if dtype_bytes(weight_dtype) >= 2 else "bf16"


def linear_bytes_per_param(weight_dtype: str) -> float:
    """Bytes one linear-layer weight takes, group scales included (int4: fp16 scale per 128)."""
    b = dtype_bytes(weight_dtype)
    return b + 2.0 / INT4_GROUP_SIZE if b < 1 else b


def weight_bytes_per_gpu(model: ModelSpec, weight_dtype: str, tp: int) -> float:
    """Parameter bytes one GPU of a TP group holds, sharded as vLLM shards them (no overhead term)."""
    act = dtype_bytes(activation_dtype(weight_dtype))
    h, hd = model.hidden_size, model.head_dim
    q_and_o = 2 * h * model.num_attention_heads * hd / tp
    k_and_v = 2 * h * hd * max(1.0, model.num_key_value_heads / tp)
    mlp = (model.mlp_params_per_layer - (h * model.num_experts if model.is_moe else 0)) / tp
    router = h * model.num_experts  # replicated, kept in the activation dtype
    linear = model.num_layers * (q_and_o + k_and_v + mlp)
    vocab = _pad(model.vocab_size, VOCAB_PADDING) / tp
    embeddings = vocab * h * (1 if model.tie_word_embeddings else 2)
    norms = (2 * model.num_layers + 1) * h
    return (linear * linear_bytes_per_param(weight_dtype)
            + (embeddings + norms + model.num_layers * router) * act)


def intermediate_per_gpu(model: ModelSpec, tp: int) -> float:
    """Width of the MLP-internal activations one token has on one GPU in a plain forward pass:
    ``intermediate_size / tp`` for a dense model; for MoE only a shared expert's width (the routed
    experts' internals live in fused_moe's workspaces, :func:`moe_workspace_bytes`)."""
    if model.is_moe:
        return model.shared_expert_intermediate_size / tp
    return model.intermediate_size / tp


def moe_workspace_bytes(model: ModelSpec, weight_dtype: str, tp: int, tokens: int) -> float:
    """fused_moe's workspaces for ``tokens`` tokens: ``(M, top_k, max(I, hidden))`` and
    ``(M, top_k, max(2I, hidden))`` in the activation dtype (``TritonExperts.workspace_shapes``),
    ``I`` the expert width per TP rank.  0 for dense models."""
    if not model.is_moe:
        return 0.0
    act = dtype_bytes(activation_dtype(weight_dtype))
    width = (model.moe_intermediate_size or model.intermediate_size) / tp
    h = model.hidden_size
    return tokens * model.num_experts_per_tok * (max(width, h) + max(2 * width, h)) * act


@dataclass(frozen=True)
class MemoryInputs:
    """What vLLM's start-up profiling depends on, for one GPU of a replica.

    Invariant: sizes positive, ``0 < gpu_memory_utilization <= 1``.
    """

    model: ModelSpec
    total_memory_bytes: float
    gpu_memory_utilization: float
    tensor_parallel_size: int
    weight_dtype: str
    kv_cache_dtype: str
    block_size: int
    max_num_batched_tokens: int
    max_num_seqs: int

    def __post_init__(self) -> None:
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1] (got {self.gpu_memory_utilization})")
        for name in ("total_memory_bytes", "tensor_parallel_size", "block_size", "max_num_batched_tokens",
                     "max_num_seqs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 (got {getattr(self, name)})")

    @classmethod
    def from_config(cls, cfg: EngineConfig) -> MemoryInputs:
        return cls(cfg.model, cfg.gpu.memory_bytes, cfg.cache.gpu_memory_utilization,
                   cfg.parallel.tensor_parallel_size, cfg.weight_dtype, cfg.kv_dtype, cfg.cache.block_size,
                   cfg.scheduler.max_num_batched_tokens, cfg.scheduler.max_num_seqs)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per GPU of a replica, and the KV capacity they leave (``num_gpu_blocks >= 0``)."""

    total_bytes: float
    budget_bytes: float
    weight_bytes: float
    activation_bytes: float
    non_torch_bytes: float
    cuda_graph_bytes: float
    kv_cache_bytes: float
    kv_bytes_per_token: float
    num_gpu_blocks: int
    block_size: int
    available_kv_bytes: float = 0.0

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_gpu_blocks * self.block_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kv_capacity_tokens"] = self.kv_capacity_tokens
        return d


def forward_peak_bytes(inp: MemoryInputs, mem: MemoryCoefficients) -> float:
    """Torch peak of the dummy forward pass of ``max_num_batched_tokens`` tokens."""
    act = dtype_bytes(activation_dtype(inp.weight_dtype))
    per_token = (mem.activation_tensors_hidden * inp.model.hidden_size
                 + mem.activation_tensors_intermediate * intermediate_per_gpu(inp.model, inp.tensor_parallel_size))
    return inp.max_num_batched_tokens * act * per_token


def sampler_peak_bytes(inp: MemoryInputs, mem: MemoryCoefficients) -> float:
    """Torch peak of the dummy sampler run: full-vocabulary logits of ``min(max_num_seqs, tokens)``
    rows (gathered on every rank) and their sort, while the forward's hidden states are alive."""
    act = dtype_bytes(activation_dtype(inp.weight_dtype))
    rows = min(inp.max_num_seqs, inp.max_num_batched_tokens)
    hidden_states = inp.max_num_batched_tokens * inp.model.hidden_size * act
    return rows * inp.model.vocab_size * (mem.sampler_bytes_per_logit + act) + hidden_states


def activation_peak_bytes(inp: MemoryInputs, mem: MemoryCoefficients) -> float:
    """The profile run's torch peak increase: the larger of its two sequential phases, plus the
    fused-MoE workspaces where they persist across both (vLLM's workspace manager)."""
    workspace = moe_workspace_bytes(inp.model, inp.weight_dtype, inp.tensor_parallel_size, inp.max_num_batched_tokens)
    persistent = mem.moe_workspace_in_peak * workspace
    return max(forward_peak_bytes(inp, mem) + workspace - persistent, sampler_peak_bytes(inp, mem)) + persistent


def non_torch_bytes(tp: int, mem: MemoryCoefficients) -> float:
    """Non-torch memory the profiling adds; communicator buffers only exist at TP > 1."""
    extra = mem.non_torch_tp_bytes + mem.non_torch_per_rank_bytes * tp if tp > 1 else 0.0
    return mem.non_torch_bytes + extra


def memory_breakdown(inp: MemoryInputs, mem: MemoryCoefficients,
                     num_gpu_blocks_override: int | None = None) -> MemoryBreakdown:
    """Every term of the budget and the blocks it leaves (0 when nothing is left; no error)."""
    tp = inp.tensor_parallel_size
    kv_per_token = inp.model.kv_bytes_per_token(inp.kv_cache_dtype, tp)
    budget = float(math.ceil(inp.gpu_memory_utilization * inp.total_memory_bytes))
    weights = weight_bytes_per_gpu(inp.model, inp.weight_dtype, tp) + mem.weight_overhead_bytes
    activations = activation_peak_bytes(inp, mem)
    non_torch = non_torch_bytes(tp, mem)
    available = budget - weights - activations - non_torch - mem.cuda_graph_bytes
    if num_gpu_blocks_override is not None:
        blocks = num_gpu_blocks_override
    else:
        blocks = int(max(available, 0.0) // (kv_per_token * inp.block_size))
    return MemoryBreakdown(inp.total_memory_bytes, budget, weights, activations, non_torch, mem.cuda_graph_bytes,
                           blocks * kv_per_token * inp.block_size, kv_per_token, blocks, inp.block_size, available)


def kv_capacity(cfg: EngineConfig) -> MemoryBreakdown:
    """Blocks of KV cache a replica gets; raises ``ValueError`` with the numbers if nothing fits."""
    model, gpu, tp = cfg.model, cfg.gpu, cfg.parallel.tensor_parallel_size
    b = memory_breakdown(MemoryInputs.from_config(cfg), cfg.profile.memory, cfg.cache.num_gpu_blocks_override)
    if b.num_gpu_blocks < 1:
        raise ValueError(
            f"{model.name} does not fit on {gpu.name} with TP={tp}: of {b.budget_bytes / _GIB:.2f} GiB "
            f"({cfg.cache.gpu_memory_utilization:.0%} of {b.total_bytes / _GIB:.2f} GiB) the weights take "
            f"{b.weight_bytes / _GIB:.2f} GiB ({cfg.weight_dtype}), peak activations {b.activation_bytes / _GIB:.2f} "
            f"GiB, non-torch {b.non_torch_bytes / _GIB:.2f} GiB, CUDA graphs {b.cuda_graph_bytes / _GIB:.2f} GiB, "
            f"leaving {b.available_kv_bytes / _GIB:.2f} GiB for the KV cache. Use more tensor parallelism, a "
            "smaller weight dtype (--dtype fp8), a higher --gpu-memory-utilization or a GPU with more memory "
            "(vLLM refuses to start with 'No available memory for the cache blocks')")
    max_len = cfg.scheduler.max_model_len
    if b.kv_capacity_tokens < max_len:
        raise ValueError(
            f"the model's max seq len ({max_len}) is larger than the {b.kv_capacity_tokens} tokens "
            f"the KV cache can hold ({b.num_gpu_blocks} blocks of {b.block_size}) for {model.name} on {gpu.name} "
            f"TP={tp}. Lower --max-model-len, raise --gpu-memory-utilization, or use more GPUs (vLLM refuses to "
            "start in this case too)")
    return b


__all__ = ["MemoryBreakdown", "MemoryInputs", "activation_dtype", "activation_peak_bytes", "forward_peak_bytes",
           "intermediate_per_gpu", "kv_capacity", "moe_workspace_bytes", "linear_bytes_per_param", "memory_breakdown", "non_torch_bytes",
           "sampler_peak_bytes", "weight_bytes_per_gpu"]
