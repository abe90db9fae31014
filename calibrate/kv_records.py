"""Real vLLM start-up records of KV capacity (``kv_capacity/vllm_kv_capacity_records.csv``), made usable.

Each CSV row is what one real vLLM start-up reported (``# GPU blocks``, ``GPU KV cache size``,
available KV memory and, where shown, the memory profile: weights, activation peak, non-torch,
CUDA graphs) with its configuration.  :func:`load_records` turns every row into a
:class:`KvRecord`: the configuration resolved to a catalogue :class:`ModelSpec`, a GPU, a weight
dtype and the vLLM defaults the row leaves blank, or a ``skip_reason`` saying why it cannot be
predicted (multi-head latent attention, multimodal encoders, pipeline parallelism, ...).

Engine versions are grouped into **eras**, the spans in which vLLM's profiling did not change in a
way the records show (:class:`MemoryEra`): the dummy sampler's working set dropped from ~36 to ~13
bytes per logit between 0.16 and 0.17 (Qwen3-14B: activation 5.64 -> 2.23 GiB, same model and
arguments), and v0 (0.2-0.6) counted memory its own way.
"""
from __future__ import annotations

import csv
import enum
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ..sim.gpus import GPUSpec, get_gpu
from ..sim.model_catalog import get_model
from ..sim.models import ModelSpec

RECORDS_FILE = Path("kv_capacity") / "vllm_kv_capacity_records.csv"
_GIB = 2**30


class MemoryEra(enum.Enum):
    """Spans of vLLM versions with one profiling behaviour (see the module docstring)."""

    V1_017 = "v1-0.17+"        # vLLM 0.17-0.19: sampler warm-up ~13 B/logit (Triton top-k/top-p, fp32 copies)
    V1_010 = "v1-0.10-0.16"    # vLLM 0.10-0.16: sampler working set ~36 B/logit
    V0 = "v0"                  # vLLM 0.5-0.6 (v0 worker: determine_num_available_blocks)


