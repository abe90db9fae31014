"""The engine configuration as ``make_engine_config`` built it before EngineArgs (commit 754c1ad),
kept verbatim as the reference the generated flags and ``create_engine_config`` are compared to
(tests/test_engine_args.py).  Not used by the product."""
from __future__ import annotations

import math

from servesim.sim.config import (
    CacheConfig,
    EngineConfig,
    EngineVersion,
    ParallelConfig,
    PreemptionMode,
    SchedulerConfig,
)
from servesim.sim.gpus import GPUSpec
from servesim.sim.models import ModelSpec
from servesim.sim.profile import Profile, default_profile


def legacy_make_engine_config(model: ModelSpec, gpu: GPUSpec, engine: str = "vllm-v1", *, tp: int = 1,
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


__all__ = ["legacy_make_engine_config"]
