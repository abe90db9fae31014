"""Sweeps end to end (servesim.scenarios.sweep and the CLI): a tiny two-variant sweep writes every
output, an interrupted sweep resumes without re-running finished points, a changed deployment
re-runs its points, the Dask executor gives the same rows, and `servesim regions` re-derives the
regions of a sweep folder and of a measured one."""
from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from servesim.cli import main
from servesim.scenarios import sweep as sweep_mod
from servesim.scenarios.loader import load_scenario
from servesim.scenarios.sweep import SweepOptions, load_points, run_sweep

TINY = textwrap.dedent("""
    name: tiny
    description: a tiny sweep for the tests
    base_variant: h100
    deployment: {model: llama-3.1-8b, gpu: h100-sxm}
    workload: {kind: poisson, input_len: 256, output_len: 32, num_requests: 40}
    sweep: {axis: rate, points: [2, 10, 40, 80], seeds: 2}
    economics:
      prices: {per_1k_billable_tokens: 0.0002}
      costs: {gpu_rental_per_gpu_hour: 2.5, energy_price_per_kwh: 0.1, pue: 1.2}
    slos: ["p99_ttft_ms <= 400", "p99_tpot_ms <= 30"]
    advice: {target_demand: 100}
    variants:
      - name: h200
        deployment: {gpu: h200}
""")
VOLATILE = ["wall_s"]


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scn") / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def finished(tiny_yaml, tmp_path_factory) -> Path:
    """A finished tiny sweep on two local processes, with its report."""
    out = tmp_path_factory.mktemp("sweep") / "tiny"
    result = run_sweep(load_scenario(tiny_yaml), SweepOptions(out_dir=out, workers=2, progress=False))
    assert result.num_run == 16 and result.num_skipped == 0
    return out


def _rows(frame: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in frame.columns if c not in VOLATILE]
    return frame[cols].sort_values(["variant", "demand", "seed"]).reset_index(drop=True)


def test_outputs_of_a_finished_sweep(finished) -> None:
    for name in ("curve.csv", "curve.parquet", "curve_mean.csv", "regions.json", "regions.csv", "report.html",
                 "report.md", "scenario.json", "scenario.yaml"):
        assert (finished / name).is_file(), name
    curve = pd.read_parquet(finished / "curve.parquet")
    assert len(curve) == 16 and set(curve["variant"]) == {"h100", "h200"}
    for col in ("output_throughput", "p99_ttft_ms", "p99_tpot_ms", "peak_kv_usage", "num_preemptions",
                "mean_num_waiting", "mean_gpu_power_w", "energy_per_output_token_j", "revenue_per_h", "cost_per_h",
                "profit_per_h", "cost_per_1m_tokens"):
        assert curve[col].notna().all(), col
    # economics follow the documented formulas
    row = curve.iloc[0]
    tokens = row["input_throughput"] + row["output_throughput"]
    assert row["revenue_per_h"] == pytest.approx(3600 * tokens * 0.0002 / 1000)
    assert row["cost_per_h"] == pytest.approx(2.5 + row["mean_gpu_power_w"] / 1000 * 1.2 * 0.1)
    regions = json.loads((finished / "regions.json").read_text())
    assert [r["variant"] for r in regions] == ["h100", "h200"]
    assert regions[0]["break_even"]["value"] is not None
    assert (finished / "series" / "h100" / "rate=2.parquet").exists()       # first seed keeps its series
    md = (finished / "report.md").read_text()
    assert "## Regions" in md and "## Advice" in md and "replica(s)" in md
    assert all((finished / "plots" / name).exists() for name in ("throughput.png", "regions_h100.png"))


