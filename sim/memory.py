"""KV capacity from the GPU memory budget (DESIGN.md, "Memory model").

vLLM sizes its KV cache by profiling: of ``gpu_memory_utilization * total_memory`` it subtracts
the weights, the peak activations of a dummy batch of ``max_num_batched_tokens`` tokens and the
memory outside PyTorch's allocator, and fills the rest with blocks.  Here each term is explicit:

* weights: ``weight_bytes / tp``;
* activations: ``tokens * (a * hidden + 4 * intermediate / tp)`` bytes, ``a`` fitted (profile), the
  second term the gate+up output of the MLP in 16 bits, plus fp32 logits of ``max_num_seqs`` rows;
* non-torch memory (CUDA context, NCCL buffers) and, for vLLM v1 which profiles them, CUDA graphs.

The result is rounded down to whole blocks.  vLLM logs the measured value as
``GPU KV cache size: N tokens`` / ``# GPU blocks: N``; calibration fits the overhead terms to those.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import EngineConfig, EngineVersion


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per GPU of a replica, and the KV capacity they leave."""

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

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_gpu_blocks * self.block_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kv_capacity_tokens"] = self.kv_capacity_tokens
        return d


def kv_capacity(cfg: EngineConfig) -> MemoryBreakdown:
    """Blocks of KV cache a replica gets; raises ``ValueError`` with the numbers if nothing fits."""
    model, gpu, tp = cfg.model, cfg.gpu, cfg.parallel.tensor_parallel_size
    mem = cfg.profile.memory
    block_size = cfg.cache.block_size
    kv_per_token = model.kv_bytes_per_token(cfg.kv_dtype, tp)
    total = gpu.memory_bytes
    budget = cfg.cache.gpu_memory_utilization * total
    weights = model.weight_bytes(cfg.weight_dtype) / tp
    tokens = cfg.scheduler.max_num_batched_tokens
    activations = (tokens * (mem.activation_bytes_per_token_hidden * model.hidden_size
                             + 4 * model.intermediate_size / tp)
                   + 4 * model.vocab_size * min(cfg.scheduler.max_num_seqs, tokens))
    graphs = mem.cuda_graph_bytes if cfg.engine is EngineVersion.V1 else 0.0
    kv_bytes = budget - weights - activations - mem.non_torch_bytes - graphs
    if cfg.cache.num_gpu_blocks_override is not None:
        blocks = cfg.cache.num_gpu_blocks_override
    else:
        blocks = int(max(kv_bytes, 0) // (kv_per_token * block_size))
    breakdown = MemoryBreakdown(total, budget, weights, activations, mem.non_torch_bytes, graphs,
                                blocks * kv_per_token * block_size, kv_per_token, blocks, block_size)
    if blocks < 1:
        gib = 2**30
        raise ValueError(
            f"{model.name} does not fit on {gpu.name} with TP={tp}: of {budget / gib:.1f} GiB "
            f"({cfg.cache.gpu_memory_utilization:.0%} of {total / gib:.1f} GiB) the weights take "
            f"{weights / gib:.1f} GiB ({cfg.weight_dtype}), activations {activations / gib:.1f} GiB, "
            f"non-torch {mem.non_torch_bytes / gib:.1f} GiB, CUDA graphs {graphs / gib:.1f} GiB, leaving "
            f"{kv_bytes / gib:.2f} GiB for the KV cache. Use more tensor parallelism, a smaller weight "
            "dtype (--dtype fp8), a higher --gpu-memory-utilization or a GPU with more memory")
    max_len = cfg.scheduler.max_model_len
    if breakdown.kv_capacity_tokens < max_len:
        raise ValueError(
            f"the model's max seq len ({max_len}) is larger than the {breakdown.kv_capacity_tokens} tokens "
            f"the KV cache can hold ({blocks} blocks of {block_size}) for {model.name} on {gpu.name} TP={tp}. "
            "Lower --max-model-len, raise --gpu-memory-utilization, or use more GPUs (vLLM refuses to start "
            "in this case too)")
    return breakdown
