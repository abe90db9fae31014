"""Kernel tables of other GPUs from the ``aiconfigurator-core`` package, when it is installed.

The H100 tables in ``shared/data/h100/aiconfigurator_vllm_0.24`` are a copy of what NVIDIA's
``aiconfigurator-core`` wheel bundles for ``h100_sxm``; the wheel also carries H200, B200, A100,
L40S and other systems, laid out as ``aiconfigurator_core/systems/<system>.yaml`` and
``systems/data/<system>/<op>/<framework>/<version>/<name>_perf.parquet``.  :func:`stage_tables`
finds a system's vLLM tables there (newest vLLM version that has all of GEMM, both attention
tables and the custom all-reduce; newest NCCL table) and links them into a folder under the flat
names :mod:`servesim.calibrate.kernel_tables` reads, so the same fits run for that GPU.  Nothing
requires the package: without it a clear error says how to get it (``pip install
aiconfigurator-core``, about 80 MB).
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

# servesim GPU name -> aiconfigurator system name
SYSTEMS = {"h100-sxm": "h100_sxm", "h200": "h200_sxm", "b200": "b200_sxm", "a100-80gb": "a100_sxm",
           "a100-40gb": "a100_sxm", "l40s": "l40s", "h100-pcie": "h100_pcie"}
NEEDED = {("gemm", "gemm_perf"), ("attention", "context_attention_perf"),
          ("attention", "generation_attention_perf"), ("comm", "custom_allreduce_perf")}


def systems_dir() -> Path:
    spec = importlib.util.find_spec("aiconfigurator_core")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the aiconfigurator-core package is not installed: `pip install aiconfigurator-core` "
                         "(optional; it bundles kernel tables for H200, B200, A100, L40S, ...)")
    return Path(list(spec.submodule_search_locations)[0]) / "systems"


def _versions(root: Path, op: str, framework: str, table: str) -> list[str]:
    base = root / op / framework
    found = [d.name for d in base.iterdir() if (d / f"{table}.parquet").is_file()] if base.is_dir() else []
    return sorted(found, key=lambda v: [int(x) if x.isdigit() else x for x in v.replace("-", ".").split(".")])


def stage_tables(gpu: str, out_dir: str | Path, vllm_version: str | None = None) -> Path:
    """Copy ``gpu``'s vLLM kernel tables into ``out_dir`` under kernel_tables' file names."""
    if gpu not in SYSTEMS:
        raise ValueError(f"no aiconfigurator system known for GPU {gpu!r}; known: {sorted(SYSTEMS)}")
    systems = systems_dir()
    system = SYSTEMS[gpu]
    data = systems / "data" / system
    if not data.is_dir():
        raise ValueError(f"aiconfigurator-core at {systems.parent} has no tables for {system}")
    common = None
    for op, table in NEEDED:
        versions = set(_versions(data, op, "vllm", table))
        common = versions if common is None else common & versions
    if vllm_version is None:
        if not common:
            raise ValueError(f"{system}: no vLLM version with GEMM, attention and all-reduce tables in {data}")
        vllm_version = sorted(common, key=lambda v: [int(x) if x.isdigit() else x for x in v.split(".")])[-1]
    elif vllm_version not in (common or set()):
        raise ValueError(f"{system}: vLLM {vllm_version} tables incomplete; complete versions: {sorted(common or [])}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for op, table in NEEDED:
        shutil.copyfile(data / op / "vllm" / vllm_version / f"{table}.parquet",
                        out / f"{op}_vllm_{vllm_version}_{table}.parquet")
    nccl = _versions(data, "comm", "nccl", "nccl_perf")
    if nccl:
        shutil.copyfile(data / "comm" / "nccl" / nccl[-1] / "nccl_perf.parquet", out / f"comm_nccl_{nccl[-1]}_nccl_perf.parquet")
    shutil.copyfile(systems / f"{system}.yaml", out / f"{system}.yaml")
    return out
