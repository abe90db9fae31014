"""Kernel tables -> the kernel-level coefficients of the step-cost model, and the default profiles.

Reads the aiconfigurator kernel tables (``*_perf.parquet``: latencies in ms measured on "NVIDIA
H100 80GB HBM3" under vLLM 0.24.0) and fits the efficiencies of :mod:`servesim.sim.cost_model`:

* GEMM: ``max(bytes / (BW*eff_bw), 2*m*n*k / (FLOPS*eff_mm)) + launch``,
  ``bytes = (m*k + k*n)*in_bytes + m*n*2`` (roofline, Williams et al. 2009);
* prefill attention: ``4*b*H*d*(s*(s+1)/2 + s*extra_keys) / (FLOPS*eff) + launch`` (causal pairs;
  ``extra_keys`` is the tile padding and per-query-block prologue that pure FLOPs miss);
* decode attention: ``b*ctx*2*kv_heads*d*2 / (BW*eff) + b*per_seq + launch``, ``ctx = step + 1``;
* all-reduce (vLLM custom, CUDA-graph backend): ``latency + message_bytes / bandwidth``.

Every fit is least squares on ``log(predicted) - log(measured)`` (relative error, each row equal
weight) with positive parameters optimised as logs.  ``stderr`` is a cluster bootstrap over shapes
(whole (n, k) GEMM shapes, head configurations, TP sizes are resampled: rows of one shape share
their error, so a row bootstrap would be falsely precise); the Jacobian stderr is reported beside it.

CLI: ``python -m servesim.calibrate.kernel_tables DATA_DIR -o OUT.json --engine vllm-v1``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy.optimize import OptimizeResult

from ..argtypes import add_args
from ..sim.engine_args import EngineArgs, EngineVersion
from .fitting import Coefficient, Source, bootstrap, bounded_least_squares, jacobian_stderr

TABLES = {
    "gemm": "gemm_vllm_0.24.0_gemm_perf.parquet",
    "context_attention": "attention_vllm_0.24.0_context_attention_perf.parquet",
    "generation_attention": "attention_vllm_0.24.0_generation_attention_perf.parquet",
    "custom_allreduce": "comm_vllm_0.24.0_custom_allreduce_perf.parquet",
    "nccl": "comm_nccl_2.27.3_nccl_perf.parquet",
}
HARDWARE_YAML = "h100_sxm.yaml"
# Linear-layer widths of common models (hidden, q/kv/o, MLP widths and their TP shards) present in
# the table's grid, plus vocab/TP-sized n for the LM head.  Smaller dims are norms/routers, not layers.
SERVING_DIMS = (1024, 1536, 2048, 2560, 3072, 3584, 4096, 5120, 6144, 7168, 8192, 10240, 12288, 16384)
LM_HEAD_N = (51200, 65536)
GEMMS_PER_LAYER = 4  # qkv, o, gate_up, down: what layer_overhead_s pays per layer besides attention
ENGINE_VERSIONS = {EngineVersion.V1.value: "0.24.0", EngineVersion.V0.value: "0.5.4"}
# CPU-side priors (no kernel table measures them): (value, stderr) in seconds.  v1 (0.8+): CUDA
# graphs, async output, a few ms per step; v0 0.5.x: Python scheduling and detokenisation, known to
# be CPU-bound at large batch.  The "calibration" issue refits them end to end.
CPU_PRIORS = {
    # swap_bandwidth: KV blocks copied block by block over PCIe 5 x16 (64 GB/s nominal), 25 GB/s assumed.
    # tp_step_overhead: v1 broadcasts each step to its workers through shared memory (small); v0's
    # multiprocessing/Ray executors pickle the step for every worker (larger).
    "vllm-v1": {"step_overhead_s": (1.5e-3, 1.0e-3), "tp_step_overhead_s": (2e-4, 2e-4),
                "per_seq_overhead_s": (5e-6, 5e-6), "per_token_overhead_s": (0.0, 2e-7),
                "per_prefill_token_overhead_s": (0.0, 1e-6), "prefill_layer_overhead_s": (0.0, 1e-4),
                "api_server_request_s": (0.0, 1e-3), "swap_bandwidth_bytes_per_s": (25e9, 10e9)},
    "vllm-v0": {"step_overhead_s": (4e-3, 2e-3), "tp_step_overhead_s": (1e-3, 1e-3),
                "per_seq_overhead_s": (4e-5, 3e-5), "per_token_overhead_s": (0.0, 5e-7),
                "per_prefill_token_overhead_s": (0.0, 1e-6), "prefill_layer_overhead_s": (0.0, 1e-4),
                "api_server_request_s": (0.0, 1e-3), "swap_bandwidth_bytes_per_s": (25e9, 10e9)},
}


@dataclass(frozen=True)
class Peaks:
    """Dense peaks of the GPU the tables were measured on; efficiencies are fractions of these."""

    hbm_bandwidth_bytes_per_s: float
    bf16_flops: float
    fp8_flops: float


def hardware_yaml(data_dir: str | Path) -> Path:
    """aiconfigurator's system file: ``h100_sxm.yaml``, or the one ``<system>.yaml`` in the folder."""
    path = Path(data_dir) / HARDWARE_YAML
    if not path.is_file():
        others = sorted(Path(data_dir).glob("*.yaml"))
        path = others[0] if len(others) == 1 else _path(data_dir, HARDWARE_YAML)
    return path


