"""Fitting a deployment from its own bench runs: a synthetic deployment with known coefficients is
recovered; cleaning of failed requests; the API-server queue; --gpu honoured; summary-only files;
validate on a folder.

The synthetic deployment: Llama-3-8B (TP 1/2/4) and Llama-3-70B (TP 4/8) under vLLM 0.6 with 4
scheduler steps, bursts of 16-64 requests (ShareGPT-like lengths), simulated with known CPU-side
terms.  The fit starts from CPU terms 2-4x off and must recover the truth within the stated
tolerances: 10% for the per-pass overhead, 15% for the API server's per-request time, 25% for the
per-rank and per-sequence terms (which bursts constrain less).  (A kernel efficiency 5% off its
prior is *not* recovered from such bursts: other terms absorb it within 1-2% residuals, so the
15% prior wins; the fit says so through its identifiability report.)
"""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from servesim.calibrate import e2e_fit
from servesim.calibrate.bench_runs import Deployment, load_bench_runs, read_bench_run
from servesim.calibrate.deployment_fit import RunTarget, engine_config_for, fit_deployment
from servesim.cli import main
from servesim.sim.profile import Profile, StepCoefficients
from servesim.sim.runner import simulate
from servesim.sim.workload import Workload

TRUTH = StepCoefficients(eff_bw=0.78, eff_mm=0.79, eff_attn_prefill=0.67, eff_attn_decode=0.9,
                         step_overhead_s=3e-3, tp_step_overhead_s=4e-4, per_seq_overhead_s=6e-5,
                         layer_overhead_s=2e-5, api_server_request_s=1e-3)
PRIOR = replace(TRUTH, step_overhead_s=1e-3, tp_step_overhead_s=1e-4, per_seq_overhead_s=2e-5,
                api_server_request_s=3e-4)
DEP = Deployment(name="synthetic", num_scheduler_steps=4, max_num_seqs=256)


def _profile(step: StepCoefficients) -> Profile:
    return Profile(name="synthetic", engine="vllm-v0", engine_version="0.6", gpu="h100-sxm", step=step)


def write_bench(folder, n: int, tp: int, seed: int, step: StepCoefficients = TRUTH, failures: int = 0,
                model: str = "Meta-Llama-3-8B-Instruct") -> None:
    """A `vllm bench serve --save-result --save-detailed`-shaped file from a simulated burst."""
    rng = np.random.default_rng(seed)
    inputs = np.clip(rng.lognormal(5.0, 0.8, n), 4, 900).astype(int)
    outputs = np.clip(rng.lognormal(4.8, 0.9, n), 2, 800).astype(int)
    from servesim.calibrate.bench_runs import BenchRun
    run = BenchRun("x", "x", "", f"meta-llama/{model}", tp, 2048, n, 0, {}, inputs, outputs, True)
    result = simulate(engine_config_for(run, DEP, _profile(step)), Workload(np.zeros(n), inputs, outputs))
    s, df = result.summary, result.records.to_frame()
    data = {k: s[k] for k in ("duration", "completed", "output_throughput", "mean_ttft_ms", "median_ttft_ms",
                              "mean_tpot_ms", "median_tpot_ms", "mean_itl_ms", "median_itl_ms")}
    ttfts = (df.first_token_s - df.arrival_s).tolist()
    in_l, out_l = inputs.tolist(), outputs.tolist()
    for _ in range(failures):   # failed requests as the Lambda client recorded them: 0 tokens, TTFT 0
        in_l.append(100)
        out_l.append(0)
        ttfts.append(0.0)
    data.update(model_id=f"meta-llama/{model}", num_prompts=n + failures, request_rate="inf",
                input_lens=in_l, output_lens=out_l, ttfts=ttfts)
    sub = folder / f"prompt_{n}" / f"{tp}xH100-80GB-SXM"
    sub.mkdir(parents=True, exist_ok=True)
    (sub / f"{model}_tp{tp}_len2048.json").write_text(json.dumps(data))


@pytest.fixture(scope="module")
def bench_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    for i, (n, tp) in enumerate([(16, 1), (64, 1), (16, 2), (64, 2), (16, 4), (64, 4)]):
        write_bench(folder, n, tp, seed=i)
    for i, (n, tp) in enumerate([(16, 4), (64, 8)]):   # a second model: weights that do not scale like CPU work
        write_bench(folder, n, tp, seed=10 + i, model="Meta-Llama-3-70B-Instruct")
    return folder


