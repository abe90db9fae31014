"""GPU catalogue: datasheet facts, invariants, name resolution and errors."""
from __future__ import annotations

from dataclasses import replace

import pytest

from servesim.sim.gpus import GPU_CATALOG, INTERCONNECTS, GPUSpec, get_gpu, list_gpus

REQUIRED = {"h100-sxm", "h100-nvl", "h100-pcie", "h200", "a100-40gb", "a100-80gb", "b200", "l40s"}


def test_catalogue_covers_the_required_gpus() -> None:
    assert REQUIRED <= set(GPU_CATALOG)
    assert list_gpus() == sorted(GPU_CATALOG)


def test_h100_sxm_facts() -> None:
    gpu = get_gpu("h100-sxm")
    # CUDA total as vLLM logs it (total_memory=79.19GiB in the 59 real vLLM 0.19 start-ups), not nvidia-smi 81559 MiB
    assert gpu.memory_bytes == 81090 * 2**20 and round(gpu.memory_bytes / 2**30, 2) == 79.19
    assert gpu.hbm_bandwidth_bytes_per_s == 3.35e12
    assert gpu.bf16_flops == 989e12 and gpu.fp8_flops == 1979e12
    assert (gpu.tdp_w, gpu.idle_w) == (700, 75)              # Splitwise idle power
    assert gpu.interconnect == "nvlink" and gpu.interconnect_bandwidth_bytes_per_s == 450e9


def test_flops_by_dtype() -> None:
    gpu = get_gpu("h100-sxm")
    assert gpu.flops("bf16") == gpu.flops("fp16") == 989e12
    assert gpu.flops("FP8") == gpu.flops("int8") == 1979e12
    a100 = get_gpu("a100-80gb")
    assert a100.flops("fp8") == a100.flops("bf16") == 312e12  # no fp8 tensor cores on Ampere


@pytest.mark.parametrize("name, gpu", sorted(GPU_CATALOG.items()))
def test_entries_are_consistent(name: str, gpu: GPUSpec) -> None:
    assert gpu.name == name
    assert 0 < gpu.idle_w < gpu.tdp_w
    assert gpu.fp8_flops >= gpu.bf16_flops
    assert gpu.interconnect in INTERCONNECTS
    assert gpu.source
    assert get_gpu(name.upper()) is gpu


def test_ordering_between_parts() -> None:
    """Direction checks between generations: more memory and bandwidth on newer parts."""
    h100, h200, b200 = get_gpu("h100-sxm"), get_gpu("h200"), get_gpu("b200")
    assert h100.memory_bytes < h200.memory_bytes < b200.memory_bytes
    assert h100.hbm_bandwidth_bytes_per_s < h200.hbm_bandwidth_bytes_per_s < b200.hbm_bandwidth_bytes_per_s
    assert get_gpu("a100-40gb").memory_bytes < get_gpu("a100-80gb").memory_bytes
    assert get_gpu("h100-pcie").hbm_bandwidth_bytes_per_s < h100.hbm_bandwidth_bytes_per_s
    assert get_gpu("l40s").interconnect == get_gpu("h100-pcie").interconnect == "pcie"


@pytest.mark.parametrize("alias, canonical", [
    ("h100", "h100-sxm"), ("H100-SXM", "h100-sxm"), ("h100-sxm5", "h100-sxm"), ("h100_sxm", "h100-sxm"),
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("h100-80gb", "h100-sxm"),
    ("NVIDIA H100 NVL", "h100-nvl"), ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H200", "h200"),
    ("NVIDIA A100-SXM4-80GB", "a100-80gb"), ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
    ("NVIDIA B200", "b200"), ("NVIDIA L40S", "l40s"),
])
def test_alias_resolution(alias: str, canonical: str) -> None:
    assert get_gpu(alias) is GPU_CATALOG[canonical]


def test_unknown_gpu_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown GPU 'tpu-v5'") as info:
        get_gpu("tpu-v5")
    assert "h100-sxm" in str(info.value) and "l40s" in str(info.value)


@pytest.mark.parametrize("change, message", [
    ({"memory_bytes": 0}, "memory_bytes"), ({"idle_w": 800}, "idle_w"),
    ({"fp8_flops": 1e12}, "fp8_flops"), ({"interconnect": "infiniband"}, "interconnect"),
])
def test_invalid_spec_is_rejected(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(get_gpu("h100-sxm"), **change)