def read_peaks(data_dir: str | Path) -> Peaks:
    """Peaks from the system file (:func:`hardware_yaml`): ``gpu.mem_bw``, ``*_tc_flops``."""
    gpu = yaml.safe_load(hardware_yaml(data_dir).read_text())["gpu"]
    bf16 = float(gpu["bfloat16_tc_flops"])
    return Peaks(float(gpu["mem_bw"]), bf16, float(gpu.get("fp8_tc_flops", bf16)))  # A100: no fp8


# ----- latency formulas (also used to synthesise tables in the tests) ----------------------------
def gemm_latency_s(m, n, k, eff_bw, eff_mm, launch_s, *, bw, peak_flops, in_bytes=2.0, out_bytes=2.0):
    """Seconds of one ``(m x k) @ (k x n)`` GEMM: roofline plus a fixed launch/ramp time."""
    moved = (m * k + k * n) * in_bytes + m * n * out_bytes
    return np.maximum(moved / (bw * eff_bw), 2.0 * m * n * k / (peak_flops * eff_mm)) + launch_s


def context_attention_latency_s(batch, isl, num_heads, head_dim, eff_attn, extra_keys, launch_s, *, peak_flops):
    """Seconds of causal prefill attention: QK^T and PV cost 2*d FLOPs each per (query, key) pair."""
    pairs = isl * (isl + 1) / 2 + isl * extra_keys
    return 4.0 * batch * num_heads * head_dim * pairs / (peak_flops * eff_attn) + launch_s


def generation_attention_latency_s(batch, context, kv_heads, head_dim, eff_attn, per_seq_s, launch_s,
                                   *, bw, kv_bytes=2.0):
    """Seconds of decode attention: read K and V of ``context`` tokens per sequence."""
    return batch * context * 2 * kv_heads * head_dim * kv_bytes / (bw * eff_attn) + batch * per_seq_s + launch_s


def allreduce_latency_s(message_bytes, latency_s, bandwidth_bytes_per_s):
    """Seconds of one all-reduce of ``message_bytes`` (bandwidth counts message bytes, i.e. algbw)."""
    return latency_s + message_bytes / bandwidth_bytes_per_s


# ----- readers -------------------------------------------------------------------------------
def _path(data_dir: str | Path, name: str) -> Path:
    """``data_dir/name``, or the one file of the same kind under another framework/version label
    (e.g. ``gemm_*_gemm_perf.parquet`` written by ``servesim measure --backend torch-kernels``)."""
    path = Path(data_dir) / name
    if not path.is_file():
        parts = name.split("_")  # <kind>_<framework>_<version>_<rest>
        matches = sorted(Path(data_dir).glob(f"{parts[0]}_*_{'_'.join(parts[3:])}")) if len(parts) > 3 else []
        if len(matches) == 1:
            return matches[0]
        raise ValueError(f"kernel table {path} not found; DATA_DIR must hold the aiconfigurator H100 files "
                         f"{sorted(TABLES.values())} and {HARDWARE_YAML}")
    return path


