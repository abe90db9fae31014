"""The /metrics parser and metrics.csv writer (servesim.measure.metrics_csv).

The fixtures ``tests/fixtures/measure/vllm_v{0,1}_metrics.txt`` are hand-written /metrics pages in
the Prometheus text format with the metric names, types and labels vLLM documents for 0.5.x (v0
engine: ``gpu_cache_usage_perc``, ``time_per_output_token_seconds``, ``num_requests_swapped``) and
0.10/0.11 (v1 engine: ``kv_cache_usage_perc``, ``inter_token_latency_seconds``, ``engine`` label,
``_created`` samples); values are made up and histograms shortened.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from servesim.measure.metrics_csv import (
    MetricsCSV,
    cache_config,
    column,
    parse_metrics,
    read_metrics,
    series_name,
    split_series,
)

FIXTURES = Path(__file__).parent / "fixtures" / "measure"


def _page(version: str) -> dict[str, float]:
    return parse_metrics((FIXTURES / f"vllm_{version}_metrics.txt").read_text())


def test_v0_page_parses_to_series_under_vllm_names():
    v = _page("v0")
    m = 'model_name="meta-llama/Meta-Llama-3.1-8B-Instruct"'
    assert v[f"vllm:num_requests_running{{{m}}}"] == 64.0
    assert v[f"vllm:gpu_cache_usage_perc{{{m}}}"] == pytest.approx(0.4532)
    assert v[f"vllm:num_preemptions_total{{{m}}}"] == 3.0
    assert v[f'vllm:time_to_first_token_seconds_bucket{{le="+Inf",{m}}}'] == 320.0
    assert v[f'vllm:request_success_total{{finished_reason="stop",{m}}}'] == 20.0
    assert v['python_gc_objects_collected_total{generation="1"}'] == 2641.0
    assert cache_config(v)["num_gpu_blocks"] == "27153"
    assert cache_config(v)["block_size"] == "16"


def test_v1_page_parses_and_drops_created_timestamps():
    v = _page("v1")
    m = 'engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"'
    assert v[f"vllm:kv_cache_usage_perc{{{m}}}"] == pytest.approx(0.7125)
    assert v[f"vllm:inter_token_latency_seconds_count{{{m}}}"] == 392448.0
    assert v[f'vllm:request_success_total{{{m.split(",")[0]},finished_reason="length",{m.split(",")[1]}}}'] == 640.0
    assert not any("_created" in k for k in v)
    labels = cache_config(v)
    assert labels["num_gpu_blocks"] == "27571" and labels["enable_prefix_caching"] == "True"


@pytest.mark.parametrize("version, usage", [("v0", 0.4532), ("v1", 0.7125)])
def test_aliases_find_kv_usage_under_either_generations_name(tmp_path, version, usage):
    out = MetricsCSV(tmp_path / "m.csv")
    out.append(1.0, _page(version))
    out.close()
    df = read_metrics(tmp_path / "m.csv")
    assert column(df, "kv_cache_usage").iloc[0] == pytest.approx(usage)
    assert column(df, "running").iloc[0] in (64.0, 128.0)
    assert column(df, "no:such_metric") is None


def test_malformed_text_is_an_error():
    with pytest.raises(ValueError):
        parse_metrics('vllm:num_requests_running{model_name="x" 1.0\n')


def test_series_names_round_trip():
    labels = {"model_name": "m", "le": "+Inf", "engine": "0"}
    name = series_name("vllm:x_bucket", labels)
    assert name == 'vllm:x_bucket{engine="0",le="+Inf",model_name="m"}'
    assert split_series(name) == ("vllm:x_bucket", labels)
    assert split_series("plain") == ("plain", {})


def test_union_header_keeps_series_that_appear_late(tmp_path):
    path = tmp_path / "metrics.csv"
    out = MetricsCSV(path)
    out.append(10.0, {"a": 1.0})
    out.append(10.2, {"a": 2.0, "b": 5.0})     # b appears late: the file is rewritten with it
    out.append(10.4, {"b": 6.0, "c{x=\"1\"}": 7.0})
    out.close()
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["time_s", "a", "b", 'c{x="1"}']
    assert rows[1] == ["10.0", "1.0", "", ""]
    assert rows[2] == ["10.2", "2.0", "5.0", ""]
    assert rows[3] == ["10.4", "", "6.0", "7.0"]
    # Resuming appends under the same header, and widens again if needed.
    again = MetricsCSV(path)
    assert again.columns == rows[0] and again.rows == 3
    again.append(11.0, {"a": 3.0, "d": 1.0})
    again.close()
    df = read_metrics(path)
    assert list(df.columns) == ["time_s", "a", "b", 'c{x="1"}', "d"]
    assert len(df) == 4 and df.a.tolist()[-1] == 3.0 and df.d.isna().sum() == 3
