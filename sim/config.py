"""Configuration of a simulated replica, under vLLM's knob names, with vLLM's defaults.

Frozen dataclasses nested by concern (cache, scheduler, parallelism), validated at construction.
:func:`create_engine_config` builds the :class:`EngineConfig` of an
:class:`~servesim.sim.engine_args.EngineArgs` (the one declaration of the knobs and of vLLM's
defaults per engine generation); :func:`make_engine_config` is the same with the model and GPU
given as specs and the knobs as keywords.
"""
from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .engine_args import EngineArgs, EngineVersion, PreemptionMode
from .gpus import GPUSpec, get_gpu
from .model_catalog import get_model
from .models import ModelSpec
from .profile import Profile, default_profile, load_profile, shipped_profiles


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


def create_engine_config(args: EngineArgs, *, model: ModelSpec | None = None, gpu: GPUSpec | None = None,
                         profile: Profile | None = None, base_dir: str | Path = ".") -> EngineConfig:
    """The :class:`EngineConfig` of ``args`` with vLLM's defaults applied (raises ``ValueError``
    for what vLLM would refuse).  ``model``, ``gpu`` and ``profile`` replace the lookup of
    ``args.model`` (a catalogue name or a ``config.json`` path, relative to ``base_dir``),
    ``args.gpu`` and ``args.profile`` (a shipped profile name or a JSON path, relative to
    ``base_dir``; None: the shipped one of the GPU and engine)."""
    version = args.version
    if model is None:
        path = Path(base_dir) / args.model
        model = get_model(str(path) if path.suffix == ".json" else args.model)
    gpu = get_gpu(args.gpu) if gpu is None else gpu
    if profile is None and args.profile:
        shipped = shipped_profiles()
        profile = load_profile(shipped[args.profile] if args.profile in shipped else Path(base_dir) / args.profile)
    if profile is None:
        profile = default_profile(gpu.name, version.value)
    steps = int(profile.deployment.get("num_scheduler_steps", 1))  # a fitted vLLM 0.6 deployment ran multi-step
    r = args.resolved(gpu_memory_bytes=gpu.memory_bytes, max_position_embeddings=model.max_position_embeddings,
                      profile_num_scheduler_steps=steps)
    assert r.max_num_seqs is not None and r.max_num_batched_tokens is not None and r.max_model_len is not None
    assert r.num_scheduler_steps is not None
    return EngineConfig(
        engine=version, model=model, gpu=gpu, profile=profile,
        cache=CacheConfig(block_size=r.block_size, gpu_memory_utilization=r.gpu_memory_utilization,
                          kv_cache_dtype=r.kv_cache_dtype, enable_prefix_caching=bool(r.enable_prefix_caching),
                          num_gpu_blocks_override=r.num_gpu_blocks, swap_space_bytes=r.swap_space_gib * 2**30),
        scheduler=SchedulerConfig(max_num_seqs=r.max_num_seqs, max_num_batched_tokens=r.max_num_batched_tokens,
                                  max_model_len=r.max_model_len, enable_chunked_prefill=bool(r.enable_chunked_prefill),
                                  preemption_mode=PreemptionMode(r.preemption_mode),
                                  num_scheduler_steps=r.num_scheduler_steps,
                                  long_prefill_token_threshold=r.long_prefill_token_threshold),
        parallel=ParallelConfig(tensor_parallel_size=r.tensor_parallel_size),
        weight_dtype=r.weight_dtype or model.serving_dtype)


# make_engine_config's names for EngineArgs fields (kept for its many callers).
_LEGACY_NAMES = {"tp": "tensor_parallel_size"}


def make_engine_config(model: ModelSpec, gpu: GPUSpec, engine: str = "vllm-v1", *,
                       profile: Profile | None = None, **knobs: Any) -> EngineConfig:
    """:func:`create_engine_config` of ``EngineArgs(engine=engine, **knobs)`` for the given model
    and GPU specs; ``knobs`` are :class:`EngineArgs` field names (``tp`` for
    ``tensor_parallel_size``), ``None`` meaning vLLM's default."""
    names = {f.name for f in fields(EngineArgs)} - {"model", "gpu", "engine", "profile"}
    values = {_LEGACY_NAMES.get(k, k): v for k, v in knobs.items()}
    unknown = sorted(set(values) - names)
    if unknown:
        raise TypeError(f"make_engine_config: unknown engine argument {unknown[0]!r}; valid: {sorted(names)}")
    if engine not in [e.value for e in EngineVersion]:
        raise ValueError(f"unknown engine {engine!r}; valid: {[e.value for e in EngineVersion]}")
    defaults = {f.name: f.default for f in fields(EngineArgs)}
    values = {k: (defaults[k] if v is None and defaults[k] is not None else v) for k, v in values.items()}
    args = EngineArgs(model=model.name, gpu=gpu.name, engine=engine, **values)
    return create_engine_config(args, model=model, gpu=gpu, profile=profile)


__all__ = ["CacheConfig", "EngineArgs", "EngineConfig", "EngineVersion", "ParallelConfig", "PreemptionMode",
           "SchedulerConfig", "create_engine_config", "make_engine_config"]
