"""calibrate/silicon_fit.py and its command line calibrate/silicon.py: loading the silicon rows, recovering known CPU-side terms from rows
simulated with them, cross-validation folds, bad input."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from servesim.calibrate import silicon, silicon_fit
from servesim.sim.clients import client_preset
from servesim.sim.profile import default_profile

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / silicon_fit.SILICON_FILE


def _synthetic_rows(profile, client) -> list[silicon_fit.SiliconRow]:
    """Rows 'measured' on a simulated deployment with known coefficients (small, so the fit is fast)."""
    shapes = [(512, 32, 4, 2), (512, 32, 8, 4), (2048, 32, 4, 8), (2048, 64, 8, 2)]
    rows = []
    for isl, osl, conc, tp in shapes:
        row = silicon_fit.SiliconRow(f"s{isl}_{osl}_{conc}_{tp}", "qwen3-32b", isl, osl, conc, tp, 1.0, 1.0)
        s = silicon_fit.simulate_row(row, profile, client, silicon_fit.Protocol(1, 3))
        rows.append(replace(row, ttft_ms=s["mean_ttft_ms"], tpot_ms=s["mean_tpot_ms"]))
    return rows


def test_fit_recovers_known_step_terms(monkeypatch):
    monkeypatch.setattr(silicon_fit, "PROTOCOL", silicon_fit.Protocol(1, 3))
    monkeypatch.setattr(silicon_fit, "row_workload", _small_workload)
    base = default_profile("h100-sxm", "vllm-v1")
    client = client_preset("aiperf", jitter_s=0.0)
    truth = {"step_overhead_s": 6e-3, "per_seq_overhead_s": 1e-4}
    rows = _synthetic_rows(replace(base, step=replace(base.step, **truth)), client)
    with silicon_fit.Simulator(1) as sim:
        f = silicon_fit.fit(rows, base, client, tuple(truth), sim, max_nfev=25, n_boot=50, log=lambda m: None)
    for k, v in truth.items():
        assert f.values[k] == pytest.approx(v, rel=0.15), (k, f.values)
    assert float(np.max(np.abs(f.residuals))) < 0.02


def _small_workload(row, client, protocol=silicon_fit.Protocol(1, 3), seed=0):
    return silicon_fit.ClosedLoop(row.concurrency, np.full(4 * row.concurrency, row.isl),
                              np.full(4 * row.concurrency, row.osl), seed=seed, name=row.key,
                              client=replace(client, num_warmup_requests=row.concurrency))


def test_unused_term_is_reported_not_identified(monkeypatch):
    monkeypatch.setattr(silicon_fit, "row_workload", _small_workload)
    base = default_profile("h100-sxm", "vllm-v1")
    client = client_preset("aiperf", jitter_s=0.0)
    # TP 1 only: the per-extra-rank term multiplies (tp - 1) = 0 and cannot be identified.
    rows = [replace(r, tp=1, model="llama-3.1-8b") for r in _synthetic_rows(base, client)[:2]]
    rows = [replace(r, ttft_ms=silicon_fit.simulate_row(r, base, client)["mean_ttft_ms"],
                    tpot_ms=silicon_fit.simulate_row(r, base, client)["mean_tpot_ms"]) for r in rows]
    with silicon_fit.Simulator(1) as sim:
        f = silicon_fit.fit(rows, base, client, ("step_overhead_s", "tp_step_overhead_s"), sim, max_nfev=6,
                            n_boot=30, log=lambda m: None)
    assert "tp_step_overhead_s" in f.unidentified


@pytest.mark.skipif(not SHARED.exists(), reason="needs ../shared/data (the silicon CSV)")
def test_load_real_rows_and_folds():
    rows = silicon_fit.load_silicon(SHARED)
    assert len(rows) == 90
    assert {r.tp for r in rows} == {2, 4, 8} and {(r.isl, r.osl) for r in rows} == {
        (i, o) for i in (1024, 4096) for o in (128, 512, 1024)}
    folds = silicon_fit.splits(rows)
    assert [f[0] for f in folds["tp"]] == ["tp2", "tp4", "tp8"]
    for split in folds.values():
        for _, train, test in split:
            assert not set(train) & set(test) and len(train) + len(test) == 90


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        silicon_fit.load_silicon(tmp_path / "nope.csv")
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        silicon_fit.load_silicon(bad)
    with pytest.raises(ValueError, match="cannot fit"):
        silicon_fit.fit([], default_profile("h100-sxm", "vllm-v1"), client_preset("aiperf"), ("eff_mm",))
    assert silicon.main(["--params", "eff_mm", str(SHARED)]) == 2


def test_calibrate_command_takes_a_silicon_csv(tmp_path, monkeypatch):
    """`servesim calibrate SILICON.csv --engine vllm-v1`: recognised, fitted, written with provenance."""
    from servesim.calibrate.pipeline import calibrate, classify
    monkeypatch.setattr(silicon_fit, "row_workload", _small_workload)
    header = ("id,silicon_data_source,backend,backend_version,model_path,system,precision,mode,isl,osl,batch_size,"
              "tp_size,pp_size,silicon_ttft_ms,silicon_tpot_ms\n")
    path = tmp_path / "silicon.csv"
    path.write_text(header + "a,x,vllm,0.12.0,Qwen/Qwen3-32B,h100_sxm,,agg,512,16,4.0,2.0,1.0,120.0,14.0\n"
                             "b,x,vllm,0.12.0,Qwen/Qwen3-32B,h100_sxm,,agg,512,16,4.0,4.0,1.0,90.0,9.0\n")
    assert classify(path) == "silicon"
    data, _ = calibrate([path], "vllm-v1", workers=1, max_nfev=1, log=lambda m: None)
    report = data["fit_report"]["silicon_vllm_0.12"]
    assert set(report["values"]) == set(silicon_fit.DEFAULT_PARAMS)
    assert any(p.get("kind", "").startswith("end-to-end closed loop") for p in data["provenance"])
    assert data["memory"] == calibrate([], "vllm-v1", log=lambda m: None)[0]["memory"]
    with pytest.raises(ValueError, match="--engine vllm-v1"):
        calibrate([path], "vllm-v0", workers=1, max_nfev=1, log=lambda m: None)


def test_rows_are_replayed_with_the_inferred_budget(monkeypatch):
    monkeypatch.setattr(silicon_fit, "row_workload", _small_workload)
    base = default_profile("h100-sxm", "vllm-v1")
    client = client_preset("aiperf", jitter_s=0.0)
    row = silicon_fit.SiliconRow("r", "qwen3-32b", 1024, 16, 8, 2, 1.0, 1.0)
    small = silicon_fit.simulate_row(row, base, client)
    big = silicon_fit.simulate_row(row, base, client, deployment=silicon_fit.Deployment(8192, 1024))
    assert silicon_fit.DEPLOYMENT.max_num_batched_tokens == 2048
    # Eight 1024-token prompts fit one 8192-token step: all wait for it; at 2048 two go per step.
    assert small["mean_ttft_ms"] < big["mean_ttft_ms"]
