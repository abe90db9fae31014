"""Profiles: the fitted coefficients that turn model and GPU features into step times.

A profile is a JSON file (schema in ``docs/profile-schema.md``) with the engine it describes
(``vllm-v1`` or ``vllm-v0`` and the version measured), the GPU, and for every coefficient a value,
an uncertainty and where it came from.  Profiles are produced by :mod:`servesim.calibrate` and the
shipped defaults live in ``calibrate/profiles/``.
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
    """Terms of the KV-capacity memory model (see :mod:`servesim.sim.memory`)."""

    non_torch_bytes: float = 1.0e9            # CUDA context, NCCL buffers, allocator slack
    activation_bytes_per_token_hidden: float = 18.0  # peak activations: bytes per token per hidden unit
    cuda_graph_bytes: float = 0.5e9           # captured graphs (outside the profiled peak in v0)


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
    def from_dict(cls, data: dict[str, Any], source_path: str = "") -> "Profile":
        """Build from the JSON schema: ``coefficients``/``memory``/``power`` map names to
        ``{"value": v, "stderr": s, "source": ...}`` or to a bare number."""
        def values(section: str, kind: type) -> Any:
            raw = data.get(section, {})
            known = {f.name for f in fields(kind)}
            unknown = set(raw) - known
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
    if not path.exists() and path.suffix != ".json":
        shipped = shipped_profiles()
        if str(path) in shipped:   # a shipped profile's name (``servesim profiles`` lists them)
            path = shipped[str(path)]
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"profile file not found: {path} (nor a shipped profile name: "
                         f"{sorted(shipped_profiles())})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"profile {path} is not valid JSON: {exc}") from None
    return Profile.from_dict(data, source_path=str(path))


def shipped_profiles() -> dict[str, Path]:
    """Shipped profiles by name, from ``calibrate/profiles``: each file under its stem (the engine
    defaults are ``<gpu>_<engine>``; deployments ``<gpu>_<engine><version>_<deployment>``) and
    under the ``aliases`` it lists."""
    folder = resources.files("servesim.calibrate") / "profiles"
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir(), key=str):
        if not str(p).endswith(".json"):
            continue
        path = Path(str(p))
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
