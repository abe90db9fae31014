"""Vidur operator profiles (``compute/<gpu>/<org>/<model>/mlp.csv``) -> GEMM efficiencies.

Vidur (Agrawal et al., MLSys 2024) profiled each transformer layer's operators on H100 for
1..4096 tokens and TP 1/2/4/8.  Its four linear operators per layer are GEMMs of known shape
(per GPU, ``h`` = hidden, ``i`` = MLP width, ``d`` = head dim):

* ``attn_pre_proj``:  tokens x h  @  h x (heads + 2 kv_heads) * d / tp
* ``attn_post_proj``: tokens x (heads * d / tp)  @  (heads * d / tp) x h
* ``mlp_up_proj``:    tokens x h  @  h x (2 if gated else 1) * i / tp
* ``mlp_down_proj``:  tokens x (i / tp)  @  (i / tp) x h

so the same roofline as the kernel tables (:func:`kernel_tables.gemm_latency_s`) is fitted to their
median times: an independent check of ``eff_bw`` and ``eff_mm`` (different library versions and
harness).  The remaining per-layer operators (norms, rope, activation, residual add) are summed
and reported as a time per layer and token, which bounds what ``layer_overhead_s`` and
``per_token_overhead_s`` may hold.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .kernel_tables import FitResult, Peaks, fit_log, gemm_latency_s

GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
ELEMENTWISE_OPS = ("input_layernorm", "attn_rope", "post_attention_layernorm", "mlp_act", "add")
H100_PEAKS = Peaks(hbm_bandwidth_bytes_per_s=3.35e12, bf16_flops=989e12, fp8_flops=1979e12)


def find_profiles(root: str | Path) -> list[Path]:
    root = Path(root)
    files = sorted(root.rglob("mlp.csv"))
    if not files:
        raise ValueError(f"{root}: no Vidur mlp.csv profiles found below it")
    return files


def gemm_rows(path: Path) -> pd.DataFrame:
    """One row per (operator, tokens, TP) with its GEMM shape and median seconds."""
    df = pd.read_csv(path)
    need = {"n_head", "n_kv_head", "n_embd", "n_expanded_embd", "num_tokens", "num_tensor_parallel_workers",
            "use_gated_mlp"}
    missing = need - set(df.columns)
    if missing:
        raise ValueError(f"{path}: not a Vidur mlp.csv, missing {sorted(missing)}")
    d = df.n_embd / df.n_head
    tp = df.num_tensor_parallel_workers
    gated = df.use_gated_mlp.astype(str).str.lower().eq("true")
    shapes = {
        "attn_pre_proj": (df.n_embd, (df.n_head + 2 * df.n_kv_head) * d / tp),
        "attn_post_proj": (df.n_head * d / tp, df.n_embd),
        "mlp_up_proj": (df.n_embd, np.where(gated, 2, 1) * df.n_expanded_embd / tp),
        "mlp_down_proj": (df.n_expanded_embd / tp, df.n_embd),
    }
    parts = []
    for op, (k, n) in shapes.items():
        col = f"time_stats.{op}.median"
        if col not in df:
            continue
        parts.append(pd.DataFrame({"model": path.parent.name, "op": op, "m": df.num_tokens.astype(float),
                                   "n": np.asarray(n, dtype=float), "k": np.asarray(k, dtype=float),
                                   "tp": tp, "latency_s": df[col] * 1e-3}))
    return pd.concat(parts, ignore_index=True)


def elementwise_per_layer(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    cols = [f"time_stats.{op}.median" for op in ELEMENTWISE_OPS if f"time_stats.{op}.median" in df]
    return pd.DataFrame({"model": path.parent.name, "tokens": df.num_tokens, "tp": df.num_tensor_parallel_workers,
                         "seconds": df[cols].sum(axis=1) * 1e-3})


def fit_vidur_gemm(root: str | Path, peaks: Peaks = H100_PEAKS, n_boot: int = 100) -> tuple[FitResult, dict]:
    """The GEMM roofline fitted to every linear operator of every profile under ``root``, and a
    summary of the element-wise operators (seconds per layer: median at 1 token, slope per token)."""
    files = find_profiles(root)
    rows = pd.concat([gemm_rows(f) for f in files], ignore_index=True)
    rows = rows[rows.latency_s > 0]
    m, n, k = (rows[c].to_numpy(float) for c in ("m", "n", "k"))
    predict = lambda eff_bw, eff_mm, launch_s: gemm_latency_s(  # noqa: E731
        m, n, k, eff_bw, eff_mm, launch_s, bw=peaks.hbm_bandwidth_bytes_per_s, peak_flops=peaks.bf16_flops)
    fit = fit_log("vidur_gemm_bf16", rows.latency_s.to_numpy(), predict,
                  {"eff_bw": 0.8, "eff_mm": 0.7, "launch_s": 5e-6},
                  groups=list(zip(rows.model, rows.op, rows.tp)), n_boot=n_boot)
    ew = pd.concat([elementwise_per_layer(f) for f in files], ignore_index=True)
    small = ew[ew.tokens <= 8].seconds.median()
    big = ew[ew.tokens >= 1024]
    slope = float(np.median(big.seconds / big.tokens)) if len(big) else float("nan")
    return fit, {"elementwise_s_per_layer_at_small_batch": float(small),
                 "elementwise_s_per_layer_per_token_at_large_batch": slope,
                 "profiles": [str(f) for f in files]}