def read_table(data_dir: str | Path, kind: str) -> pd.DataFrame:
    """One table as a DataFrame with ``latency_s`` (the files store ``latency`` in ms)."""
    if kind not in TABLES:
        raise ValueError(f"unknown table kind {kind!r}; valid: {sorted(TABLES)}")
    df = pd.read_parquet(_path(data_dir, TABLES[kind]))
    return df.assign(latency_s=df["latency"] * 1e-3)


def _nonempty(df: pd.DataFrame, what: str) -> pd.DataFrame:
    if df.empty:
        raise ValueError(f"no rows left after filtering {what}")
    return df.reset_index(drop=True)


def read_gemm(data_dir, kernel_source="torch.nn.functional.linear", max_m=16384) -> pd.DataFrame:
    """GEMM rows of one kernel at serving shapes: n, k in SERVING_DIMS (n also LM-head widths), m <= max_m."""
    df = read_table(data_dir, "gemm")
    if kernel_source == "torch.nn.functional.linear" and kernel_source not in set(df.kernel_source):
        # other GPUs' tables name their bf16 kernel differently: take the most common bf16 source
        bf16 = df[df.gemm_dtype == "bfloat16"]
        if len(bf16):
            kernel_source = bf16.kernel_source.value_counts().index[0]
    keep = ((df.kernel_source == kernel_source) & df.n.isin(SERVING_DIMS + LM_HEAD_N)
            & df.k.isin(SERVING_DIMS) & (df.m <= max_m))
    return _nonempty(df[keep], f"gemm kernel_source={kernel_source!r}")


def _attention_rows(data_dir, kind: str, head_dim: int, kernel_source: str) -> pd.DataFrame:
    df = read_table(data_dir, kind)
    if kernel_source not in set(df.kernel_source) and kernel_source == "vllm_flash_attn_fa3":
        # other GPUs' tables (aiconfigurator-core: B200, A100, ...) use other default kernels
        kernel_source = df.kernel_source.value_counts().index[0]
    window = df.window_size == 0 if "window_size" in df else True  # older tables have no windows
    keep = ((df.kernel_source == kernel_source) & (df.kv_cache_dtype == "bfloat16") & window
            & (df.head_dim == head_dim))
    return _nonempty(df[keep], f"{kind} kernel_source={kernel_source!r} head_dim={head_dim}")


def read_context_attention(data_dir, head_dim=128, kernel_source="vllm_flash_attn_fa3") -> pd.DataFrame:
    """Full-attention (window 0) prefill rows with a bf16 KV cache.  ``num_heads`` are query heads
    per GPU (latency does not depend on ``num_key_value_heads`` beyond a few %)."""
    return _attention_rows(data_dir, "context_attention", head_dim, kernel_source)


def read_generation_attention(data_dir, head_dim=128, kernel_source="vllm_flash_attn_fa3") -> pd.DataFrame:
    """Decode rows, full attention, bf16 KV.  ``isl`` is always 1 (the new token); ``step`` is the
    number of cached tokens (2^j - 1), so each sequence attends to ``context_tokens = step + 1``.
    Latency scales with ``num_key_value_heads``, not ``num_heads``: the kernel is KV-read bound."""
    df = _attention_rows(data_dir, "generation_attention", head_dim, kernel_source)
    return df.assign(context_tokens=df.step + 1)


def read_custom_allreduce(data_dir, backend="vllm_graph", min_bytes=4096, max_bytes=2**28) -> pd.DataFrame:
    """vLLM custom all-reduce rows.  ``message_size`` counts bf16 elements (NCCL's int8 rows of the
    same size take half the time of its half rows), so ``message_bytes = 2 * message_size``.  The
    default range is a 1-token decode of hidden 2048 up to 16k prefill tokens of hidden 8192."""
    df = read_table(data_dir, "custom_allreduce")
    df = df.assign(message_bytes=df.message_size * 2.0)
    keep = (df.backend == backend) & df.message_bytes.between(min_bytes, max_bytes)
    return _nonempty(df[keep], f"custom all-reduce backend={backend!r}")


