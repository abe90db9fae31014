"""Configuration of a simulated replica, under vLLM's knob names, with vLLM's defaults.

Frozen dataclasses nested by concern (cache, scheduler, parallelism), validated at construction.
:func:`make_engine_config` applies the defaults vLLM picks for an OpenAI-compatible server on the
given GPU, for the engine generation being mirrored:

* ``vllm-v1`` (vLLM 0.8 and later; defaults as of 0.10/0.11 ``EngineArgs._set_default_args``):
  ``max_num_batched_tokens`` 8192 and ``max_num_seqs`` 1024 on GPUs with >= 70 GiB (2048/256
  below that), chunked prefill always on, prefix caching on, block size 16.
* ``vllm-v0`` (vLLM 0.5.4, the version of the ML.ENERGY H100 runs): ``max_num_seqs`` 256, chunked
  prefill off, ``max_num_batched_tokens = max(max_model_len, 2048)`` without chunking (512 with),
  watermark 1% of blocks, recompute preemption, prefix caching off, block size 16.
  ``num_scheduler_steps`` (vLLM 0.6 multi-step scheduling, default 1) runs that many decode steps
  per scheduling pass (:mod:`servesim.sim.scheduler_v0`).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from .gpus import GPUSpec
from .models import ModelSpec
from .profile import Profile


class EngineVersion(enum.Enum):
    V1 = "vllm-v1"
    V0 = "vllm-v0"


class PreemptionMode(enum.Enum):
    RECOMPUTE = "recompute"
    SWAP = "swap"


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    kv_cache_dtype: str = "auto"
    enable_prefix_caching: bool = False
    num_gpu_blocks_override: int | None = None
    swap_space_bytes: float = 4 * 2**30

    def __post_init__(self) -> None:
        if self.block_size not in (1, 8, 16, 32, 64, 128):
            raise ValueError(f"block_size must be one of 1, 8, 16, 32, 64, 128 (got {self.block_size})")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1] (got {self.gpu_memory_utilization})")
        if self.num_gpu_blocks_override is not None and self.num_gpu_blocks_override < 1:
            raise ValueError(f"num_gpu_blocks must be >= 1 (got {self.num_gpu_blocks_override})")
        if not (math.isfinite(self.swap_space_bytes) and self.swap_space_bytes >= 0):
            raise ValueError(f"swap space must be >= 0 bytes (got {self.swap_space_bytes})")


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool
    watermark: float = 0.01
    preemption_mode: PreemptionMode = PreemptionMode.RECOMPUTE
    # vLLM 0.6 ``--num-scheduler-steps``: decode steps run per scheduling pass (v0 policy only).
    num_scheduler_steps: int = 1
    # v1 only: admit a waiting request only if its whole prompt (plus outputs, when resumed) fits
    # in the free blocks, not just its first chunk (vLLM's ``scheduler_reserve_full_isl``, on by
    # default since at least 0.19; verified against vLLM 0.27 by the oracle, docs/oracle.md).
    scheduler_reserve_full_isl: bool = True
    # v1 only: cap on the tokens one request's prefill chunk may take in a step (0: none, vLLM's
    # default unless max_num_partial_prefills > 1).
    long_prefill_token_threshold: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.num_scheduler_steps, bool) or not isinstance(self.num_scheduler_steps, int) \
                or not 1 <= self.num_scheduler_steps <= 64:
            raise ValueError(f"num_scheduler_steps must be an integer in [1, 64] (got {self.num_scheduler_steps!r})")
        if self.num_scheduler_steps > 1 and self.enable_chunked_prefill:
            raise ValueError(f"num_scheduler_steps={self.num_scheduler_steps} needs chunked prefill off: vLLM 0.6 "
                             "refuses 'Chunked prefill is not supported with multi-step (--num-scheduler-steps > 1)'")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1 (got {self.max_num_seqs})")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1 (got {self.max_num_batched_tokens})")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}), as vLLM requires: every running sequence needs a token each step")
        if not 0 <= self.long_prefill_token_threshold <= self.max_model_len:
            raise ValueError(f"long_prefill_token_threshold must be in [0, max_model_len={self.max_model_len}] "
                             f"(got {self.long_prefill_token_threshold}), as vLLM requires")
        if self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2 (got {self.max_model_len})")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) is smaller than max_model_len "
                f"({self.max_model_len}) with chunked prefill off: long prompts could never be scheduled. "
                "Raise max_num_batched_tokens, lower max_model_len or enable chunked prefill (as vLLM requires)")


# GPUs one node holds (HGX/DGX boards of every GPU in the catalogue carry 8).  Tensor parallelism
# needs NVLink/PCIe peers inside one node; across nodes vLLM uses pipeline parallelism, which
# servesim does not model.
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        tp = self.tensor_parallel_size
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ValueError(f"tensor_parallel_size must be an integer >= 1 (got {tp!r})")
        if tp > GPUS_PER_NODE:
            raise ValueError(f"tensor_parallel_size {tp} exceeds the {GPUS_PER_NODE} GPUs of one node; "
                             "spanning nodes needs pipeline parallelism (vLLM's --pipeline-parallel-size), "
                             "which servesim does not model: use --tp <= 8 and more replicas")

    def verify_with_model(self, model: ModelSpec) -> None:
        """Refuse what vLLM refuses: attention heads not divisible by TP (``ModelConfig.
        verify_with_parallel_config``), and KV heads that neither divide among nor replicate evenly
        over the ranks (``QKVParallelLinear``: ``divide(kv_heads, tp)`` or ``divide(tp, kv_heads)``)."""
        tp, heads, kv = self.tensor_parallel_size, model.num_attention_heads, model.num_key_value_heads
        if heads % tp:
            raise ValueError(f"model {model.name}: total number of attention heads ({heads}) must be divisible "
                             f"by tensor parallel size ({tp}), as vLLM requires; valid sizes: "
                             f"{[t for t in range(1, GPUS_PER_NODE + 1) if heads % t == 0 and (kv % t == 0 or t % kv == 0)]}")
        if kv % tp and tp % kv:
            raise ValueError(f"model {model.name}: {kv} KV heads can neither be split over nor replicated on "
                             f"tensor parallel size {tp} (vLLM needs {kv} % tp == 0 or tp % {kv} == 0)")


@dataclass(frozen=True)
class EngineConfig:
    """Everything that defines one simulated replica."""

    engine: EngineVersion
    model: ModelSpec
    gpu: GPUSpec
    profile: Profile
    cache: CacheConfig
    scheduler: SchedulerConfig
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    weight_dtype: str = "bf16"

    def __post_init__(self) -> None:
        self.parallel.verify_with_model(self.model)

    @property
    def kv_dtype(self) -> str:
        kv = self.cache.kv_cache_dtype
        if kv in ("auto", ""):
            return "fp16" if self.weight_dtype in ("int4", "int8") else self.weight_dtype
        return kv

    def to_dict(self) -> dict:
        """The resolved configuration, for dumping next to every result."""
        from dataclasses import asdict
        return {
            "engine": self.engine.value,
            "engine_version": self.profile.engine_version,
            "model": asdict(self.model),
            "gpu": asdict(self.gpu),
            "tensor_parallel_size": self.parallel.tensor_parallel_size,
            "weight_dtype": self.weight_dtype,
            "kv_cache_dtype": self.kv_dtype,
            "cache": {k: v for k, v in asdict(self.cache).items()},
            "scheduler": {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(self.scheduler).items()},
            "profile": {"name": self.profile.name, "path": self.profile.source_path,
                        "step": asdict(self.profile.step), "memory": asdict(self.profile.memory)},
        }


def make_engine_config(model: ModelSpec, gpu: GPUSpec, engine: str = "vllm-v1", *, tp: int = 1,
                       weight_dtype: str | None = None, profile: Profile | None = None,
                       max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None,
                       max_model_len: int | None = None, enable_chunked_prefill: bool | None = None,
                       enable_prefix_caching: bool | None = None, block_size: int = 16,
                       gpu_memory_utilization: float = 0.9, kv_cache_dtype: str = "auto",
                       num_gpu_blocks: int | None = None, preemption_mode: str = "recompute",
                       swap_space_gib: float = 4.0, num_scheduler_steps: int | None = None) -> EngineConfig:
    """Resolve vLLM's defaults for ``engine`` on ``gpu`` and build the :class:`EngineConfig`."""
    try:
        version = EngineVersion(engine)
    except ValueError:
        raise ValueError(f"unknown engine {engine!r}; valid: {[e.value for e in EngineVersion]}") from None
    if profile is None:
        from .profile import default_profile
        profile = default_profile(gpu.name, version.value)
    for knob, value in (("max_num_seqs", max_num_seqs), ("max_num_batched_tokens", max_num_batched_tokens),
                        ("max_model_len", max_model_len), ("num_gpu_blocks", num_gpu_blocks)):
        # None means vLLM's default; 0 or a negative value is an error, never a silent default.
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{knob} must be an integer >= 1 (or omitted for vLLM's default), got {value!r}")
    if not (isinstance(swap_space_gib, (int, float)) and math.isfinite(swap_space_gib) and swap_space_gib >= 0):
        raise ValueError(f"swap_space must be a finite number of GiB >= 0, got {swap_space_gib!r}")
    max_model_len = model.max_position_embeddings if max_model_len is None else max_model_len
    if max_model_len > model.max_position_embeddings:
        raise ValueError(f"max_model_len {max_model_len} exceeds {model.name}'s context "
                         f"({model.max_position_embeddings})")
    big_gpu = gpu.memory_bytes >= 70 * 2**30
    if version is EngineVersion.V1:
        if enable_chunked_prefill is False:
            raise ValueError("vllm-v1 always uses chunked prefill; use --engine vllm-v0 to disable it")
        chunked = True
        max_num_seqs = (1024 if big_gpu else 256) if max_num_seqs is None else max_num_seqs
        if max_num_batched_tokens is None:
            max_num_batched_tokens = 8192 if big_gpu else 2048
        prefix = True if enable_prefix_caching is None else enable_prefix_caching
    else:
        chunked = bool(enable_chunked_prefill)
        max_num_seqs = 256 if max_num_seqs is None else max_num_seqs
        if max_num_batched_tokens is None:
            max_num_batched_tokens = 512 if chunked else max(max_model_len, 2048)
        prefix = bool(enable_prefix_caching)
    try:
        mode = PreemptionMode(preemption_mode)
    except ValueError:
        raise ValueError(f"unknown preemption_mode {preemption_mode!r}; valid: recompute, swap") from None
    if mode is PreemptionMode.SWAP and version is EngineVersion.V1:
        raise ValueError("vllm-v1 preempts by recompute only; swap preemption exists in vllm-v0")
    if num_scheduler_steps is None:
        # the profile's deployment (a fitted vLLM 0.6 deployment ran multi-step), else vLLM's default 1
        num_scheduler_steps = int(profile.deployment.get("num_scheduler_steps", 1)) if version is EngineVersion.V0 else 1
    if num_scheduler_steps != 1 and version is EngineVersion.V1:
        raise ValueError(f"num_scheduler_steps={num_scheduler_steps}: multi-step scheduling is a vllm-v0 (vLLM 0.6) "
                         "option; vLLM v1 has no --num-scheduler-steps")
    return EngineConfig(
        engine=version, model=model, gpu=gpu, profile=profile,
        cache=CacheConfig(block_size=block_size, gpu_memory_utilization=gpu_memory_utilization,
                          kv_cache_dtype=kv_cache_dtype, enable_prefix_caching=prefix,
                          num_gpu_blocks_override=num_gpu_blocks, swap_space_bytes=swap_space_gib * 2**30),
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                                  max_model_len=max_model_len, enable_chunked_prefill=chunked,
                                  preemption_mode=mode, num_scheduler_steps=num_scheduler_steps),
        parallel=ParallelConfig(tensor_parallel_size=tp),
        weight_dtype=weight_dtype or model.serving_dtype)


__all__ = ["CacheConfig", "EngineConfig", "EngineVersion", "ParallelConfig", "PreemptionMode",
           "SchedulerConfig", "make_engine_config"]
