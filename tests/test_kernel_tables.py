"""Tests for the kernel-table fits (servesim.calibrate.kernel_tables) and the shipped profiles.

Layers: round trips on synthetic tables generated from the fitted formulas with known coefficients
and multiplicative noise (the fit must recover them); the real aiconfigurator H100 tables (skipped
when shared/data is absent): table conventions, fit quality bounds, reproducibility of the shipped
values; the shipped profiles: they load, every term has a source and an uncertainty, step times
are sane.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from servesim.calibrate import kernel_tables as kt
from servesim.sim import data_paths
from servesim.sim.cost_model import BatchShape, StepCostModel
from servesim.sim.gpus import get_gpu
from servesim.sim.model_catalog import get_model
from servesim.sim.profile import StepCoefficients, load_profile, shipped_profiles, shipped_profiles_dir

PEAKS = kt.Peaks(hbm_bandwidth_bytes_per_s=3.35e12, bf16_flops=989e12, fp8_flops=1978e12)
PROFILES = shipped_profiles_dir()
NOISE = 0.03  # lognormal sigma of the synthetic tables: 3% per row, like repeated kernel timings


def _shared() -> Path | None:
    try:
        return data_paths.find_shared_data("h100/aiconfigurator_vllm_0.24")
    except FileNotFoundError:
        return None


DATA = _shared()
needs_data = pytest.mark.skipif(DATA is None, reason="shared/data/h100/aiconfigurator_vllm_0.24 not found "
                                "(set SERVESIM_DATA to the shared/data folder)")


def _noisy(latency: np.ndarray, seed: int) -> np.ndarray:
    return latency * np.exp(np.random.default_rng(seed).normal(0.0, NOISE, latency.shape))


def _close(fit: kt.FitResult, truth: dict[str, float], rel: dict[str, float]) -> None:
    for name, value in truth.items():
        assert fit.values[name] == pytest.approx(value, rel=rel[name]), (name, fit.values[name], value)


# ----- synthetic round trips -------------------------------------------------------------------
def test_gemm_fit_recovers_known_efficiencies():
    m, n, k = (a.ravel().astype(float) for a in np.meshgrid(
        [1, 4, 16, 64, 256, 1024, 4096, 16384], [1024, 4096, 14336], [2048, 4096, 8192]))
    truth = {"eff_bw": 0.75, "eff_mm": 0.65, "launch_s": 4e-6}
    exact = kt.gemm_latency_s(m, n, k, **truth, bw=PEAKS.hbm_bandwidth_bytes_per_s, peak_flops=PEAKS.bf16_flops)
    df = pd.DataFrame({"m": m, "n": n, "k": k, "latency_s": _noisy(exact, 1)})
    fit = kt.fit_gemm(df, PEAKS, n_boot=20)
    # Tolerance: 2% on efficiencies, 15% on the launch constant (it sets only the smallest rows).
    _close(fit, truth, {"eff_bw": 0.02, "eff_mm": 0.02, "launch_s": 0.15})
    assert fit.residuals["median_abs_rel_err"] < 2 * NOISE
    assert all(se > 0 for se in fit.stderr.values())


def test_fp8_gemm_fit_uses_fp8_peak_and_one_byte_inputs():
    m, n, k = (a.ravel().astype(float) for a in np.meshgrid([1, 16, 256, 4096, 16384], [4096, 8192], [4096, 8192]))
    truth = {"eff_bw": 0.8, "eff_mm": 0.5, "launch_s": 6e-6}
    exact = kt.gemm_latency_s(m, n, k, **truth, bw=PEAKS.hbm_bandwidth_bytes_per_s, peak_flops=PEAKS.fp8_flops,
                              in_bytes=1.0)
    fit = kt.fit_gemm(pd.DataFrame({"m": m, "n": n, "k": k, "latency_s": exact}), PEAKS, fp8=True, n_boot=0)
    _close(fit, truth, {"eff_bw": 1e-3, "eff_mm": 1e-3, "launch_s": 1e-2})


def test_context_attention_fit_recovers_known_coefficients():
    b, s, h = (a.ravel().astype(float) for a in np.meshgrid([1, 4, 32], [16, 128, 1024, 4096, 16384], [8, 32, 64]))
    truth = {"eff_attn": 0.6, "extra_keys": 500.0, "launch_s": 1.2e-5}
    exact = kt.context_attention_latency_s(b, s, h, 128.0, **truth, peak_flops=PEAKS.bf16_flops)
    df = pd.DataFrame({"batch_size": b, "isl": s, "num_heads": h, "num_key_value_heads": h, "head_dim": 128.0,
                       "latency_s": _noisy(exact, 2)})
    fit = kt.fit_context_attention(df, PEAKS, n_boot=20)
    _close(fit, truth, {"eff_attn": 0.03, "extra_keys": 0.1, "launch_s": 0.1})


def test_generation_attention_fit_recovers_known_coefficients():
    b, ctx, kv = (a.ravel().astype(float) for a in np.meshgrid([1, 8, 64, 512], [16, 256, 4096, 32768], [1, 2, 8]))
    truth = {"eff_attn": 0.85, "per_seq_s": 5e-8, "launch_s": 1e-5}
    exact = kt.generation_attention_latency_s(b, ctx, kv, 128.0, **truth, bw=PEAKS.hbm_bandwidth_bytes_per_s)
    df = pd.DataFrame({"batch_size": b, "context_tokens": ctx, "num_heads": 4 * kv, "num_key_value_heads": kv,
                       "head_dim": 128.0, "latency_s": _noisy(exact, 3)})
    fit = kt.fit_generation_attention(df, PEAKS, n_boot=20)
    _close(fit, truth, {"eff_attn": 0.02, "per_seq_s": 0.15, "launch_s": 0.05})


def test_allreduce_fit_recovers_latency_and_bandwidth():
    size = np.tile(2.0 ** np.arange(12, 29), 3)
    truth = {"latency_s": 5e-6, "bandwidth_bytes_per_s": 2e11}
    exact = kt.allreduce_latency_s(size, **truth)
    df = pd.DataFrame({"message_bytes": size, "num_gpus": np.repeat([2, 4, 8], 17), "latency_s": _noisy(exact, 4)})
    _close(kt.fit_allreduce(df, n_boot=20), truth, {"latency_s": 0.05, "bandwidth_bytes_per_s": 0.05})


def test_row_bootstrap_agrees_with_jacobian_stderr_on_iid_noise():
    """With independent rows both uncertainty estimates measure the same thing."""
    size = np.repeat(2.0 ** np.arange(12, 29), 20)
    df = pd.DataFrame({"message_bytes": size, "num_gpus": 2,
                       "latency_s": _noisy(kt.allreduce_latency_s(size, 5e-6, 2e11), 5)})
    fit = kt.fit_log("ar", df.latency_s.to_numpy(), lambda latency_s, bw: kt.allreduce_latency_s(size, latency_s, bw),
                     {"latency_s": 1e-5, "bw": 1e11}, groups=None, n_boot=100)
    for name in fit.values:
        assert 0.5 < fit.stderr[name] / fit.jacobian_stderr[name] < 2.0, name
        assert abs(fit.values[name] - {"latency_s": 5e-6, "bw": 2e11}[name]) < 5 * fit.stderr[name]


def test_missing_data_dir_is_a_named_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="not found"):
        kt.read_gemm(tmp_path)
    assert kt.main([str(tmp_path), "-o", str(tmp_path / "out.json")]) == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "out.json").exists()
    with pytest.raises(ValueError, match="valid"):
        kt.build_profile(tmp_path, "vllm-v9")


# ----- real tables -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_fits() -> dict[str, kt.FitResult]:
    return kt.fit_all(DATA, n_boot=0)


@needs_data
def test_table_conventions():
    gen = kt.read_generation_attention(DATA)
    assert set(gen.isl) == {1} and (gen.context_tokens == gen.step + 1).all()
    assert set(gen.context_tokens) <= {2 ** j for j in range(18)}
    # message_size counts elements: NCCL int8 takes about half the time of half at the same count.
    half, int8 = (kt.read_nccl_allreduce(DATA, d, min_bytes=2**26, max_bytes=2**30) for d in ("half", "int8"))
    both = half.merge(int8, on=["num_gpus", "message_size"], suffixes=("_h", "_i"))
    assert 0.4 < float(np.median(both.latency_s_i / both.latency_s_h)) < 0.7


@needs_data
def test_real_gemm_fit_quality(real_fits):
    g = real_fits["gemm_bf16"]
    # Measured on the vLLM 0.24 table: median 6.1%, p90 13.7% over 16,352 serving-shape rows.
    assert g.n_rows > 15000
    assert g.residuals["median_abs_rel_err"] < 0.08 and g.residuals["p90_abs_rel_err"] < 0.18
    assert 0.7 < g.values["eff_bw"] < 0.95 and 0.6 < g.values["eff_mm"] < 0.95
    assert 1e-6 < g.values["launch_s"] < 1e-5


@needs_data
def test_real_attention_and_allreduce_fit_quality(real_fits):
    # Measured: prefill median 11.8%, decode 7.5%, custom all-reduce (joint TP) 13.7%.
    assert real_fits["context_attention"].residuals["median_abs_rel_err"] < 0.15
    assert real_fits["generation_attention"].residuals["median_abs_rel_err"] < 0.10
    assert real_fits["custom_allreduce"].residuals["median_abs_rel_err"] < 0.18
    for tp in (2, 4, 8):
        ar = real_fits[f"custom_allreduce_tp{tp}"].values
        assert 2e-6 < ar["latency_s"] < 1e-5 and 1e11 < ar["bandwidth_bytes_per_s"] < 4e11


@needs_data
@pytest.mark.parametrize("engine", ["vllm-v1", "vllm-v0"])
def test_shipped_profile_reproduces_from_tables(real_fits, engine):
    """The shipped kernel-level values are what the command in docs/profile-schema.md regenerates
    (terms the end-to-end calibration refitted carry that source instead and are checked there)."""
    shipped = json.loads((PROFILES / f"h100-sxm_{engine}.json").read_text())
    fresh = kt.coefficients(real_fits, engine)
    compared = 0
    for name, entry in shipped["coefficients"].items():
        if entry["source"] == fresh[name]["source"]:
            assert entry["value"] == pytest.approx(fresh[name]["value"], rel=1e-3), name
            compared += 1
    assert compared >= 6
    hashes = {p["file"]: p["sha256"] for p in shipped["provenance"]}
    for name in kt.TABLES.values():
        assert hashes[f"{DATA.name}/{name}"] == kt._sha256(DATA / name), f"{name} changed since the profile was made"


@needs_data
def test_cli_writes_a_loadable_profile(tmp_path):
    out = tmp_path / "p.json"
    assert kt.main([str(DATA), "-o", str(out), "--engine", "vllm-v0", "--n-boot", "0"]) == 0
    profile = load_profile(out)
    assert profile.engine_version == "0.5.4" and profile.step.step_overhead_s == 4e-3


# ----- shipped profiles ------------------------------------------------------------------------
def test_shipped_profiles_are_package_data_of_the_package_that_reads_them():
    import servesim.sim
    assert PROFILES == Path(servesim.sim.__file__).parent / "profiles"
    assert not (Path(kt.__file__).parent / "profiles").exists()
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"servesim.sim" = ["data/*.csv", "data/*.json", "profiles/*.json"]' in pyproject
    assert {p.stem for p in PROFILES.glob("*.json")} <= set(shipped_profiles())


@pytest.mark.parametrize("engine,version", [("vllm-v1", "0.24.0"), ("vllm-v0", "0.5.4")])
def test_shipped_profile_loads_with_sources(engine, version):
    path = PROFILES / f"h100-sxm_{engine}.json"
    profile = load_profile(path)
    assert (profile.engine, profile.engine_version, profile.gpu) == (engine, version, "h100-sxm")
    data = json.loads(path.read_text())
    assert set(data["coefficients"]) == set(StepCoefficients.__dataclass_fields__)
    for section in ("coefficients", "memory", "power"):
        for name, entry in data[section].items():
            assert entry["source"] and entry["stderr"] is not None and entry["stderr"] >= 0, (section, name)
            assert name in profile.uncertainty
    for name in ("step_overhead_s", "per_seq_overhead_s", "per_token_overhead_s"):
        source = data["coefficients"][name]["source"]
        assert source.startswith("prior") or source.startswith("end-to-end fit"), name
    for name in ("eff_bw", "eff_mm", "eff_attn_prefill", "eff_attn_decode", "ar_latency_s"):
        assert data["coefficients"][name]["source"].startswith("fit:"), name
    assert all(p["file"] and p["sha256"] for p in data["provenance"])
    assert "prior" in profile.notes.lower() and data["fit_report"]["gemm_bf16"]["residuals"]


def _step_ms(cost: StepCostModel, decode_seqs: int = 0, context: int = 0, prefill: int = 0) -> float:
    batch = BatchShape(num_decode_seqs=decode_seqs, decode_context_tokens=decode_seqs * context)
    if prefill:
        batch.add_prefill_chunk(0, prefill)
    return cost.step_time(batch) * 1e3


def test_shipped_v1_profile_gives_sane_llama_8b_step_times():
    profile = load_profile(PROFILES / "h100-sxm_vllm-v1.json")
    cost = StepCostModel(get_model("llama-3.1-8b"), get_gpu("h100-sxm"), profile.step, tp=1)
    # Weight streaming 16 GB at ~2.8 TB/s is 5.7 ms; vLLM reports 6-8 ms per token at batch 1.
    assert 6.0 < _step_ms(cost, 1, 1000) < 9.0
    assert 15.0 < _step_ms(cost, 256, 1000) < 35.0
    # 2048 tokens x 16 GFLOP/token at ~790 TFLOP/s: ~40 ms plus attention and overheads.
    assert 35.0 < _step_ms(cost, prefill=2048) < 80.0
    v0 = load_profile(PROFILES / "h100-sxm_vllm-v0.json")
    slower = StepCostModel(get_model("llama-3.1-8b"), get_gpu("h100-sxm"), v0.step, tp=1)
    assert _step_ms(slower, 256, 1000) > _step_ms(cost, 256, 1000)
