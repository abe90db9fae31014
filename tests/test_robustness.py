"""Silent wrong results and lost data of issue 12, one regression test each (items 3, 5, 7, 13).

The CLI-level refusals (items 2, 8, 14, 16) are rows of ``test_bad_input.py``; measurement faults
(4, 6, 11, 15) are in ``test_measure_faults.py``; the served API (9, 10, 12, 17-20) in
``test_serve_api.py``.
"""
from __future__ import annotations

import json
import time
import tracemalloc

import numpy as np
import pytest

from servesim.cli import main
from servesim.scenarios.loader import load_scenario
from servesim.scenarios.sweep import SweepOptions, run_sweep
from servesim.sim.traces import load_trace


# ----- item 3: columns by header name, never by position -----------------------------------------
def test_csv_columns_are_matched_by_header_and_bom_is_accepted(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("\ufeffoutput_tokens,arrival_s,user,input_tokens\n7,0.0,a,100\n9,2.5,b,50\n".encode())
    w = load_trace(path)
    assert w.arrival_s.tolist() == [0.0, 2.5] and w.input_tokens.tolist() == [100, 50]
    assert w.output_tokens.tolist() == [7, 9]


def test_a_row_with_an_extra_field_is_an_error_not_a_shift(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n0.0,100,10,7\n")
    with pytest.raises(ValueError, match=r"t\.csv: line 2: 4 fields, expected 3"):
        load_trace(path)  # pandas used to read this as arrival 100 s, 10 prompt and 7 output tokens


# ----- item 5: resumed sweeps never reuse stale or failed points ---------------------------------
SCENARIO = """name: resume
deployment: {{model: llama-3.1-8b, gpu: h100-sxm}}
workload: {{kind: trace, trace: trace.csv, num_requests: 20}}
sweep: {{axis: rate, points: [2]}}
variants:
  - name: too-big
    deployment: {{model: llama-3.1-70b}}
"""


def _trace(path, prompt: int) -> None:
    rows = "".join(f"{i * 0.5},{prompt},16\n" for i in range(20))
    path.write_text("arrival_s,input_tokens,output_tokens\n" + rows)


def test_resume_fingerprints_the_trace_content_and_retries_failed_points(tmp_path):
    (tmp_path / "s.yaml").write_text(SCENARIO.format())
    _trace(tmp_path / "trace.csv", 100)
    opts = SweepOptions(out_dir=tmp_path / "out", workers=1, progress=False, report=False)
    first = run_sweep(load_scenario(tmp_path / "s.yaml"), opts)
    assert first.num_run == 2
    errors = dict(zip(first.curve["variant"], first.curve["error"]))
    assert errors["resume"] == "" and errors["too-big"]  # 70B in bf16 does not fit one H100
    again = run_sweep(load_scenario(tmp_path / "s.yaml"), opts)
    assert (again.num_run, again.num_skipped) == (1, 1)  # the failed point is retried, the good one kept
    _trace(tmp_path / "trace.csv", 1000)  # same path, new content
    edited = run_sweep(load_scenario(tmp_path / "s.yaml"), opts)
    assert edited.num_run == 2
    row = edited.curve[edited.curve["variant"] == "resume"].iloc[0]
    assert row["total_input_tokens"] == 20 * 1000


# ----- item 7: nothing completed is no result ----------------------------------------------------
def test_sweep_where_every_request_is_rejected_reports_no_saturation(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "name: rejected\ndeployment: {model: llama-3.1-8b, knobs: {max_model_len: 4096}}\n"
        "workload: {kind: burst, input_len: 5000, output_len: 8}\nsweep: {axis: burst, points: [1, 2, 4, 8]}\n")
    result = run_sweep(load_scenario(tmp_path / "s.yaml"),
                       SweepOptions(out_dir=tmp_path / "out", workers=1, progress=False, report=False))
    assert all("no request completed" in e and "max_model_len 4096" in e for e in result.curve["error"])
    regions = result.regions[0]
    assert regions.saturation.value is None and regions.equilibrium.value is None
    assert any("failed" in note for note in regions.notes)


def test_simulate_with_every_request_rejected_exits_non_zero_with_the_reason(capsys):
    code = main(["simulate", "--burst", "3", "--input-len", "5000", "--max-model-len", "4096"])
    err = capsys.readouterr().err
    assert code == 1 and "all 3 were rejected" in err and "exceed max_model_len 4096" in err


# ----- item 13: idle gaps cost no memory per sample ------------------------------------------------
def test_a_huge_idle_gap_in_a_trace_is_cheap(tmp_path, capsys):
    path = tmp_path / "gap.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n0.0,100,10\n1.0,100,10\n10000000.0,100,10\n")
    tracemalloc.start()
    t0 = time.perf_counter()
    code = main(["simulate", "--trace", str(path), "--json", "--out", str(tmp_path / "out")])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert code == 0 and time.perf_counter() - t0 < 20
    assert peak < 200 * 2**20  # was one sample per 0.2 s: 5e7 rows, ~6.8 GB
    summary = json.loads(capsys.readouterr().out)
    assert summary["completed"] == 3 and summary["duration"] > 1e7
    import pandas as pd
    series = pd.read_csv(tmp_path / "out" / "timeseries.csv")
    assert len(series) < 1000 and series["time_s"].is_monotonic_increasing
    assert np.isclose(series["time_s"].iloc[-1], summary["duration"], rtol=1e-6)


def test_time_series_is_unchanged_for_ordinary_gaps():
    from servesim.sim.metrics import TimeSeries
    ts = TimeSeries(0.2)
    ts.sample_before(1.0, (1,))
    ts.sample_before(3.0, (2,))
    ts.close(3.0, (3,))
    assert [t for t, _ in ts.rows] == pytest.approx([0.2 * k for k in range(16)])