def test_interrupted_sweep_resumes(tiny_yaml, finished, tmp_path, monkeypatch) -> None:
    sf = load_scenario(tiny_yaml)
    out = tmp_path / "resumed"
    real_save, saved = sweep_mod._save, []

    def save_then_interrupt(*args):
        real_save(*args)
        saved.append(1)
        if len(saved) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(sweep_mod, "_save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sf, SweepOptions(out_dir=out, workers=1, progress=False, report=False))
    assert len(list((out / "points").rglob("*.json"))) == 3
    assert not (out / "curve.csv").exists()          # nothing half-written looks complete
    monkeypatch.setattr(sweep_mod, "_save", real_save)
    result = run_sweep(sf, SweepOptions(out_dir=out, workers=1, progress=False, report=False))
    assert (result.num_run, result.num_skipped) == (13, 3)
    pd.testing.assert_frame_equal(_rows(pd.read_parquet(out / "curve.parquet")),
                                  _rows(pd.read_parquet(finished / "curve.parquet")))
    again = run_sweep(sf, SweepOptions(out_dir=out, workers=1, progress=False, report=False))
    assert (again.num_run, again.num_skipped) == (0, 16)


def test_changed_deployment_reruns_its_points(tiny_yaml, tmp_path) -> None:
    sf = load_scenario(tiny_yaml)
    sf = replace(sf, variants=sf.variants[:1])
    out = tmp_path / "changed"
    run_sweep(sf, SweepOptions(out_dir=out, workers=1, progress=False, report=False))
    base = sf.variants[0]
    bigger = replace(base, deployment=replace(base.deployment, knobs=replace(base.deployment.knobs, max_num_seqs=8)))
    result = run_sweep(replace(sf, variants=(bigger,)), SweepOptions(out_dir=out, workers=1, progress=False,
                                                                      report=False))
    assert result.num_run == 8                                  # a new fingerprint: nothing reused
    assert set(result.curve["max_num_seqs"]) == {8}
    # prices are not part of the fingerprint: re-pricing reuses every point
    cheaper = replace(bigger, slos=())
    result = run_sweep(replace(sf, variants=(cheaper,)), SweepOptions(out_dir=out, workers=1, progress=False,
                                                                       report=False))
    assert result.num_run == 0


def test_dask_executor_gives_the_same_rows(tiny_yaml, finished, tmp_path) -> None:
    pytest.importorskip("distributed")
    sf = load_scenario(tiny_yaml)
    sf = replace(sf, variants=(replace(sf.variants[0], sweep=replace(sf.variants[0].sweep, points=(2.0, 40.0))),))
    result = run_sweep(sf, SweepOptions(out_dir=tmp_path / "dask", executor="dask", workers=1, progress=False,
                                        report=False))
    assert result.num_run == 4
    local = pd.read_parquet(finished / "curve.parquet")
    local = local[(local["variant"] == "h100") & local["demand"].isin([2.0, 40.0])]
    pd.testing.assert_frame_equal(_rows(result.curve)[_rows(local).columns], _rows(local), check_dtype=False)


def test_dask_missing_is_a_clear_error(tmp_path, monkeypatch) -> None:
    import builtins
    real_import = builtins.__import__

    def no_dask(name, *args, **kwargs):
        if name.startswith("dask"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    with pytest.raises(ValueError, match=r"pip install 'servesim\[distributed\]'"):
        list(sweep_mod._run_dask([], 1, None))


def test_cli_sweep_and_regions(tiny_yaml, finished, tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    assert main(["sweep", str(tiny_yaml), "--out", str(out), "--quiet", "--workers", "1", "--no-report",
                 "--variant", "h200"]) == 0
    text = capsys.readouterr().out
    assert "servesim sweep tiny: 8 points (8 run, 0 already done)" in text and "saturation" in text
    assert main(["regions", str(finished), "--slo", "p99_ttft_ms<=100"]) == 0
    text = capsys.readouterr().out
    assert "largest demand meeting SLOs" in text and "h200" in text
    assert main(["regions", str(finished), "--json", "--no-report"]) == 0
    data = json.loads(capsys.readouterr().out.split("\n  regions written")[0])
    assert data[0]["saturation"]["name"] == "saturation"
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2


def test_cli_regions_on_a_measured_curve(finished, tmp_path, capsys) -> None:
    measured = tmp_path / "measured"
    measured.mkdir()
    curve = load_points(finished, load_scenario(finished / "scenario.json"))
    curve = curve[curve["variant"] == "h100"]
    curve[["demand", "seed", "output_throughput", "input_throughput", "p99_ttft_ms", "p99_tpot_ms",
           "mean_num_waiting", "peak_kv_usage", "num_preemptions"]].to_csv(measured / "curve.csv", index=False)
    assert main(["regions", str(measured), "--slo", "p99_ttft_ms<=400"]) == 0
    text = capsys.readouterr().out
    assert "measured" in text and "saturation (end of B)" in text
    report = tmp_path / "measured-report"
    assert main(["regions", str(measured), "--out", str(report)]) == 0
    assert (report / "regions.json").exists() and (report / "report.html").exists()
