"""Profiles: the fitted coefficients that turn model and GPU features into step times.

A profile is a JSON file (schema in ``docs/profile-schema.md``) with the engine it describes
(``vllm-v1`` or ``vllm-v0`` and the version measured), the GPU, and for every coefficient a value,
an uncertainty and where it came from.  Profiles are produced by :mod:`servesim.calibrate`; the
shipped defaults are this package's data, ``sim/profiles/*.json`` (:func:`shipped_profiles_dir`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StepCoefficients:
    """Coefficients of the step-cost model (see :mod:`servesim.sim.cost_model`).

    Efficiencies are fractions of the GPU's peak (0 < eff <= 1); overheads are seconds.
    """

    eff_bw: float = 0.8               # weight streaming: achieved / peak HBM bandwidth
    eff_mm: float = 0.7               # dense GEMM: achieved / peak tensor FLOP/s
    eff_attn_prefill: float = 0.5     # prefill attention: achieved / peak tensor FLOP/s
    eff_attn_decode: float = 0.6      # decode attention: KV read bandwidth / peak HBM bandwidth
    ar_latency_s: float = 8e-6        # one all-reduce, fixed part
    ar_bandwidth_bytes_per_s: float = 150e9  # one all-reduce, bytes of the message per second
    layer_overhead_s: float = 0.0     # per layer and step: launches and small kernels
    step_overhead_s: float = 2e-3     # per step on the CPU: scheduling, input prep, sampling
    tp_step_overhead_s: float = 0.0   # per step and extra TP rank: broadcasting the step to workers, sync
    per_seq_overhead_s: float = 0.0   # per sequence in the step: detokenise, stream, bookkeeping
    per_token_overhead_s: float = 0.0  # per scheduled token: input prep and sampling that scale with tokens
    per_prefill_token_overhead_s: float = 0.0  # extra per prompt token of a prefill: v0's per-token Python
    # input preparation (positions, slot mappings built as lists in ``ModelRunner._prepare_model_input``)
    prefill_layer_overhead_s: float = 0.0  # per layer in a step holding a prefill: prefill runs eagerly
    # (vLLM captures CUDA graphs for decode batches only), so its kernels are launched one by one
    api_server_request_s: float = 0.0  # serial API-server work per request before the engine sees it
    # (HTTP parsing, tokenisation on the server's one event loop; :mod:`servesim.sim.api_server`)
    # KV blocks copied to/from CPU on swap preemption (vLLM v0): block-by-block cudaMemcpyAsync over
    # PCIe 5 x16 (64 GB/s nominal); prior of 25 GB/s effective, not yet measured.
    swap_bandwidth_bytes_per_s: float = 25e9

    def __post_init__(self) -> None:
        for name in ("eff_bw", "eff_mm", "eff_attn_prefill", "eff_attn_decode"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.5:
                raise ValueError(f"coefficient {name}={value} must be a fraction of peak in (0, 1.5]")
        for f in fields(self):
            if f.name.endswith("_s") and getattr(self, f.name) < 0:
                raise ValueError(f"coefficient {f.name} must be >= 0 seconds")


@dataclass(frozen=True)
class MemoryCoefficients:
    """Terms of the KV-capacity memory model (see :mod:`servesim.sim.memory` for the formula).

    Fitted per engine version on real vLLM start-up records (``calibrate/kv_capacity.py``,
    ``docs/memory.md``).  Invariant: every term is >= 0 except ``weight_overhead_bytes``
    (a fit may find the parameter count a little high).
    """

    # Memory outside PyTorch's allocator that the profiling run adds (cuBLAS/attention workspaces);
    # at TP > 1 also NCCL communicator and custom all-reduce buffers: tp_bytes + per_rank * tp.
    non_torch_bytes: float = 0.26e9
    non_torch_tp_bytes: float = 2.15e9
    non_torch_per_rank_bytes: float = 0.03e9
    # Forward peak of the dummy batch: live [tokens, hidden] and [tokens, intermediate/tp] tensors
    # (counts of tensors in the activation dtype).
    activation_tensors_hidden: float = 4.0
    activation_tensors_intermediate: float = 3.0
    # Dummy sampler run on min(max_num_seqs, tokens) rows of logits: fp32/int64 working set per
    # (row, vocab entry), besides the logits themselves in the activation dtype.
    sampler_bytes_per_logit: float = 12.5
    # 1 where fused-MoE workspaces persist through the whole profile run (vLLM 0.17+ workspace
    # manager: they add to the peak), 0 where they are freed after the forward pass.
    moe_workspace_in_peak: float = 1.0
    # Memory the weight load takes beyond the parameters (rotary caches, allocator rounding).
    weight_overhead_bytes: float = 0.0
    # CUDA-graph memory deducted from the KV budget: 0 where vLLM does not deduct it (v0; v1 up
    # to 0.19 unless VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1), graphs then live in 1 - util.
    cuda_graph_bytes: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name != "weight_overhead_bytes" and getattr(self, f.name) < 0:
                raise ValueError(f"memory term {f.name}={getattr(self, f.name)} must be >= 0")


@dataclass(frozen=True)
class PowerCoefficients:
    """Power draw of one GPU by phase (W); Splitwise's H100 constants as the prior."""

    idle_w: float = 75.0
    prefill_w: float = 700.0
    decode_w: float = 380.0