def read_nccl_allreduce(data_dir, nccl_dtype="half", min_bytes=4096, max_bytes=2**28) -> pd.DataFrame:
    """NCCL all-reduce rows (reference only: vLLM uses its custom all-reduce for these sizes)."""
    df = read_table(data_dir, "nccl")
    df = df.assign(message_bytes=df.message_size * {"half": 2.0, "int8": 1.0}[nccl_dtype])
    keep = (df.op_name == "all_reduce") & (df.nccl_dtype == nccl_dtype) & df.message_bytes.between(min_bytes, max_bytes)
    return _nonempty(df[keep], f"nccl all_reduce dtype={nccl_dtype!r}")


# ----- fitting -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitResult:
    """A fitted formula: values, bootstrap and Jacobian stderr, residuals of ``predicted/measured - 1``."""

    name: str
    values: dict[str, float]
    stderr: dict[str, float]
    jacobian_stderr: dict[str, float]
    n_rows: int
    n_groups: int
    residuals: dict[str, Any]  # floats of the fitted formula; "cost_model_form" nests those of the cost model's form

    def report(self) -> dict:
        return {"values": _sig(self.values), "stderr": _sig(self.stderr),
                "jacobian_stderr": _sig(self.jacobian_stderr), "n_rows": self.n_rows,
                "n_groups": self.n_groups, "residuals": _sig(self.residuals),
                "loss": "least squares of log(predicted) - log(measured)"}


def _sig(d: dict, digits: int = 4) -> dict:
    return {k: _sig(v, digits) if isinstance(v, dict) else float(f"{v:.{digits}g}") for k, v in d.items()}