def test_synthetic_deployment_is_recovered(bench_folder):
    runs, skipped = load_bench_runs([bench_folder])
    assert len(runs) == 8 and not skipped
    assert {r.tp for r in runs} == {1, 2, 4, 8} and all(r.max_model_len == 2048 for r in runs)
    targets = [RunTarget(r, DEP) for r in runs]
    params = ("step_overhead_s", "tp_step_overhead_s", "per_seq_overhead_s", "api_server_request_s")
    with e2e_fit.RowSimulator(workers=1) as sim:
        fit = fit_deployment(targets, _profile(PRIOR), sim, params, max_nfev=25, progress=False, bootstrap=50)
    assert fit.values["step_overhead_s"] == pytest.approx(TRUTH.step_overhead_s, rel=0.10)
    assert fit.values["tp_step_overhead_s"] == pytest.approx(TRUTH.tp_step_overhead_s, rel=0.25)
    assert fit.values["per_seq_overhead_s"] == pytest.approx(TRUTH.per_seq_overhead_s, rel=0.25)
    assert fit.values["api_server_request_s"] == pytest.approx(TRUTH.api_server_request_s, rel=0.15)
    assert np.max(np.abs(fit.residuals)) < 0.03
    assert set(fit.bootstrap) == set(params) and all(b["sd"] >= 0 for b in fit.bootstrap.values())
    assert fit.identifiability["step_overhead_s"].startswith("identified")


def test_unidentifiable_terms_are_named(bench_folder):
    """Decode-only information cannot separate per-token from per-sequence work: saying so beats a
    value at a bound."""
    runs, _ = load_bench_runs([bench_folder])
    targets = [RunTarget(r, DEP) for r in runs]
    with e2e_fit.RowSimulator(workers=1) as sim:
        fit = fit_deployment(targets, _profile(TRUTH), sim, ("eff_attn_prefill", "per_token_overhead_s"),
                             max_nfev=6, progress=False, bootstrap=20)
    assert not fit.identifiability["eff_attn_prefill"].startswith("identified")


def test_failed_requests_are_dropped_and_mostly_failed_files_skipped(tmp_path):
    write_bench(tmp_path, 12, 1, seed=3, failures=3)
    write_bench(tmp_path, 4, 2, seed=4, failures=9)
    runs, skipped = load_bench_runs([tmp_path])
    assert len(runs) == 1 and runs[0].num_requests == 12 and runs[0].num_failed == 3
    assert "mostly failures" in skipped[0] and "9 of 13" in skipped[0]
    data = json.loads(next(tmp_path.rglob("*tp1*.json")).read_text())
    ok = [t for t, o in zip(data["ttfts"], data["output_lens"]) if o > 0]
    assert runs[0].measured["mean_ttft_ms"] == pytest.approx(np.mean(ok) * 1e3)


def test_summary_only_file_is_compared_on_what_it_has(tmp_path, capsys):
    write_bench(tmp_path, 20, 1, seed=5)
    path = next(tmp_path.rglob("*.json"))
    data = json.loads(path.read_text())
    data["total_input_tokens"], data["total_output_tokens"] = sum(data["input_lens"]), sum(data["output_lens"])
    for key in ("input_lens", "output_lens", "ttfts"):
        del data[key]
    path.write_text(json.dumps(data))
    run, _ = read_bench_run(path)
    assert not run.detailed and set(run.metrics) == {"duration", "mean_ttft_ms", "mean_tpot_ms"}
    assert main(["validate", str(path), "--engine", "vllm-v0", "--num-scheduler-steps", "4",
                 "--plot", str(tmp_path / "v.png")]) == 0
    out = capsys.readouterr().out
    assert "summary-only files (1): compared on duration, output_throughput, mean_ttft_ms, mean_tpot_ms" in out


