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
"""
from __future__ import annotations

import enum
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
            raise ValueError("num_gpu_blocks must be >= 1")


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool
    watermark: float = 0.01
    preemption_mode: PreemptionMode = PreemptionMode.RECOMPUTE
    # v1 only: admit a waiting request only if its whole prompt (plus outputs, when resumed) fits
    # in the free blocks, not just its first chunk (vLLM's ``scheduler_reserve_full_isl``, on by
    # default since at least 0.19; verified against vLLM 0.27 by the oracle, docs/oracle.md).
    scheduler_reserve_full_isl: bool = True
    # v1 only: cap on the tokens one request's prefill chunk may take in a step (0: none, vLLM's
    # default unless max_num_partial_prefills > 1).
    long_prefill_token_threshold: int = 0

    def __post_init__(self) -> None:
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


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1 (got {self.tensor_parallel_size})")


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
                       swap_space_gib: float = 4.0) -> EngineConfig:
    """Resolve vLLM's defaults for ``engine`` on ``gpu`` and build the :class:`EngineConfig`."""
    try:
        version = EngineVersion(engine)
    except ValueError:
        raise ValueError(f"unknown engine {engine!r}; valid: {[e.value for e in EngineVersion]}") from None
    if profile is None:
        from .profile import default_profile
        profile = default_profile(gpu.name, version.value)
    max_model_len = max_model_len or model.max_position_embeddings
    if max_model_len > model.max_position_embeddings:
        raise ValueError(f"max_model_len {max_model_len} exceeds {model.name}'s context "
                         f"({model.max_position_embeddings})")
    big_gpu = gpu.memory_bytes >= 70 * 2**30
    if version is EngineVersion.V1:
        if enable_chunked_prefill is False:
            raise ValueError("vllm-v1 always uses chunked prefill; use --engine vllm-v0 to disable it")
        chunked = True
        max_num_seqs = max_num_seqs or (1024 if big_gpu else 256)
        max_num_batched_tokens = max_num_batched_tokens or (8192 if big_gpu else 2048)
        prefix = True if enable_prefix_caching is None else enable_prefix_caching
    else:
        chunked = bool(enable_chunked_prefill)
        max_num_seqs = max_num_seqs or 256
        if max_num_batched_tokens is None:
            max_num_batched_tokens = 512 if chunked else max(max_model_len, 2048)
        prefix = bool(enable_prefix_caching)
    try:
        mode = PreemptionMode(preemption_mode)
    except ValueError:
        raise ValueError(f"unknown preemption_mode {preemption_mode!r}; valid: recompute, swap") from None
    if mode is PreemptionMode.SWAP and version is EngineVersion.V1:
        raise ValueError("vllm-v1 preempts by recompute only; swap preemption exists in vllm-v0")
    return EngineConfig(
        engine=version, model=model, gpu=gpu, profile=profile,
        cache=CacheConfig(block_size=block_size, gpu_memory_utilization=gpu_memory_utilization,
                          kv_cache_dtype=kv_cache_dtype, enable_prefix_caching=prefix,
                          num_gpu_blocks_override=num_gpu_blocks, swap_space_bytes=swap_space_gib * 2**30),
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                                  max_model_len=max_model_len, enable_chunked_prefill=chunked,
                                  preemption_mode=mode),
        parallel=ParallelConfig(tensor_parallel_size=tp),
        weight_dtype=weight_dtype or model.serving_dtype)


__all__ = ["CacheConfig", "EngineConfig", "EngineVersion", "ParallelConfig", "PreemptionMode",
           "SchedulerConfig", "make_engine_config"]
