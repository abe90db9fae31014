"""The torch-kernels probe backend, on CPU with a tiny architecture (skipped without PyTorch).

On a GPU the same code times the real shapes (``--shapes quick|full``); here it must produce tables
that :mod:`servesim.calibrate.kernel_tables` reads and fits, and a provenance record.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from servesim.calibrate import kernel_tables as kt
from servesim.cli import main

CONFIG = Path(__file__).parent / "fixtures" / "measure" / "tiny_llama_config.json"


def test_without_torch_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    from servesim.measure.torch_probe import ProbeOptions, run_probe
    with pytest.raises(ValueError, match="gpu-probe"):
        run_probe(ProbeOptions(model=str(CONFIG), out=tmp_path))


def test_tiny_architecture_on_cpu_writes_kernel_tables(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "kernels"
    assert main(["measure", "--backend", "torch-kernels", "--model", str(CONFIG), "--shapes", "tiny",
                 "--device", "cpu", "--tp", "1", "--tp", "2", "--out", str(out)]) == 0
    gemm = kt.read_table(out, "gemm")
    # qkv, o, gate_up, down, lm_head for TP 1 and 2, three token counts each
    assert len(gemm) == 5 * 2 * 3 and (gemm.latency_s > 0).all()
    tp2 = gemm[gemm.tp == 2].set_index("layer")
    assert tp2.loc["qkv", "n"].iloc[0] == (4 // 2) * 64 + 2 * 1 * 64 and tp2.loc["down", "k"].iloc[0] == 512 // 2
    assert set(gemm.columns) >= {"framework", "version", "device", "op_name", "kernel_source", "gemm_dtype",
                                 "m", "n", "k", "latency"}
    pre = kt.read_context_attention(out, head_dim=64, kernel_source="torch_sdpa")
    dec = kt.read_generation_attention(out, head_dim=64, kernel_source="torch_sdpa")
    assert len(pre) == 2 * 2 and len(dec) == 2 * 2
    assert (dec.isl == 1).all() and (dec.context_tokens == dec.step + 1).all()
    peaks = kt.Peaks(hbm_bandwidth_bytes_per_s=1e11, bf16_flops=1e12, fp8_flops=2e12)
    fit = kt.fit_gemm(gemm, peaks, n_boot=0)  # fits run on the probe's tables (CPU numbers mean nothing)
    assert set(fit.values) == {"eff_bw", "eff_mm", "launch_s"}
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["torch"] and prov["date"] and prov["rows"] == {"gemm": 30, "context_attention": 4,
                                                                "generation_attention": 4}
    assert pd.read_parquet(next(out.glob("gemm_*.parquet"))).framework.iloc[0] == "PyTorch"