def residual_summary(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    rel = predicted / measured - 1.0
    return {"median_abs_rel_err": float(np.median(np.abs(rel))),
            "p90_abs_rel_err": float(np.quantile(np.abs(rel), 0.9)),
            "max_abs_rel_err": float(np.max(np.abs(rel))), "median_rel_err": float(np.median(rel))}


def fit_log(name: str, measured_s: np.ndarray, predict: Callable[..., np.ndarray], start: dict[str, float],
            groups: Sequence[Hashable] | np.ndarray | None = None, n_boot: int = 200, seed: int = 0) -> FitResult:
    """Fit positive parameters of ``predict(**params)`` to ``measured_s`` in log space.

    ``groups`` labels rows that share a shape; the bootstrap resamples whole groups (every row its
    own group when None).  ``n_boot=0`` skips it and reports the Jacobian stderr as ``stderr``.
    """
    names = list(start)
    log_measured = np.log(np.asarray(measured_s, dtype=float))

    def residuals(theta: np.ndarray) -> np.ndarray:
        return np.log(predict(**dict(zip(names, np.exp(theta))))) - log_measured

    def solve(theta0: np.ndarray, rows: np.ndarray | None = None) -> OptimizeResult:
        fun = residuals if rows is None else (lambda t: residuals(t)[rows])
        return bounded_least_squares(fun, theta0, method="trf", x_scale=1.0)

    best = solve(np.log([start[n] for n in names]))
    values = np.exp(best.x)
    # Delta method from log space; 2 * cost is the sum of squared residuals.
    jac_se = values * jacobian_stderr(best.jac, best.fun, sum_of_squares=2 * best.cost)
    codes = pd.factorize(pd.Series(list(groups)) if groups is not None else pd.RangeIndex(len(log_measured)))[0]
    members = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
    boot_se = jac_se
    if n_boot > 0:
        def refit(pick: np.ndarray) -> np.ndarray:
            return np.exp(solve(best.x, np.concatenate([members[i] for i in pick])).x)

        boot_se = np.std(bootstrap(len(members), n_boot, seed, refit), axis=0, ddof=1)
    return FitResult(name, dict(zip(names, values)), dict(zip(names, boot_se)), dict(zip(names, jac_se)),
                     len(log_measured), len(members), residual_summary(np.exp(best.fun + log_measured), measured_s))


def fit_gemm(df: pd.DataFrame, peaks: Peaks, fp8: bool = False, n_boot: int = 200) -> FitResult:
    """eff_bw, eff_mm and launch_s of GEMM rows (columns m, n, k, latency_s); fp8 uses the fp8 peak."""
    m, n, k = (df[c].to_numpy(float) for c in ("m", "n", "k"))
    flops, in_bytes = (peaks.fp8_flops, 1.0) if fp8 else (peaks.bf16_flops, 2.0)
    predict = lambda eff_bw, eff_mm, launch_s: gemm_latency_s(  # noqa: E731
        m, n, k, eff_bw, eff_mm, launch_s, bw=peaks.hbm_bandwidth_bytes_per_s, peak_flops=flops, in_bytes=in_bytes)
    return fit_log("gemm_fp8" if fp8 else "gemm_bf16", df.latency_s.to_numpy(), predict,
                   {"eff_bw": 0.8, "eff_mm": 0.7, "launch_s": 5e-6}, groups=list(zip(n, k)), n_boot=n_boot)


def fit_context_attention(df: pd.DataFrame, peaks: Peaks, n_boot: int = 200) -> FitResult:
    """eff_attn, extra_keys and launch_s of prefill-attention rows."""
    b, s, h, d = (df[c].to_numpy(float) for c in ("batch_size", "isl", "num_heads", "head_dim"))
    predict = lambda eff_attn, extra_keys, launch_s: context_attention_latency_s(  # noqa: E731
        b, s, h, d, eff_attn, extra_keys, launch_s, peak_flops=peaks.bf16_flops)
    groups = list(zip(df.num_heads, df.num_key_value_heads, df.head_dim))
    return fit_log("context_attention", df.latency_s.to_numpy(), predict,
                   {"eff_attn": 0.5, "extra_keys": 100.0, "launch_s": 1e-5}, groups=groups, n_boot=n_boot)


def fit_generation_attention(df: pd.DataFrame, peaks: Peaks, n_boot: int = 200) -> FitResult:
    """eff_attn, per_seq_s and launch_s of decode-attention rows (``context_tokens`` column)."""
    b, ctx, kv, d = (df[c].to_numpy(float) for c in ("batch_size", "context_tokens", "num_key_value_heads", "head_dim"))
    predict = lambda eff_attn, per_seq_s, launch_s: generation_attention_latency_s(  # noqa: E731
        b, ctx, kv, d, eff_attn, per_seq_s, launch_s, bw=peaks.hbm_bandwidth_bytes_per_s)
    groups = list(zip(df.num_heads, df.num_key_value_heads, df.head_dim))
    return fit_log("generation_attention", df.latency_s.to_numpy(), predict,
                   {"eff_attn": 0.6, "per_seq_s": 1e-7, "launch_s": 1e-5}, groups=groups, n_boot=n_boot)


def fit_allreduce(df: pd.DataFrame, name: str = "allreduce", n_boot: int = 200) -> FitResult:
    """latency_s and bandwidth_bytes_per_s of all-reduce rows; bootstrap groups are TP sizes."""
    size = df.message_bytes.to_numpy(float)
    predict = lambda latency_s, bandwidth_bytes_per_s: allreduce_latency_s(  # noqa: E731
        size, latency_s, bandwidth_bytes_per_s)
    return fit_log(name, df.latency_s.to_numpy(), predict, {"latency_s": 5e-6, "bandwidth_bytes_per_s": 2e11},
                   groups=df.num_gpus.to_numpy(), n_boot=n_boot)


# ----- profile assembly ----------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _coef(value: float, stderr: float, source: str, kind: Source = Source.KERNEL_TABLE) -> dict:
    return Coefficient(value, stderr, kind, source).entry(4, 2)


def fit_all(data_dir: str | Path, n_boot: int = 200) -> dict[str, FitResult]:
    """Every fit the profile uses or reports, keyed by name."""
    peaks = read_peaks(data_dir)
    fits = {"gemm_bf16": fit_gemm(read_gemm(data_dir), peaks, n_boot=n_boot)}
    try:  # report only; GPUs without fp8 (A100) have no such rows
        fits["gemm_fp8"] = fit_gemm(read_gemm(data_dir, "CutlassFP8ScaledMMLinearKernel"), peaks, fp8=True, n_boot=n_boot)
    except ValueError:
        pass
    fits |= {"context_attention": fit_context_attention(read_context_attention(data_dir), peaks, n_boot=n_boot),
            "generation_attention": fit_generation_attention(read_generation_attention(data_dir), peaks, n_boot=n_boot),
            "custom_allreduce": fit_allreduce(read_custom_allreduce(data_dir), "custom_allreduce", n_boot=n_boot),
            "nccl_allreduce": fit_allreduce(read_nccl_allreduce(data_dir), "nccl_allreduce", n_boot=0)}
    ar = read_custom_allreduce(data_dir)
    for tp in sorted(ar.num_gpus.unique()):
        fits[f"custom_allreduce_tp{tp}"] = fit_allreduce(ar[ar.num_gpus == tp], f"custom_allreduce_tp{tp}", n_boot=0)
    pa, da = read_context_attention(data_dir), read_generation_attention(data_dir)
    # Residuals of the form the cost model evaluates (extra_keys and per_seq_s dropped), on the same rows.
    v = fits["context_attention"].values
    fits["context_attention"].residuals["cost_model_form"] = residual_summary(context_attention_latency_s(
        pa.batch_size, pa.isl, pa.num_heads, pa.head_dim, v["eff_attn"], 0.0, v["launch_s"],
        peak_flops=peaks.bf16_flops).to_numpy(), pa.latency_s.to_numpy())
    v = fits["generation_attention"].values
    fits["generation_attention"].residuals["cost_model_form"] = residual_summary(generation_attention_latency_s(
        da.batch_size, da.context_tokens, da.num_key_value_heads, da.head_dim, v["eff_attn"], 0.0, v["launch_s"],
        bw=peaks.hbm_bandwidth_bytes_per_s).to_numpy(), da.latency_s.to_numpy())
    for hd in (64, 256):  # the shipped attention efficiencies are for head_dim 128; these for reference
        try:  # (not every GPU's tables have these head sizes)
            fits[f"context_attention_hd{hd}"] = fit_context_attention(
                read_context_attention(data_dir, hd), peaks, n_boot=0)
            fits[f"generation_attention_hd{hd}"] = fit_generation_attention(
                read_generation_attention(data_dir, hd), peaks, n_boot=0)
        except ValueError:
            pass
    return fits


def coefficients(fits: dict[str, FitResult], engine: str) -> dict[str, dict]:
    """StepCoefficients entries: kernel fits for GPU terms, labelled priors for CPU terms."""
    g, pa, da, ar = (fits[k] for k in ("gemm_bf16", "context_attention", "generation_attention", "custom_allreduce"))
    gemm = f"fit: {TABLES['gemm']}, torch.nn.functional.linear bf16, {g.n_rows} rows at serving shapes"
    attn = "FA3, bf16 KV, head_dim 128, window 0"
    ar_src = f"fit: {TABLES['custom_allreduce']}, vllm_graph, TP 2/4/8 jointly, {ar.n_rows} rows (per-TP in fit_report)"
    out = {
        "eff_bw": _coef(g.values["eff_bw"], g.stderr["eff_bw"], gemm),
        "eff_mm": _coef(g.values["eff_mm"], g.stderr["eff_mm"], gemm),
        "eff_attn_prefill": _coef(pa.values["eff_attn"], pa.stderr["eff_attn"], f"fit: {TABLES['context_attention']}, "
                                  f"{attn}, {pa.n_rows} rows; causal-pair (FLOPs) term"),
        "eff_attn_decode": _coef(da.values["eff_attn"], da.stderr["eff_attn"],
                                 f"fit: {TABLES['generation_attention']}, {attn}, {da.n_rows} rows; KV-bytes term"),
        "ar_latency_s": _coef(ar.values["latency_s"], ar.stderr["latency_s"], ar_src),
        "ar_bandwidth_bytes_per_s": _coef(ar.values["bandwidth_bytes_per_s"], ar.stderr["bandwidth_bytes_per_s"],
                                          ar_src + "; message bytes per second (algbw)"),
        "layer_overhead_s": _coef(GEMMS_PER_LAYER * g.values["launch_s"] + da.values["launch_s"],
                                  float(np.hypot(GEMMS_PER_LAYER * g.stderr["launch_s"], da.stderr["launch_s"])),
                                  f"derived: {GEMMS_PER_LAYER} x gemm_bf16.launch_s + generation_attention.launch_s",
                                  Source.DERIVED),
    }
    for name, (value, se) in CPU_PRIORS[engine].items():
        out[name] = Coefficient(value, se, Source.PRIOR, f"prior ({engine}): not measurable from kernel "
                                "tables; to be fitted end to end by the calibration issue").entry()
    return out


def memory_priors(data_dir: str | Path) -> dict[str, dict]:
    """MemoryCoefficients priors (their defaults); ``python -m servesim.calibrate.kv_capacity
    --write-profiles`` replaces them with the terms fitted on real vLLM start-up records."""
    from dataclasses import asdict  # noqa: PLC0415

    from ..sim.profile import MemoryCoefficients  # noqa: PLC0415
    return {name: Coefficient(float(value), None, Source.PRIOR, "prior: MemoryCoefficients default; fit with "
                              "python -m servesim.calibrate.kv_capacity --write-profiles (docs/memory.md)").entry()
            for name, value in asdict(MemoryCoefficients()).items()}


def power_constants(power_yaml: Path) -> dict[str, dict]:
    """PowerCoefficients: Splitwise's constant power model (H100 80GB, W per GPU); stderr is a prior spread."""
    cfg = yaml.safe_load(power_yaml.read_text())
    src = f"Splitwise {power_yaml.name} (h100-80gb)"
    return {key: Coefficient(float(cfg[section]["h100-80gb"]), se, Source.PRIOR, src).entry() for key, section, se in
            (("idle_w", "idle_power", 15.0), ("prefill_w", "prompt_power", 100.0), ("decode_w", "token_power", 100.0))}


def provenance(data_dir: Path, fits: dict[str, FitResult], power_yaml: Path) -> list[dict]:
    """One entry per input file: hash, rows, what measured it."""
    used = {"gemm": fits["gemm_bf16"].n_rows + (fits["gemm_fp8"].n_rows if "gemm_fp8" in fits else 0),
            "nccl": fits["nccl_allreduce"].n_rows}
    out = []
    for kind, name in TABLES.items():
        path = _path(data_dir, name)
        df = pd.read_parquet(path, columns=["framework", "version", "device"])
        out.append({"file": f"{path.parent.name}/{name}", "sha256": _sha256(path), "rows": len(df),
                    "rows_used": used.get(kind, fits[kind].n_rows if kind in fits else None),
                    "framework": f"{df.framework.iloc[0]} {df.version.iloc[0]}", "gpu": df.device.iloc[0],
                    "library_versions": "NCCL 2.27.3 (file name and h100_sxm.yaml; rows say TRTLLM 2.29.2)"
                    if kind == "nccl" else "vLLM 0.24.0", "measured": "date not recorded; table version vLLM 0.24.0",
                    "origin": "ai-dynamo/aiconfigurator aic-core/src/aiconfigurator_core/systems/data/h100_sxm/"})
    for path, use, origin in ((hardware_yaml(data_dir), "peaks and memory priors", "ai-dynamo/aiconfigurator"),
                              (power_yaml, "power constants", "Mutinifni/splitwise-sim configs/")):
        out.append({"file": f"{path.parent.name}/{path.name}", "sha256": _sha256(path), "used_for": use,
                    "origin": origin})
    return out


def notes(engine: str, fits: dict[str, FitResult]) -> str:
    pa, da = fits["context_attention"], fits["generation_attention"]
    text = (
        "GPU terms are fitted to aiconfigurator kernel tables measured on NVIDIA H100 80GB HBM3 under vLLM 0.24.0 "
        "(FA3 attention, torch bf16 GEMM, custom all-reduce with CUDA graphs); efficiencies are fractions of "
        "3.35e12 B/s and 989e12 FLOP/s. step_overhead_s, per_seq_overhead_s, per_token_overhead_s and the memory "
        "block are PRIORS (source 'prior'), not measurements; the calibration issue refits them end to end. "
        f"layer_overhead_s = {GEMMS_PER_LAYER} GEMM launches + 1 decode-attention launch; norm, rope and "
        "activation kernels are not in the tables. Terms the cost model lacks (see fit_report): prefill attention "
        f"behaves as if each query saw {pa.values['extra_keys']:.0f} extra keys (tile padding); decode attention "
        f"costs {da.values['per_seq_s'] * 1e9:.0f} ns per sequence per layer beyond its KV reads. fp8 GEMMs reuse "
        "eff_mm/eff_bw; the per-tensor fp8 kernel's own fit (gemm_fp8, vs the fp8 peak) is much lower and poor. "
        "All-reduce terms are one joint fit over TP 2/4/8; per-TP fits are in fit_report.")
    if engine == "vllm-v0":
        text += (" This vllm-v0 (0.5.4) profile reuses the vLLM 0.24 kernel efficiencies because those are the only "
                 "H100 kernel data held; 0.5.4 ran FlashAttention-2 / xformers kernels that were likely slower, so "
                 "these GPU terms are optimistic until the calibration issue refits them on the ML.ENERGY 0.5.4 runs.")
    return text


def build_profile(data_dir: str | Path, engine: str, power_yaml: str | Path | None = None,
                  n_boot: int = 200, gpu: str = "h100-sxm") -> dict:
    """The profile JSON (schema: docs/profile-schema.md) for ``engine`` from the tables in ``data_dir``."""
    if engine not in ENGINE_VERSIONS:
        raise ValueError(f"unknown engine {engine!r}; valid: {sorted(ENGINE_VERSIONS)}")
    data_dir = Path(data_dir)
    power_yaml = Path(power_yaml) if power_yaml else data_dir.parent / "splitwise" / "configs_power_model_constant.yaml"
    if not power_yaml.is_file():
        raise ValueError(f"power constants {power_yaml} not found; pass --power-yaml")
    fits = fit_all(data_dir, n_boot=n_boot)
    return {
        "name": f"{gpu}_{engine}", "engine": engine, "engine_version": ENGINE_VERSIONS[engine], "gpu": gpu,
        "coefficients": coefficients(fits, engine), "memory": memory_priors(data_dir),
        "power": power_constants(power_yaml), "provenance": provenance(data_dir, fits, power_yaml),
        "fit_report": {name: fit.report() for name, fit in fits.items()}, "notes": notes(engine, fits),
        "generated_by": f"python -m servesim.calibrate.kernel_tables <shared/data/h100/{data_dir.name}> "
                        f"-o <out.json> --engine {engine} --n-boot {n_boot}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servesim.calibrate.kernel_tables",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", help="folder with the aiconfigurator H100 parquet tables and h100_sxm.yaml")
    parser.add_argument("-o", "--output", required=True, help="profile JSON to write")
    add_args(parser, EngineArgs, ("engine",))  # EngineArgs' --engine: its choices, default and help
    parser.add_argument("--power-yaml", help="Splitwise configs_power_model_constant.yaml "
                        "(default: DATA_DIR/../splitwise/)")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples per fit (default 200)")
    args = parser.parse_args(argv)
    try:
        profile = build_profile(args.data_dir, args.engine, args.power_yaml, args.n_boot)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")  # write then rename: never a half-written profile
    with os.fdopen(fd, "w") as fh:
        json.dump(profile, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