# Record model -> (catalogue architecture, weight dtype or None for the checkpoint's), or a skip reason.
_MODELS: dict[str, tuple[str, str | None] | str] = {
    "codellama/CodeLlama-7b-hf": ("codellama-7b", None),
    "google/gemma-2-27b-it": ("gemma-2-27b", None),
    "google/gemma-2-2b-it": ("gemma-2-2b", None),
    "google/gemma-2-9b-it": ("gemma-2-9b", None),
    "google/gemma-7b": ("gemma-7b", None),
    "ibm-granite/granite-3.1-2b-instruct": ("granite-3.1-2b", None),
    "ibm-granite/granite-3.1-8b-instruct": ("granite-3.1-8b", None),
    # Granite 3.3-8B reports the same weights (15.25 GiB) and blocks as 3.1-8B: the same architecture.
    "ibm-granite/granite-3.3-8b-instruct": ("granite-3.1-8b", None),
    "meta-llama/Llama-3.1-8B-Instruct": ("llama-3.1-8b", None),
    "meta-llama/Meta-Llama-3-8B": ("llama-3-8b", None),
    "meta-llama/Llama-3.1-70B": ("llama-3.1-70b", None),
    "meta-llama/Llama-2-7b (hf)": ("llama-2-7b", None),
    "meta-llama/Llama-2-70b (hf)": ("llama-2-70b", None),
    # Llama 3.3 70B has the Llama 3.1 70B architecture; the RedHatAI checkpoints quantize the
    # linear layers (fp8 dynamic or int8 w8a8), embeddings and LM head stay bf16.
    "RedHatAI/Llama-3.3-70B-Instruct-fp8-dynamic": ("llama-3.1-70b", "fp8"),
    "RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic": ("llama-3.1-70b", "fp8"),
    "redhatai/Llama-3.3-70B-Instruct-quantized.w8a8": ("llama-3.1-70b", "int8"),
    "RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w4a16": ("llama-3.1-8b", "int4"),
    "RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w8a8": ("llama-3.1-8b", "int8"),
    "RedHatAI/Qwen2.5-7B-Instruct-fp8-dynamic": ("qwen2.5-7b", "fp8"),
    "RedHatAI/Qwen2.5-7B-Instruct-quantized.w8a8": ("qwen2.5-7b", "int8"),
    "Qwen/Qwen2.5-7B-Instruct": ("qwen2.5-7b", None),
    "Qwen/Qwen2.5-72B-Instruct": ("qwen2.5-72b", None),
    # Kimi-Dev-72B is a Qwen2.5-72B fine-tune (same config.json shape; same weights, 67.8 GiB at TP2).
    "moonshotai/Kimi-Dev-72B": ("qwen2.5-72b", None),
    "Qwen/Qwen3-0.6B": ("qwen3-0.6b", None),
    "Qwen/Qwen3-8B": ("qwen3-8b", None),
    "Qwen/Qwen3-14B": ("qwen3-14b", None),
    "Qwen/Qwen3-32B": ("qwen3-32b", None),
    "Qwen/Qwen3-30B-A3B": ("qwen3-30b-a3b", None),
    "Qwen/Qwen1.5-MoE-A2.7B": ("qwen1.5-moe-a2.7b", None),
    "microsoft/phi-2": ("phi-2", None),
    "microsoft/phi-4": ("phi-4", None),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": ("mixtral-8x7b", None),
}
_MLA = "multi-head latent attention (DeepSeek-V2/V3 family): its compressed KV cache is not a ModelSpec"
_MM = "multimodal: vision-encoder weights and encoder-cache profiling are not modelled"
_SKIP_MODELS: dict[str, str] = {
    "deepseek-ai/DeepSeek-V2-Lite-Chat": _MLA, "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct": _MLA,
    "deepseek-ai/DeepSeek-R1": _MLA, "moonshotai/Kimi-VL-A3B-Instruct": _MLA + "; also " + _MM,
    "google/gemma-3-4b-it": _MM, "google/gemma-3-12b-it": _MM, "google/gemma-3-27b-it": _MM,
    "ibm-granite/granite-vision-3.3-2b": _MM, "mistralai/Mistral-Small-3.1-24B-Instruct-2503": _MM,
    "mistralai/Mistral-Small-3.2-24B-Instruct-2506": _MM,
    "RedHatAI/Mistral-Small-3.1-24B-Instruct-2503-quantized.w8a8": _MM,
    "Qwen/Qwen2.5-VL-7B-Instruct (+ LoRA adapter)": _MM + "; LoRA buffers",
    "meta-llama/Llama-4-Scout-17B-16E-Instruct": _MM + "; chunked local attention",
    "openai/gpt-oss-20b": "mxfp4 MoE weights with attention sinks: weight format not modelled",
    "openai/gpt-oss-120b": "mxfp4 MoE weights with attention sinks: weight format not modelled",
    "google/gemma-4-26B-A4B": "Gemma 4 architecture not in the catalogue (config facts not verified)",
    "nvidia/Gemma-4-31B-IT-NVFP4": "Gemma 4 architecture / NVFP4 weights not in the catalogue",
    "unsloth/Phi-4 (local /opt/tiger/test0/Phi-4)": "bitsandbytes 4-bit weights and LoRA buffers",
    "Qwen/Qwen3-235B-A22B-FP8": "vLLM version not stated (memory terms are per version) and a KV connector",
    "neuralmagic/Meta-Llama-3.1-70B-Instruct-quantized.w8a8": "GPU not stated: total memory unknown",
}
_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass(frozen=True)
class KvRecord:
    """One start-up record: the configuration, what vLLM reported, and whether it can be predicted.

    ``reported_tokens`` is the KV capacity in tokens (``GPU KV cache size``, or blocks x block size,
    or available KV memory / bytes per token when only that is logged); ``None`` for a record that
    only carries memory-profile components.  Measured components are GiB as logged (None if absent).
    """

    index: int
    source: str
    model_id: str
    version: str
    era: MemoryEra | None
    model: ModelSpec | None
    gpu: GPUSpec | None
    weight_dtype: str
    kv_cache_dtype: str
    tp: int
    gpu_memory_utilization: float
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    reported_tokens: int | None
    available_kv_gib: float | None
    weights_gib: float | None
    activation_peak_gib: float | None
    non_torch_gib: float | None
    cuda_graph_gib: float | None
    total_memory_gib: float | None
    confidence: str
    assumptions: tuple[str, ...]
    skip_reason: str | None = None

    @property
    def usable(self) -> bool:
        return self.skip_reason is None

    @property
    def spec(self) -> ModelSpec:
        """The catalogue model of a usable record (a skipped one may have none: ValueError)."""
        if self.model is None:
            raise ValueError(f"KV record {self.index} ({self.model_id}) has no catalogue model: {self.skip_reason}")
        return self.model

    @property
    def memory_era(self) -> MemoryEra:
        """The memory-profiler era of a usable record (a skipped one may have none: ValueError)."""
        if self.era is None:
            raise ValueError(f"KV record {self.index} ({self.version}) has no known era: {self.skip_reason}")
        return self.era

    @property
    def failed_to_fit(self) -> bool:
        """vLLM reported a negative KV budget ("No available memory for the cache blocks")."""
        return self.available_kv_gib is not None and self.available_kv_gib <= 0