@dataclass(frozen=True)
class Profile:
    """Everything a simulated replica needs beyond the model and GPU specs."""

    name: str
    engine: str
    engine_version: str
    gpu: str
    step: StepCoefficients = field(default_factory=StepCoefficients)
    memory: MemoryCoefficients = field(default_factory=MemoryCoefficients)
    power: PowerCoefficients = field(default_factory=PowerCoefficients)
    uncertainty: dict[str, float] = field(default_factory=dict)
    provenance: list[dict[str, Any]] = field(default_factory=list)
    notes: str = ""
    source_path: str = ""
    # The deployment a profile was fitted on (server settings its runs were replayed under, e.g.
    # ``num_scheduler_steps``): engine defaults when a configuration does not set them.
    deployment: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source_path: str = "") -> Profile:
        """Build from the JSON schema: ``coefficients``/``memory``/``power`` map names to
        ``{"value": v, "stderr": s, "source": ...}`` or to a bare number."""
        def values(section: str, kind: type) -> Any:
            raw = data.get(section, {})
            known = {f.name for f in fields(kind)}
            unknown = set(raw) - known
            if section == "memory" and "activation_bytes_per_token_hidden" in unknown:
                raise ValueError(f"profile {source_path or data.get('name')}: its memory section has the terms of the "
                                 "old KV-capacity model (activation_bytes_per_token_hidden); rewrite it with "
                                 "python -m servesim.calibrate.kv_capacity --write-profiles (docs/memory.md)")
            if unknown:
                raise ValueError(f"profile {source_path or data.get('name')}: unknown {section} "
                                 f"{sorted(unknown)}; valid: {sorted(known)}")
            return kind(**{k: (v["value"] if isinstance(v, dict) else v) for k, v in raw.items()})

        uncertainty = {}
        for section in ("coefficients", "memory", "power"):
            for k, v in data.get(section, {}).items():
                if isinstance(v, dict) and v.get("stderr") is not None:
                    uncertainty[k] = float(v["stderr"])
        try:
            return cls(name=data["name"], engine=data["engine"], engine_version=data.get("engine_version", ""),
                       gpu=data["gpu"], step=values("coefficients", StepCoefficients),
                       memory=values("memory", MemoryCoefficients), power=values("power", PowerCoefficients),
                       uncertainty=uncertainty, provenance=list(data.get("provenance", [])),
                       notes=data.get("notes", ""), source_path=source_path,
                       deployment=dict(data.get("deployment") or {}))
        except KeyError as exc:
            raise ValueError(f"profile {source_path}: missing required key {exc}") from None


def load_profile(path: str | Path) -> Profile:
    """Read a profile JSON file; errors name the file and the problem."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"profile {path} is a directory; expected a profile JSON file")
    if not path.exists() and path.suffix != ".json":
        shipped = shipped_profiles()
        if str(path) in shipped:   # a shipped profile's name (``servesim profiles`` lists them)
            path = shipped[str(path)]
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ValueError(f"profile file not found: {path} (nor a shipped profile name: "
                         f"{sorted(shipped_profiles())})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"profile {path} is not a readable JSON file: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"profile {path}: expected a JSON object, got {type(data).__name__}")
    try:
        return Profile.from_dict(data, source_path=str(path))
    except (KeyError, TypeError, AttributeError) as exc:  # a field of the wrong shape
        raise ValueError(f"profile {path}: malformed ({type(exc).__name__}: {exc}); see docs/profile-schema.md") from None


def shipped_profiles_dir() -> Path:
    """The folder of the shipped profiles: ``sim/profiles/``, package data of the package that reads
    them (installed with it; in a source checkout, the repository's folder, which the calibrate
    ``--write-profiles`` commands rewrite)."""
    return Path(str(resources.files("servesim.sim") / "profiles"))


def shipped_profiles() -> dict[str, Path]:
    """Shipped profiles by name, from :func:`shipped_profiles_dir`: each file under its stem (the
    engine defaults are ``<gpu>_<engine>``; deployments ``<gpu>_<engine><version>_<deployment>``)
    and under the ``aliases`` it lists."""
    out: dict[str, Path] = {}
    for path in sorted(shipped_profiles_dir().glob("*.json"), key=str):
        out[path.stem] = path
        try:
            aliases = json.loads(path.read_text()).get("aliases", [])
        except (json.JSONDecodeError, OSError):
            aliases = []
        for alias in aliases:
            out.setdefault(str(alias), path)
    return out


def default_profile(gpu: str, engine: str) -> Profile:
    """The shipped profile for ``gpu`` and ``engine``.

    When the GPU has no measured profile, the H100 SXM profile of the same engine is used: its
    coefficients are efficiencies and overheads, which transfer across GPUs through the GPU's own
    peak numbers (an assumption the caller is warned about via ``Profile.notes``).
    """
    profiles = shipped_profiles()
    key = f"{gpu}_{engine}"
    if key in profiles:
        return load_profile(profiles[key])
    fallback = f"h100-sxm_{engine}"
    if fallback not in profiles:
        raise ValueError(f"no shipped profile for engine {engine!r}; shipped: {sorted(profiles)}")
    base = load_profile(profiles[fallback])
    from dataclasses import replace
    return replace(base, notes=f"{base.notes} [transferred from h100-sxm to {gpu}: efficiencies assumed equal]")
