"""``EngineArgs``: every engine knob servesim exposes, declared once, as vLLM's ``EngineArgs`` is.

One frozen dataclass holds what a user may set about a simulated replica: the deployment (model,
GPU, tensor parallelism, engine generation, profile, dtypes) and vLLM's engine arguments under
vLLM's names.  ``None`` means "the default vLLM picks for this engine on this GPU"; each field's
:class:`~servesim.sim.arg_spec.ArgSpec` carries its help, unit, vLLM name, command-line flags,
scenario key and the defaults per engine generation, so the ``servesim`` flags
(``servesim.argtypes.add_engine_args``), the scenario schema's deployment section
(``scenarios/schema.py``) and the docs table (``docs/cli.md``) are all generated from it.

:meth:`EngineArgs.resolved` applies vLLM's defaults (:data:`VLLM_DEFAULTS`) and refuses what the
engine generation refuses; :func:`servesim.sim.config.create_engine_config` turns the result into
the :class:`~servesim.sim.config.EngineConfig` the simulator runs.  The defaults follow vLLM's
``vllm/engine/arg_utils.py``:

* ``vllm-v1`` (vLLM 0.8 and later; ``EngineArgs._set_default_args`` as of 0.10/0.11):
  ``max_num_batched_tokens`` 8192 and ``max_num_seqs`` 1024 on GPUs with >= 70 GiB (2048 / 256
  below), chunked prefill always on, prefix caching on, recompute preemption only, block size 16.
* ``vllm-v0`` (vLLM 0.5.4, the version of the ML.ENERGY H100 runs): ``max_num_seqs`` 256, chunked
  prefill off, ``max_num_batched_tokens = max(max_model_len, 2048)`` without chunking (512 with),
  prefix caching off, block size 16, swap space 4 GiB; vLLM 0.6's ``num_scheduler_steps``
  (multi-step scheduling) defaults to 1, or to what the profile's fitted deployment ran.
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from .arg_spec import arg, check_fields, spec_of
from .models import dtype_bytes


class EngineVersion(enum.Enum):
    """The vLLM engine generation whose scheduler and defaults a replica mirrors."""

    V1 = "vllm-v1"
    V0 = "vllm-v0"


class PreemptionMode(enum.Enum):
    """What vLLM does with a preempted request's KV cache (v1: recompute only)."""

    RECOMPUTE = "recompute"
    SWAP = "swap"


KV_CACHE_DTYPES = ("auto", "fp32", "bf16", "fp16", "fp8", "fp8_e4m3", "fp8_e5m2", "int8", "int4")
BLOCK_SIZES = (1, 8, 16, 32, 64, 128)
_V1_BIG = "on GPUs with >= 70 GiB"


def _weight_dtype(value: str) -> None:
    if value == "auto":
        raise ValueError("unknown dtype 'auto' for the weights; omit it for the checkpoint's dtype")
    dtype_bytes(value)  # raises "unknown dtype ...; valid: [...]"