def _lead_number(text: str) -> float | None:
    m = re.match(r"\s*(-?[\d.]+)", text or "")
    return float(m.group(1)) if m and m.group(1) not in ("", ".", "-") else None


def _era(version: str, engine: str) -> MemoryEra | None:
    m = re.search(r"(\d+)\.(\d+)", version)
    if "not stated (~0.10" in version:
        return MemoryEra.V1_010
    if m is None:
        return None
    major, minor = int(m.group(1)), int(m.group(2))
    if major != 0:
        return None
    if engine.startswith("v0") and 5 <= minor <= 6:
        return MemoryEra.V0
    if engine.startswith("v1") and minor >= 17:
        return MemoryEra.V1_017
    if engine.startswith("v1") and 10 <= minor <= 16:
        return MemoryEra.V1_010
    return None


def _gpu(text: str) -> GPUSpec | None:
    t = text.lower()
    if "h200" in t:
        return get_gpu("h200")
    if "a100" in t and "80" in t:
        return get_gpu("a100-80gb")
    if "h100" in t and "nvl" not in t and "pcie" not in t:
        return get_gpu("h100-sxm")
    return None


def _row(index: int, row: dict[str, str]) -> KvRecord:
    assumptions: list[str] = []
    model_id, engine, version = row["model"].strip(), row["engine"].strip(), row["vllm_version"].strip()
    era, gpu = _era(version, engine), _gpu(row["gpu"])
    resolved = _MODELS.get(model_id)
    skip = _SKIP_MODELS.get(model_id) if resolved is None else None
    if resolved is None and skip is None:
        skip = "model not in the catalogue"
    model = get_model(resolved[0]) if isinstance(resolved, tuple) else None
    dtype = _DTYPES.get(row["dtype"].split()[0].strip(), "bf16")
    weight_dtype = (resolved[1] if isinstance(resolved, tuple) and resolved[1] else None) or dtype
    if row["quantization"].startswith("fp8") and weight_dtype in ("bf16", "fp16"):
        weight_dtype = "fp8"  # online fp8 quantization (--quantization fp8)
    kv = row["kv_cache_dtype"].split()[0].strip()
    kv_dtype = "fp8" if kv == "fp8" else ("fp16" if weight_dtype in ("int4", "int8") and dtype == "fp16"
                                          else ("bf16" if weight_dtype in ("fp8", "int8", "int4") else dtype))
    tp, pp = int(_lead_number(row["tp"]) or 1), int(_lead_number(row["pp"]) or 1)
    util = _lead_number(row["gpu_memory_utilization"])
    if util is None:
        util = 0.9
        assumptions.append("gpu_memory_utilization 0.9 (vLLM default; not in the record)")
    max_len = int(_lead_number(row["max_model_len"]) or (model.max_position_embeddings if model else 2048))
    v0 = era is MemoryEra.V0
    seqs = _lead_number(row["max_num_seqs"])
    if seqs is None:
        seqs = 256 if v0 else 1024
        assumptions.append(f"max_num_seqs {int(seqs)} (default of the version; not in the record)")
    tokens = _lead_number(row["max_num_batched_tokens"])
    if tokens is None:
        tokens = max(max_len, 2048) if v0 else 8192
        assumptions.append(f"max_num_batched_tokens {int(tokens)} (default of the version; not in the record)")
    block = int(_lead_number(row["block_size"]) or 16)
    tokens_reported = _lead_number(row["kv_cache_tokens"])
    blocks = _lead_number(row["num_gpu_blocks"])
    avail = _lead_number(row["available_kv_cache_gib"])
    reported = int(tokens_reported) if tokens_reported else (int(blocks) * block if blocks else None)
    if reported is None and avail is not None and avail > 0 and model is not None:
        per_block = model.kv_bytes_per_token(kv_dtype, tp) * block
        reported = int(avail * _GIB // per_block) * block
        assumptions.append("KV tokens derived from the logged available KV memory (0.01 GiB precision)")
    if skip is None and pp > 1:
        skip = "pipeline parallelism (PP > 1) is not simulated"
    if skip is None and era is None:
        skip = (f"vLLM version {version!r} / engine {engine!r} outside the fitted eras (0.2.x predates the "
                "0.5/0.6 v0 worker; 0.7-0.9 have no other record to fit their profiling on)")
    if skip is None and gpu is None:
        skip = f"GPU {row['gpu']!r} not identified: total memory unknown"
    if skip is None and "lora" in (row["notes"] + row["confidence"]).lower():
        skip = "LoRA enabled: adapter buffers are not modelled"
    if skip is None and "lm_eval" in row["gpu_memory_utilization"]:
        skip = ("LLM-class run (lm_eval) whose max_num_seqs/max_num_batched_tokens are not recorded: the logged "
                "0.46 GiB of non-weight memory shows a much smaller profiling batch than the defaults")
    if skip is None and reported is None and not (avail is not None and avail <= 0) and all(
            _lead_number(row[k]) is None for k in ("activation_peak_gib", "non_torch_gib")):
        skip = "neither a KV capacity nor a memory profile in the record"
    return KvRecord(
        index=index, source=row["source_url_or_repo_path"], model_id=model_id, version=version, era=era,
        model=model, gpu=gpu, weight_dtype=weight_dtype, kv_cache_dtype=kv_dtype, tp=tp,
        gpu_memory_utilization=float(util), max_model_len=max_len, max_num_seqs=int(seqs),
        max_num_batched_tokens=int(tokens), block_size=block, reported_tokens=reported, available_kv_gib=avail,
        weights_gib=_lead_number(row["weights_gib"]), activation_peak_gib=_lead_number(row["activation_peak_gib"]),
        non_torch_gib=_lead_number(row["non_torch_gib"]), cuda_graph_gib=_lead_number(row["cuda_graph_gib"]),
        total_memory_gib=_lead_number(row["gpu_memory_gib_reported"]), confidence=row["confidence"].split(" (")[0],
        assumptions=tuple(assumptions), skip_reason=skip)


def load_records(path: str | Path) -> list[KvRecord]:
    """Every row of the records CSV as a :class:`KvRecord` (skipped rows carry their reason)."""
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise ValueError(f"KV-capacity records not found: {path}") from None
    missing = {"model", "vllm_version", "tp", "num_gpu_blocks", "kv_cache_tokens"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: not a KV-capacity records file (missing columns {sorted(missing)})")
    return [_row(i, row) for i, row in enumerate(rows)]


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


__all__ = ["KvRecord", "MemoryEra", "RECORDS_FILE", "file_digest", "load_records"]