def test_validate_folder_prints_a_row_per_run_and_a_plot(bench_folder, tmp_path, capsys):
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"name": "synthetic", "engine": "vllm-v0", "engine_version": "0.6", "gpu": "h100-sxm",
                                "coefficients": {k: v for k, v in TRUTH.__dict__.items()},
                                "deployment": {"num_scheduler_steps": 4, "max_num_seqs": 256}}))
    png = tmp_path / "plot.png"
    assert main(["validate", str(bench_folder), "-p", str(prof), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.count("-Instruct_tp") == 8 and "median |error|" in out and png.exists()
    assert main(["validate", str(bench_folder), "-p", str(prof), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # the same deployment that made the files: zero error on every compared metric
    assert len(result["runs"]) == 8 and max(result["median_abs_rel_error"].values()) < 1e-9


def test_api_server_queue_hands_a_burst_over_when_ingested():
    """With 2 ms per request, a burst of 5 reaches the scheduler at 10 ms, all together."""
    from servesim.calibrate.bench_runs import BenchRun
    run = BenchRun("x", "x", "", "meta-llama/Meta-Llama-3-8B-Instruct", 1, 2048, 5, 0, {},
                   np.full(5, 50), np.full(5, 20), True)
    step = replace(TRUTH, api_server_request_s=2e-3)
    res = simulate(engine_config_for(run, DEP, _profile(step)), run.workload())
    first = res.records.to_frame().first_scheduled_s.to_numpy()
    assert first == pytest.approx(np.full(5, 10e-3))
    base = simulate(engine_config_for(run, DEP, _profile(replace(step, api_server_request_s=0.0))), run.workload())
    assert base.summary["mean_ttft_ms"] < res.summary["mean_ttft_ms"]


def test_calibrate_gpu_is_honoured_and_typos_are_errors(bench_folder, tmp_path, capsys):
    assert main(["calibrate", str(bench_folder), "-o", str(tmp_path / "x.json"), "--gpu", "h100-sxmm"]) != 0
    assert "unknown GPU 'h100-sxmm'" in capsys.readouterr().err
    out = tmp_path / "a100.json"
    assert main(["calibrate", str(bench_folder / "prompt_16" / "1xH100-80GB-SXM"), "-o", str(out), "--gpu", "a100-80gb",
                 "--params", "step_overhead_s", "--max-nfev", "3", "--workers", "1", "--bootstrap", "0",
                 "--no-progress", "--num-scheduler-steps", "4"]) == 0
    data = json.loads(out.read_text())
    assert data["gpu"] == "a100-80gb" and "--gpu a100-80gb" in data["generated_by"]
    h100 = tmp_path / "h100.json"
    assert main(["calibrate", str(bench_folder / "prompt_16" / "1xH100-80GB-SXM"), "-o", str(h100),
                 "--params", "step_overhead_s", "--max-nfev", "3", "--workers", "1", "--bootstrap", "0",
                 "--no-progress", "--num-scheduler-steps", "4"]) == 0
    # the A100 is slower per step: the same runs leave it less CPU time to explain
    assert (data["coefficients"]["step_overhead_s"]["value"]
            < json.loads(h100.read_text())["coefficients"]["step_overhead_s"]["value"])


def test_profiles_lists_each_deployment_with_provenance_and_error(capsys):
    from servesim.sim.profile import load_profile, shipped_profiles
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    for name in ("h100-sxm_vllm-v0", "h100-sxm_vllm-v0.5_lambda-aug2024", "h100-sxm_vllm-v0.6_lambda-sep2024"):
        assert name in shipped_profiles() and name in out
    assert "aliases: h100-sxm_vllm-v0.5_mlenergy" in out and out.count("measured error:") >= 3
    assert "leave-one-tp-out" in out and "num_scheduler_steps=10" in out
    # a shipped name or alias loads like a path; the default v0 profile is still the ML.ENERGY fit
    assert load_profile("h100-sxm_vllm-v0.5_mlenergy").source_path == load_profile("h100-sxm_vllm-v0").source_path
    sep = load_profile("h100-sxm_vllm-v0.6_lambda-sep2024")
    from servesim.sim.config import make_engine_config
    from servesim.sim.gpus import get_gpu
    from servesim.sim.model_catalog import get_model
    cfg = make_engine_config(get_model("llama-3-8b"), get_gpu("h100-sxm"), "vllm-v0", profile=sep)
    assert cfg.scheduler.num_scheduler_steps == 10   # the deployment's multi-step setting comes with it
    default = make_engine_config(get_model("llama-3-8b"), get_gpu("h100-sxm"), "vllm-v0")
    assert default.scheduler.num_scheduler_steps == 1 and default.profile.name == "h100-sxm_vllm-v0"