@dataclass(frozen=True)
class EngineArgs:
    """The knobs of one simulated replica; ``None``: vLLM's default for the engine and GPU."""

    # ---- the deployment (scenario section ``deployment``)
    model: str = arg("llama-3.1-8b", flags=("--model",), vllm="model", section="deployment",
                     help="catalogue name or path to a HF config.json (`servesim models` lists them)")
    gpu: str = arg("h100-sxm", flags=("--gpu",), section="deployment",
                   help="GPU type of every rank (`servesim gpus` lists them)")
    tensor_parallel_size: int = arg(1, flags=("--tp", "--tensor-parallel-size"), vllm="tensor_parallel_size",
                                    scenario="tp", section="deployment", unit="GPUs", lo=1,
                                    help="tensor-parallel ranks of the replica (one node: <= 8)")
    engine: str = arg("vllm-v1", flags=("--engine",), section="deployment", choices=("vllm-v1", "vllm-v0"),
                      help="engine generation whose scheduler and defaults are mirrored")
    profile: str | None = arg(None, flags=("--profile",), section="deployment", input_file=True,
                              omitted="the shipped profile of the GPU and engine",
                              help="profile JSON (scenarios: also a shipped profile name)")
    weight_dtype: str | None = arg(None, flags=("--dtype",), vllm="dtype / quantization", section="deployment",
                                   validator=_weight_dtype, omitted="the checkpoint's",
                                   help="weight dtype: bf16, fp16, fp8, int8, int4")
    kv_cache_dtype: str = arg("auto", flags=("--kv-cache-dtype",), vllm="kv_cache_dtype", section="deployment",
                              choices=KV_CACHE_DTYPES, help="KV cache dtype (auto: the weights', 16-bit for "
                                                            "int4/int8 weights)")
    # ---- vLLM engine arguments (scenario section ``deployment.knobs``)
    max_num_seqs: int | None = arg(None, flags=("--max-num-seqs",), vllm="max_num_seqs", section="knobs",
                                   unit="sequences", lo=1, omitted="vLLM's default",
                                   defaults=(("vllm-v1", f"1024 {_V1_BIG}, else 256"), ("vllm-v0", "256")),
                                   help="most requests running at once")
    max_num_batched_tokens: int | None = arg(
        None, flags=("--max-num-batched-tokens",), vllm="max_num_batched_tokens", section="knobs", unit="tokens",
        lo=1, omitted="vLLM's default", help="token budget of one step",
        defaults=(("vllm-v1", f"8192 {_V1_BIG}, else 2048"),
                  ("vllm-v0", "max(max_model_len, 2048); 512 with chunked prefill")))
    max_model_len: int | None = arg(None, flags=("--max-model-len",), vllm="max_model_len", section="knobs",
                                    unit="tokens", lo=2, omitted="vLLM's default",
                                    defaults=(("vllm-v1", "the model's context"), ("vllm-v0", "the model's context")),
                                    help="longest prompt + output a request may have")
    block_size: int = arg(16, flags=("--block-size",), vllm="block_size", section="knobs", unit="tokens",
                          choices=BLOCK_SIZES, help="tokens per KV cache block")
    gpu_memory_utilization: float = arg(0.9, flags=("--gpu-memory-utilization",), vllm="gpu_memory_utilization",
                                        section="knobs", unit="fraction", lo=0.0, hi=1.0, lo_open=True,
                                        help="share of GPU memory vLLM may use (weights, activations, KV cache)")
    enable_chunked_prefill: bool | None = arg(
        None, flags=("--enable-chunked-prefill",), vllm="enable_chunked_prefill", section="knobs",
        omitted="vLLM's default", defaults=(("vllm-v1", "on (always)"), ("vllm-v0", "off")),
        help="split long prompts over steps (vllm-v1 always does)")
    enable_prefix_caching: bool | None = arg(
        None, flags=("--enable-prefix-caching",), vllm="enable_prefix_caching", section="knobs",
        omitted="vLLM's default", defaults=(("vllm-v1", "on"), ("vllm-v0", "off")),
        help="reuse cached blocks of shared prompt prefixes (hits need prefix hashes, as Mooncake traces carry)")
    num_gpu_blocks: int | None = arg(None, flags=("--num-gpu-blocks",), vllm="num_gpu_blocks_override",
                                     section="knobs", unit="blocks", lo=1, omitted="the memory model's",
                                     help="use this KV capacity instead of the memory model")
    preemption_mode: str = arg("recompute", flags=("--preemption-mode",), vllm="preemption_mode", section="knobs",
                               choices=tuple(m.value for m in PreemptionMode),
                               defaults=(("vllm-v1", "recompute (only)"), ("vllm-v0", "recompute")),
                               help="vllm-v0 only: swap preempted requests' KV to CPU instead of recomputing")
    swap_space_gib: float = arg(4.0, flags=("--swap-space",), vllm="swap_space", section="knobs", unit="GiB",
                                lo=0.0, help="CPU swap space per GPU (vllm-v0)")
    num_scheduler_steps: int | None = arg(
        None, flags=("--num-scheduler-steps",), vllm="num_scheduler_steps", section="knobs", unit="steps",
        lo=1, hi=64, omitted="vLLM's default",
        defaults=(("vllm-v1", "1 (only)"), ("vllm-v0", "the profile's deployment, else 1")),
        help="vllm-v0 only (vLLM 0.6 multi-step): decode steps per scheduling pass; their tokens stream "
             "together at the end of the window")
    long_prefill_token_threshold: int = arg(
        0, flags=("--long-prefill-token-threshold",), vllm="long_prefill_token_threshold", section="knobs",
        unit="tokens", lo=0, defaults=(("vllm-v1", "0 (no cap)"), ("vllm-v0", "0 (not in vLLM 0.6)")),
        help="vllm-v1 only: cap on one request's prefill chunk per step (0: none)")

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def version(self) -> EngineVersion:
        return EngineVersion(self.engine)

    @classmethod
    def from_scenario_keys(cls, values: Mapping[str, Any]) -> EngineArgs:
        """The knobs of a scenario's deployment and knobs sections, by scenario key (``tp`` for
        ``tensor_parallel_size``); keys that are no knob (``model_overrides``) are ignored."""
        names = {spec_of(f).scenario or f.name: f.name for f in fields(cls)}
        return cls(**{names[k]: v for k, v in values.items() if k in names})

    def resolved(self, *, gpu_memory_bytes: float, max_position_embeddings: int,
                 profile_num_scheduler_steps: int = 1) -> EngineArgs:
        """A copy with every ``None`` knob set to vLLM's default for this engine on this GPU
        (:data:`VLLM_DEFAULTS`); raises ``ValueError`` for what the engine generation refuses."""
        version = self.version
        if self.max_model_len is not None and self.max_model_len > max_position_embeddings:
            raise ValueError(f"max_model_len {self.max_model_len} exceeds {self.model}'s context "
                             f"({max_position_embeddings})")
        if version is EngineVersion.V1:
            if self.enable_chunked_prefill is False:
                raise ValueError("vllm-v1 always uses chunked prefill; use --engine vllm-v0 to disable it")
            if self.preemption_mode == PreemptionMode.SWAP.value:
                raise ValueError("vllm-v1 preempts by recompute only; swap preemption exists in vllm-v0")
            if self.num_scheduler_steps not in (None, 1):
                raise ValueError(f"num_scheduler_steps={self.num_scheduler_steps}: multi-step scheduling is a "
                                 "vllm-v0 (vLLM 0.6) option; vLLM v1 has no --num-scheduler-steps")
        elif self.long_prefill_token_threshold:
            raise ValueError(f"long_prefill_token_threshold={self.long_prefill_token_threshold}: a vllm-v1 option "
                             "(vLLM 0.6's v0 scheduler has no such cap)")
        ctx = DefaultContext(gpu_memory_bytes, max_position_embeddings, profile_num_scheduler_steps)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, rules in VLLM_DEFAULTS.items():  # in dependency order: a rule reads those before it
            if values[name] is None:
                values[name] = rules[version](values, ctx)
        return replace(self, **values)


