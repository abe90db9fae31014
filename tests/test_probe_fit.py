"""Step-cost fits from probe runs (servesim.calibrate.probe_fit).

Layers: the vectorised cost form equals ``StepCostModel``; a synthetic run directory written from
known coefficients is fitted back exactly; and the round trip: ``servesim serve`` runs a known
profile in real time (``--speed 1``), the harness measures it, ``fit_probe_run`` recovers the
coefficients.

Tolerances of the round trip (docs/measure.md, "Round trip"):
* on the simulator's own clock (``clock="server"``: the simulated times ``servesim serve`` stamps
  on each token), every fitted coefficient within 1 % of the truth (achieved: < 0.05 %);
* on the wall clock, as a real server is measured, on this shared 2-core machine: every decode
  step measured within 15 % of the simulated one, the fitted profile reproducing the measured
  TTFTs and decode steps with a median error below 5 %, and the best-conditioned coefficient
  (``eff_mm``) within 25 %; the others are printed, not asserted: the weight-streaming bound, the
  fixed step cost and the API latency separate only through the compute-bound kink, and prefill
  attention is a tenth of the longest TTFT, so ~1 % timing noise moves them by tens of percent.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_measure_harness import ServeProcess, measure

from servesim.calibrate.probe_fit import (
    FREE,
    Features,
    decode_observations,
    fit_probe_run,
    prefill_chunks,
    prefill_observations,
)
from servesim.measure.rundir import load_requests
from servesim.sim.cost_model import StepCostModel
from servesim.sim.gpus import get_gpu
from servesim.sim.model_catalog import get_model
from servesim.sim.profile import load_profile, shipped_profiles

MODEL, GPU = get_model("llama-3.1-8b"), get_gpu("h100-sxm")
KNOWN = {"eff_mm": 0.35, "eff_bw": 0.7, "eff_attn_prefill": 0.3, "eff_attn_decode": 0.6, "step_overhead_s": 4e-3,
         "per_seq_overhead_s": 4e-5}
ROUND_TRIP_PLAN = {
    "name": "roundtrip", "request_timeout_s": 60, "stall_timeout_s": 30, "max_duration_s": 120,
    "families": {
        "prefill": {"prompt_lens": [16, 64, 128, 256, 512, 2048, 4096, 8192], "output_len": 1, "repeats": 3},
        # up to 256 concurrent: past the compute-bound kink (~160 with these coefficients)
        "decode": {"concurrency": [1, 16, 64, 128, 192, 256], "prompt_len": 32, "output_len": 32},
        "context": {"prompt_lens": [1024, 3072], "concurrency": [8], "output_len": 24},
        "kv_capacity": {}}}


def known_profile(path: Path) -> Path:
    """The shipped vllm-v1 profile with the six free coefficients replaced by :data:`KNOWN`."""
    data = json.loads(shipped_profiles()["h100-sxm_vllm-v1"].read_text())
    for name, value in KNOWN.items():
        data["coefficients"][name]["value"] = value
    data["name"] = "known"
    path.write_text(json.dumps(data))
    return path


def test_vectorised_form_equals_the_cost_model():
    base = load_profile(shipped_profiles()["h100-sxm_vllm-v1"]).step
    feat = Features.of(MODEL, GPU, base, 1, "bf16", "bf16")
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = {"eff_mm": rng.uniform(.2, 1), "eff_bw": rng.uniform(.2, 1), "eff_attn_prefill": rng.uniform(.2, 1),
             "eff_attn_decode": rng.uniform(.2, 1), "step_overhead_s": rng.uniform(0, 5e-3),
             "per_seq_overhead_s": rng.uniform(0, 1e-4)}
        from dataclasses import replace
        model = StepCostModel(MODEL, GPU, replace(base, **p), 1, "bf16", "auto")
        tokens, seqs = int(rng.integers(1, 9000)), int(rng.integers(1, 300))
        pairs, ctx = float(rng.uniform(0, 1e7)), float(rng.uniform(0, 1e6))
        assert feat.step_s(p, tokens, seqs, pairs, ctx) == pytest.approx(model.step_time_of(tokens, seqs, pairs, ctx),
                                                                         rel=1e-12)


def test_prefill_chunks_follow_the_token_budget():
    obs, tokens, pairs = prefill_chunks(np.array([10, 20]), budget=8)
    assert obs.tolist() == [0, 0, 1, 1, 1] and tokens.tolist() == [8, 2, 8, 8, 4]
    assert pairs.tolist() == [36, 2 * 8 + 3, 36, 8 * 8 + 36, 4 * 16 + 10]
    obs, tokens, _ = prefill_chunks(np.array([10]), budget=None)
    assert tokens.tolist() == [10]


def _synthetic_run(tmp_path: Path, api_s: float) -> Path:
    """A run directory whose token times come straight from the cost model of :data:`KNOWN`."""
    from dataclasses import replace
    base = load_profile(shipped_profiles()["h100-sxm_vllm-v1"]).step
    cost = StepCostModel(MODEL, GPU, replace(base, **KNOWN))
    run = tmp_path / "run"
    run.mkdir()
    records, points = [], []
    t = 1000.0
    for p in (16, 64, 128, 256, 1024, 4096, 8192, 16384):
        _, tok, pairs = prefill_chunks(np.array([p]), 8192)
        ttft = api_s + sum(cost.step_time_of(int(c), 1, pp, 0) for c, pp in zip(tok, pairs))
        records.append({"point_id": f"prefill/p{p}", "family": "prefill", "attempt": 1, "index": 0, "params": {},
                        "prompt_tokens": p, "max_tokens": 1, "send_time": t, "first_token_time": t + ttft,
                        "finish_time": t + ttft, "token_times": [ttft], "output_tokens": 1, "status": "ok"})
        points.append(f"prefill/p{p}")
    for n, prompt in ((1, 32), (8, 32), (64, 32), (128, 32), (256, 32), (512, 32), (4, 4096), (8, 8192)):
        times, now = [], 0.01
        for i in range(1, 40):  # every request decodes in every step after a common first token
            now += cost.step_time_of(n, n, 0, n * (prompt + i))
            times.append(now)
        pid = f"{'context' if prompt > 32 else 'decode'}/n{n}/p{prompt}"
        for k in range(n):
            records.append({"point_id": pid, "family": pid.split("/")[0], "attempt": 1, "index": k, "params": {},
                            "prompt_tokens": prompt, "max_tokens": 40, "send_time": t, "first_token_time": t + .01,
                            "finish_time": t + now, "token_times": [0.01] + times, "output_tokens": 40, "status": "ok"})
        points.append(pid)
    (run / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "points.jsonl").write_text("".join(json.dumps({"point_id": p, "attempt": 1, "status": "complete"}) + "\n"
                                              for p in points))
    (run / "run.json").write_text(json.dumps({"server": {"time_scale": 1.0}, "max_model_len": 131072,
                                              "kv_capacity": {"num_gpu_blocks": 27000, "block_size": 16}}))
    return run


def test_synthetic_run_is_fitted_back_exactly(tmp_path):
    run = _synthetic_run(tmp_path, api_s=3e-3)
    prof = fit_probe_run(run, "llama-3.1-8b", "h100-sxm", "vllm-v1", n_boot=5)
    report = prof["fit_report"]["probe_step_cost"]
    for name, value in KNOWN.items():
        assert report["values"][name] == pytest.approx(value, rel=1e-3), name
        assert prof["coefficients"][name]["source"].startswith("fit:")
    assert report["values"]["api_overhead_s"] == pytest.approx(3e-3, rel=1e-3)
    assert report["residuals"]["all"]["max_abs_rel_err"] < 1e-3  # the window slope of a convex curve
    assert prof["coefficients"]["layer_overhead_s"]["source"].startswith("held")
    # KV capacity: non_torch_bytes derived so that the memory model gives the reported blocks
    assert prof["memory"]["non_torch_bytes"]["source"].startswith("derived")
    assert report["kv_capacity"]["num_gpu_blocks"] == 27000
    # the output is a loadable profile
    (tmp_path / "fitted.json").write_text(json.dumps(prof))
    assert load_profile(tmp_path / "fitted.json").step.eff_mm == pytest.approx(KNOWN["eff_mm"], rel=1e-3)


def test_missing_sweeps_are_named(tmp_path):
    run = _synthetic_run(tmp_path, api_s=0.0)
    lines = [line for line in (run / "requests.jsonl").read_text().splitlines() if '"prefill"' not in line]
    (run / "requests.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="prefill points"):
        fit_probe_run(run, "llama-3.1-8b", "h100-sxm", "vllm-v1", n_boot=0)


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    """One probe run of `servesim serve` with the known profile at real-time speed, fitted on both clocks."""
    tmp_path = tmp_path_factory.mktemp("roundtrip")
    out = tmp_path / "run"
    with ServeProcess("--profile", str(known_profile(tmp_path / "known.json")), "--max-model-len", "16384",
                      speed=1) as server:
        assert measure(server.url, out, ROUND_TRIP_PLAN, plots=False) == 0
    exact = fit_probe_run(out, "llama-3.1-8b", "h100-sxm", "vllm-v1", n_boot=10, clock="server")
    wall = fit_probe_run(out, "llama-3.1-8b", "h100-sxm", "vllm-v1", n_boot=10, clock="wall")
    errors = {}
    for clock, prof in (("server", exact), ("wall", wall)):
        values = prof["fit_report"]["probe_step_cost"]["values"]
        errors[clock] = {k: values[k] / v - 1 for k, v in KNOWN.items()}
    print("\nround-trip relative errors (server clock | wall clock):")
    for k in KNOWN:
        print(f"  {k:<20} {errors['server'][k]:+8.3%} | {errors['wall'][k]:+8.2%}")
    return out, exact, wall, errors


def test_round_trip_recovers_the_served_profile(served_run):
    """On the server's own clock the fit recovers every known coefficient within 1%."""
    out, exact, _, errors = served_run
    assert all(abs(e) < 0.01 for e in errors["server"].values()), errors["server"]
    assert set(FREE) == set(exact["fit_report"]["probe_step_cost"]["values"])
    assert len(prefill_observations(load_requests(out))) == 8


def test_round_trip_on_the_wall_clock(served_run):
    """As a real server is measured: only meaningful if the simulated server kept real time, which a
    loaded 2-core machine cannot always give it (then the test skips, saying so)."""
    out, _, wall, errors = served_run
    df = load_requests(out)
    wall_steps = decode_observations(df, "wall")[0].set_index("point_id").step_s
    true_steps = decode_observations(df, "server")[0].set_index("point_id").step_s
    lag = (wall_steps / true_steps - 1).abs()
    if not (lag < 0.15).all():
        pytest.skip(f"servesim serve fell behind real time on this machine (decode steps up to {lag.max():.0%} "
                    "slower than simulated): wall-clock recovery not meaningful here")
    report = wall["fit_report"]["probe_step_cost"]
    assert report["residuals"]["all"]["median_abs_rel_err"] < 0.05
    assert abs(errors["wall"]["eff_mm"]) < 0.25
    assert 0 < report["values"]["api_overhead_s"] < 0.05  # HTTP and scheduling latency, fitted apart
