"""The one summary (``servesim.sim.metrics.summarize``): a hand-computed example, and the same
requests giving the same summary whether they come from a simulation, a measured sweep folder, a
``vllm bench serve`` detailed result, or a ``servesim serve`` run recorded by ``servesim measure``;
against the real bench results of ../shared/data where they carry per-request arrays."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from servesim.calibrate.measured_run import bench_requests
from servesim.calibrate.probe_run import load_probe_run
from servesim.calibrate.validate import COMPARED_KEYS, load_bench_result
from servesim.scenarios.measured import run_row
from servesim.scenarios.points import CURVE_PERCENTILES, latency_columns, latency_keys
from servesim.sim.data_paths import find_shared_data
from servesim.sim.metrics import (
    InterTokenLatencies,
    RequestColumns,
    RequestRecords,
    itl_from_gaps,
    latency_stats,
    summarize,
)

# Four requests (seconds): three finish, one is rejected at arrival.  Tokens of request 0 at
# 0.1, 0.2, 0.3, 0.4, 0.5; of request 1 at 0.4, 0.6, 0.8, 1.0; request 2 has a single token.
ARRIVAL = [0.0, 0.2, 0.5, 0.6]
TOKEN_TIMES = [[0.1, 0.2, 0.3, 0.4, 0.5], [0.4, 0.6, 0.8, 1.0], [0.8], []]
INPUT = [10, 20, 30, 40]
STATUS = [1, 1, 1, 2]  # finished x3, rejected


def simulated() -> tuple[RequestRecords, InterTokenLatencies]:
    """The requests as the engine records them: per-request columns, ITL as (gap, count) pairs."""
    records = RequestRecords(4)
    c = records.cols
    for i, (arrival, tokens) in enumerate(zip(ARRIVAL, TOKEN_TIMES)):
        c["arrival_s"][i] = arrival
        c["input_tokens"][i] = INPUT[i]
        if tokens:
            c["first_scheduled_s"][i] = arrival
            c["first_token_s"][i], c["finish_s"][i] = tokens[0], tokens[-1]
            c["output_tokens"][i] = len(tokens)
    records.status[:] = STATUS
    itl = InterTokenLatencies()
    itl.add(0.1, 4)  # a decode step gives its gap to every request in the batch: one pair, a count
    itl.add(0.2, 3)
    return records, itl


def gaps() -> list[list[float]]:
    return [list(np.diff(t)) for t in TOKEN_TIMES]


def assert_same(a: dict, b: dict, keys=None) -> None:
    keys = sorted(set(a) | set(b)) if keys is None else keys
    assert set(keys) <= set(a) and set(keys) <= set(b), sorted(set(keys) ^ (set(a) & set(b)))
    diff = {k: (a[k], b[k]) for k in keys if not math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-9)}
    assert not diff, diff


def test_hand_computed_summary() -> None:
    records, itl = simulated()
    s = summarize(records, itl, percentiles=(50, 99))
    # duration: first arrival (0.0, the rejected request counts too) to last finish (1.0)
    assert (s["duration"], s["completed"], s["failed"]) == (1.0, 3, 1)
    assert (s["total_input_tokens"], s["total_output_tokens"]) == (60, 10)  # finished requests only
    assert (s["request_throughput"], s["output_throughput"], s["total_token_throughput"]) == (3.0, 10.0, 70.0)
    expected = {
        # TTFT 100, 200, 300 ms: population std sqrt(20000/3); p99 at rank 0.99*2 = 1.98 -> 298
        "ttft": (200.0, 200.0, math.sqrt(20000 / 3), 298.0),
        # TPOT over requests with > 1 token: 400/4 = 100 and 600/3 = 200
        "tpot": (150.0, 150.0, 50.0, 199.0),
        # ITL: 100 ms x4, 200 ms x3 (the single-token request has none)
        "itl": (1000 / 7, 100.0, math.sqrt((4 * (100 - 1000 / 7) ** 2 + 3 * (200 - 1000 / 7) ** 2) / 7), 200.0),
        # E2EL 500, 800, 300 -> sorted 300, 500, 800; p99 = 500 + 0.98 * 300
        "e2el": (1600 / 3, 500.0, math.sqrt(((500 - 1600 / 3) ** 2 + (800 - 1600 / 3) ** 2
                                            + (300 - 1600 / 3) ** 2) / 3), 794.0),
    }
    for metric, (mean, median, std, p99) in expected.items():
        got = tuple(s[f"{k}_{metric}_ms"] for k in ("mean", "median", "std", "p99"))
        assert got == pytest.approx((mean, median, std, p99), rel=1e-12), metric
        assert s[f"p50_{metric}_ms"] == s[f"median_{metric}_ms"]
    assert "request_goodput" not in s


def test_goodput_counts_requests_meeting_every_slo() -> None:
    records, itl = simulated()
    # TTFT <= 250 ms and TPOT <= 150 ms: request 0 only (request 1's TPOT is 200, request 2's TTFT 300)
    assert summarize(records, itl, goodput_slos_ms={"ttft": 250, "tpot": 150})["request_goodput"] == 1.0
    # TPOT alone: a single-token request has TPOT 0 and meets it (vLLM's rule)
    assert summarize(records, itl, goodput_slos_ms={"tpot": 150})["request_goodput"] == 2.0
    with pytest.raises(ValueError, match="goodput SLO on 'itl'"):
        summarize(records, itl, goodput_slos_ms={"itl": 10})


def test_weighted_and_expanded_inter_token_latencies_agree() -> None:
    rng = np.random.default_rng(5)
    values, counts = rng.random(300), rng.integers(1, 9, 300)
    weighted = latency_stats("itl", values, counts, percentiles=(50, 90, 99, 99.9))
    expanded = np.repeat(values, counts)
    assert_same(weighted, latency_stats("itl", expanded, percentiles=(50, 90, 99, 99.9)))
    assert weighted["p99.9_itl_ms"] == pytest.approx(np.percentile(expanded, 99.9), rel=1e-12)
    assert weighted["std_itl_ms"] == pytest.approx(np.std(expanded), rel=1e-12)


def test_nothing_completed_reports_zeros_as_vllm_does() -> None:
    records = RequestRecords(2)
    records.cols["arrival_s"][:] = [0.0, 1.0]
    records.status[:] = 2
    s = summarize(records, InterTokenLatencies())
    assert (s["duration"], s["completed"], s["failed"], s["request_throughput"]) == (0.0, 0, 2, 0.0)
    assert s["mean_ttft_ms"] == s["p99_e2el_ms"] == s["median_itl_ms"] == 0.0


def test_warm_up_requests_are_not_counted() -> None:
    records, itl = simulated()
    s = summarize(records, itl, first_counted=1)
    assert (s["completed"], s["failed"], s["total_input_tokens"]) == (2, 1, 50)
    assert s["duration"] == pytest.approx(0.8)  # from request 1's arrival at 0.2
    assert s["mean_ttft_ms"] == pytest.approx(250.0)


def test_parquet_records_read_back_give_the_same_summary(tmp_path) -> None:
    records, itl = simulated()
    records.to_frame().to_parquet(tmp_path / "requests.parquet")
    frame = pd.read_parquet(tmp_path / "requests.parquet")
    assert_same(summarize(frame, itl), summarize(records, itl))
    assert_same(latency_columns(frame, CURVE_PERCENTILES), latency_columns(records, CURVE_PERCENTILES))


def test_measured_sweep_folder_gives_the_simulated_summary(tmp_path) -> None:
    records, itl = simulated()
    folder = tmp_path / "demand=4"
    folder.mkdir()
    frame = records.to_frame()
    lines = [json.dumps({"arrival_s": r.arrival_s, "first_token_s": None if math.isnan(r.first_token_s) else
                         r.first_token_s, "finish_s": None if math.isnan(r.finish_s) else r.finish_s,
                         "input_tokens": int(r.input_tokens), "output_tokens": int(r.output_tokens),
                         "status": str(r.status), "itls": g}) for r, g in zip(frame.itertuples(), gaps())]
    (folder / "requests.jsonl").write_text("\n".join(lines) + "\n")
    row = run_row(folder, tmp_path)
    want = summarize(records, itl, percentiles=CURVE_PERCENTILES)
    keys = ["completed", "failed", "request_throughput", "output_throughput", "mean_ttft_ms", "mean_tpot_ms",
            "mean_itl_ms", "median_itl_ms", "p99_itl_ms", "mean_e2el_ms", *latency_keys(CURVE_PERCENTILES)]
    assert_same(row, want, keys)
    assert row["duration_s"] == want["duration"] and row["input_throughput"] == 60.0 and row["error"] == ""


def bench_detailed(duration_s: float) -> dict:
    """The requests as ``vllm bench serve --save-result --save-detailed`` writes them (vLLM 0.27)."""
    ok = [s == 1 for s in STATUS]
    return {"duration": duration_s, "completed": sum(ok), "failed": len(ok) - sum(ok),
            "input_lens": INPUT, "output_lens": [len(t) for t in TOKEN_TIMES],
            "ttfts": [t[0] - a if t else 0.0 for a, t in zip(ARRIVAL, TOKEN_TIMES)],
            "itls": gaps(), "start_times": [1000.0 + a for a in ARRIVAL],
            "errors": ["" if good else "HTTP 400: prompt too long" for good in ok],
            "request_rate": "inf", "model_id": "meta-llama/Llama-3.1-8B-Instruct"}


def test_bench_detailed_result_gives_the_simulated_summary(tmp_path) -> None:
    records, itl = simulated()
    data = bench_detailed(1.0)  # the bench's wall clock equals first arrival to last finish here
    assert_same(summarize(*bench_requests(data), duration_s=data["duration"]), summarize(records, itl))
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    run = load_bench_result(path)
    assert_same(run.summary, summarize(records, itl), list(COMPARED_KEYS))


def test_bench_file_without_token_times_leaves_out_what_it_cannot_know() -> None:
    data = bench_detailed(2.0)
    del data["itls"]
    s = summarize(*bench_requests(data), duration_s=data["duration"])
    assert s["request_throughput"] == 1.5 and s["mean_ttft_ms"] == pytest.approx(200.0)
    assert not any(k.endswith(("_tpot_ms", "_e2el_ms", "_itl_ms")) for k in s)


def write_served_run(run_dir: Path) -> None:
    """A ``servesim measure`` run against ``servesim serve --speed 4``: client times in wall
    seconds (a quarter of simulated ones, plus HTTP overhead), server stamps in simulated seconds."""
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"model": "llama-3.1-8b", "time_scale": 4.0,
                                                  "server": {"version": "servesim", "time_scale": 4.0}}))
    (run_dir / "points.jsonl").write_text(json.dumps({"point_id": "concurrency/c4", "attempt": 1,
                                                      "status": "complete"}) + "\n")
    lines = []
    for i, (arrival, tokens) in enumerate(zip(ARRIVAL, TOKEN_TIMES)):
        send = 500.0 + arrival / 4
        wall = [(t - arrival) / 4 + 0.003 for t in tokens]  # 3 ms of HTTP overhead per chunk
        lines.append(json.dumps({
            "point_id": "concurrency/c4", "family": "concurrency", "attempt": 1, "index": i,
            "prompt_tokens": INPUT[i], "max_tokens": max(len(tokens), 1), "send_time": send,
            "first_token_time": send + wall[0] if tokens else None,
            "finish_time": send + wall[-1] if tokens else None, "token_times": wall,
            "output_tokens": len(tokens), "status": "ok" if tokens else "http_error",
            "server_arrival_time": 7.0 + arrival, "server_token_times": [7.0 + t for t in tokens]}))
    (run_dir / "requests.jsonl").write_text("\n".join(lines) + "\n")


def test_served_run_records_give_the_simulated_summary(tmp_path) -> None:
    records, itl = simulated()
    write_served_run(tmp_path / "run")
    [run] = load_probe_run(tmp_path / "run")
    # the rejected request has no server stamps: the point is read on the client's clock
    assert "client's clock" in run.notes[-1] and run.notes[0] == "1 of 4 requests did not end ok"
    want = summarize(records, itl)
    itl_keys = [k for k in want if k.endswith(("_itl_ms", "_tpot_ms"))]
    assert_same(run.summary, want, ["completed", "failed", "total_input_tokens", "total_output_tokens",
                                    *itl_keys])
    # each chunk's 3 wall-clock ms of overhead, times --speed 4, lands on TTFT, E2EL and the duration
    for key in ("mean_ttft_ms", "p99_ttft_ms", "median_e2el_ms"):
        assert run.summary[key] == pytest.approx(want[key] + 12.0, rel=1e-9)
    assert run.summary["duration"] == pytest.approx(want["duration"] + 0.012, rel=1e-9)
    # without it, every request carries the simulated clock's stamps: exactly the simulated summary
    lines = (tmp_path / "run" / "requests.jsonl").read_text().splitlines()
    (tmp_path / "run" / "requests.jsonl").write_text("\n".join(lines[:3]) + "\n")
    [served] = load_probe_run(tmp_path / "run")
    assert "simulator's clock" in served.notes[-1]
    records.status[3] = 0  # the request that was never sent
    assert_same(served.summary, summarize(records, itl))


def test_bad_per_request_records_name_the_problem() -> None:
    frame = simulated()[0].to_frame()
    with pytest.raises(ValueError, match="status 'ok' is not one of"):
        RequestColumns.from_frame(frame.assign(status="ok"))
    with pytest.raises(ValueError, match=r"lack column\(s\) \['finish_s'\]"):
        RequestColumns.from_frame(frame.drop(columns=["finish_s"]))
    with pytest.raises(ValueError, match="output_tokens has 3 rows, status has 4"):
        RequestColumns(*(np.zeros(4),) * 4, np.zeros(3), np.ones(4, dtype=np.int8))


# ------------------------------------------------------------------- against real bench results


def _lambda_files() -> list[Path]:
    try:
        root = find_shared_data("h100")
    except FileNotFoundError:
        return []
    return sorted(root.glob("lambda_*/prompt_*/*/*.json"))


def test_real_bench_results_summary_keys_match_vllms_own() -> None:
    """Every Lambda result whose requests all succeeded: what its per-request arrays determine
    (counts, tokens, throughputs over the file's duration, TTFT statistics) equals the summary
    vLLM's benchmark wrote into the same file."""
    files = _lambda_files()
    if not files:
        pytest.skip("no ../shared/data/h100/lambda_* bench results (set SERVESIM_DATA)")
    checked = 0
    for path in files:
        data = json.loads(path.read_text())
        if "ttfts" not in data or min(data["output_lens"]) == 0:
            continue  # failed requests: that vLLM counted them completed, with TTFT 0 (data README)
        s = summarize(*bench_requests(data), duration_s=data["duration"])
        keys = ["completed", "total_input_tokens", "total_output_tokens", "request_throughput",
                "output_throughput", "mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p99_ttft_ms"]
        assert_same(s, data, keys)
        checked += 1
    assert checked >= 5, f"only {checked} Lambda files without failures"


def test_real_bench_results_with_token_times() -> None:
    """The full comparison (TPOT, ITL, E2EL too) needs a result saved with per-request ``itls``."""
    detailed = [p for p in _lambda_files() if "itls" in json.loads(p.read_text())]
    if not detailed:
        pytest.skip("no bench result in ../shared/data has per-request itls (the Lambda files hold "
                    "input_lens, output_lens and ttfts only); tests/test_oracle_summary.py compares "
                    "with vLLM's own calculate_metrics instead")
    for path in detailed:
        data = json.loads(path.read_text())
        s = summarize(*bench_requests(data), duration_s=data["duration"])
        assert_same(s, data, [k for k in s if k in data and isinstance(data[k], (int, float))])


def test_itl_from_gaps_skips_requests_without_gaps() -> None:
    values, counts = itl_from_gaps([[0.1, 0.2], None, math.nan, []]).arrays()
    assert values.tolist() == [0.1, 0.2] and counts.tolist() == [1, 1]