@dataclass(frozen=True)
class DefaultContext:
    """What vLLM's defaults depend on besides the other knobs: the GPU's memory, the model's
    context and the profile's fitted deployment."""

    gpu_memory_bytes: float
    max_position_embeddings: int
    profile_num_scheduler_steps: int = 1

    @property
    def big_gpu(self) -> bool:
        """vLLM v1 raises its batch defaults on GPUs with >= 70 GiB (``_set_default_args``)."""
        return self.gpu_memory_bytes >= 70 * 2**30


DefaultRule = Callable[[dict[str, Any], DefaultContext], Any]  # (the knobs resolved so far, context)

# vLLM's default of each ``None`` knob per engine generation, applied in this order (a rule may
# read knobs resolved before it); the ``defaults`` text of each field's ArgSpec documents them.
VLLM_DEFAULTS: dict[str, dict[EngineVersion, DefaultRule]] = {
    "max_model_len": {v: (lambda a, c: c.max_position_embeddings) for v in EngineVersion},
    "enable_chunked_prefill": {EngineVersion.V1: lambda a, c: True, EngineVersion.V0: lambda a, c: False},
    "enable_prefix_caching": {EngineVersion.V1: lambda a, c: True, EngineVersion.V0: lambda a, c: False},
    "max_num_seqs": {EngineVersion.V1: lambda a, c: 1024 if c.big_gpu else 256, EngineVersion.V0: lambda a, c: 256},
    "max_num_batched_tokens": {
        EngineVersion.V1: lambda a, c: 8192 if c.big_gpu else 2048,
        EngineVersion.V0: lambda a, c: 512 if a["enable_chunked_prefill"] else max(a["max_model_len"], 2048)},
    "num_scheduler_steps": {EngineVersion.V1: lambda a, c: 1,
                            EngineVersion.V0: lambda a, c: c.profile_num_scheduler_steps},
}


def engine_arg_names(section: str | None = None) -> tuple[str, ...]:
    """The :class:`EngineArgs` field names (those of one scenario ``section`` if given)."""
    return tuple(f.name for f in fields(EngineArgs) if section is None or spec_of(f).section == section)


__all__ = ["BLOCK_SIZES", "DefaultContext", "EngineArgs", "EngineVersion", "KV_CACHE_DTYPES", "PreemptionMode",
           "VLLM_DEFAULTS", "engine_arg_names"]
