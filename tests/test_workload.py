"""Tests for workloads (servesim.sim.workload) and trace loaders (servesim.sim.traces).

Layers: exact unit tests on tiny fixture files written to tmp_path, statistical property tests
(rates, coefficients of variation) with generous tolerances on large samples, and checks on the
real shared traces (skipped when shared/data is absent).
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from servesim.sim import data_paths, traces
from servesim.sim.workload import (
    ClosedLoop,
    LengthDist,
    Workload,
    WorkloadSpec,
    build_workload,
    burst_arrivals,
    fixed_lengths,
    gamma_arrivals,
    poisson_arrivals,
    random_lengths,
    sample_lengths,
    sharegpt_lengths,
    spawn_streams,
)


def _shared_data() -> Path | None:
    try:
        return data_paths.find_shared_data("traces")
    except FileNotFoundError:
        return None


SHARED = _shared_data()
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared/data not found (set SERVESIM_DATA)")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _same(a: Workload, b: Workload) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f))
               for f in ("arrival_s", "input_tokens", "output_tokens"))


# ----------------------------------------------------------------------------------- Workload


def test_workload_holds_read_only_typed_arrays():
    w = Workload([0, 0.5, 0.5], [10, 20, 30], np.array([1.0, 2.0, 3.0]), "w")
    assert len(w) == 3
    assert w.arrival_s.dtype == np.float64 and w.input_tokens.dtype == np.int64
    assert w.output_tokens.dtype == np.int64
    with pytest.raises(ValueError):
        w.input_tokens[0] = 5
    assert w.duration_s == 0.5 and w.mean_rate == 4.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(arrival_s=[0, 2, 1], input_tokens=[1, 1, 1], output_tokens=[1, 1, 1]), "sorted"),
    (dict(arrival_s=[-1, 0], input_tokens=[1, 1], output_tokens=[1, 1]), ">= 0"),
    (dict(arrival_s=[0, np.nan], input_tokens=[1, 1], output_tokens=[1, 1]), "finite"),
    (dict(arrival_s=[0, 1], input_tokens=[1, 0], output_tokens=[1, 1]), "input_tokens must be >= 1"),
    (dict(arrival_s=[0, 1], input_tokens=[1, 1], output_tokens=[1, 1.5]), "whole numbers"),
    (dict(arrival_s=[0, 1], input_tokens=[1, 1], output_tokens=[1]), "equal lengths"),
    (dict(arrival_s=[0, 1], input_tokens=[1, 1], output_tokens=[1, 1], prefix_hashes=[(1,)]),
     "one entry per request"),
])
def test_workload_rejects_bad_arrays(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Workload(**kwargs)


# ------------------------------------------------------------------------------------ arrivals


def test_burst_and_infinite_rate_put_everything_at_zero():
    assert burst_arrivals(4).tolist() == [0.0] * 4
    assert gamma_arrivals(4, math.inf, 1.0, np.random.default_rng(0)).tolist() == [0.0] * 4


def test_poisson_mean_rate_within_one_percent():
    arrivals = poisson_arrivals(200_000, 10.0, np.random.default_rng(1))
    assert arrivals[0] == 0.0 and np.all(np.diff(arrivals) >= 0)
    assert (len(arrivals) - 1) / arrivals[-1] == pytest.approx(10.0, rel=0.01)
    gaps = np.diff(arrivals)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.02)


def test_poisson_is_gamma_with_burstiness_one():
    a = poisson_arrivals(100, 3.0, np.random.default_rng(7))
    b = gamma_arrivals(100, 3.0, 1.0, np.random.default_rng(7))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gamma_burstiness_sets_the_coefficient_of_variation(burstiness):
    gaps = np.diff(gamma_arrivals(200_000, 5.0, burstiness, np.random.default_rng(2)))
    assert gaps.mean() == pytest.approx(1 / 5.0, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.03)


def test_lower_burstiness_is_burstier_and_infinite_is_even():
    cv = {b: np.std(g := np.diff(gamma_arrivals(50_000, 2.0, b, np.random.default_rng(3)))) / g.mean()
          for b in (0.5, 1.0, 2.0)}
    assert cv[0.5] > cv[1.0] > cv[2.0]
    even = gamma_arrivals(5, 2.0, math.inf, np.random.default_rng(3))
    assert even.tolist() == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])


@pytest.mark.parametrize("rate, burstiness", [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0)])
def test_gamma_rejects_bad_parameters(rate, burstiness):
    with pytest.raises(ValueError, match="rate|burstiness"):
        gamma_arrivals(3, rate, burstiness, np.random.default_rng(0))


# ------------------------------------------------------------------------------------- lengths


def test_fixed_and_random_lengths():
    i, o = fixed_lengths(3, 100, 7)
    assert i.tolist() == [100] * 3 and o.tolist() == [7] * 3
    i, o = random_lengths(10_000, 1000, 100, 0.5, np.random.default_rng(0))
    assert i.min() >= 500 and i.max() <= 1500 and o.min() >= 50 and o.max() <= 150
    assert i.mean() == pytest.approx(1000, rel=0.02)
    i, o = random_lengths(5, 1000, 100, 0.0, np.random.default_rng(0))
    assert i.tolist() == [1000] * 5 and o.tolist() == [100] * 5


def test_sample_lengths_distributions():
    rng = np.random.default_rng(0)
    u = sample_lengths(10_000, "uniform:10:20", rng)
    assert u.min() == 10 and u.max() == 20 and u.dtype == np.int64
    n = sample_lengths(10_000, "normal:5:20", rng)
    assert n.min() == 1  # clipped at one token
    ln = sample_lengths(200_000, "lognormal:1000:0.5", rng)
    assert ln.mean() == pytest.approx(1000, rel=0.02)
    assert np.median(ln) == pytest.approx(1000 * math.exp(-0.125), rel=0.02)
    assert sample_lengths(3, "64", rng).tolist() == [64] * 3
    assert sample_lengths(3, LengthDist.parse("fixed:8"), rng).tolist() == [8] * 3
    assert sample_lengths(100_000, "exponential:50", rng).mean() == pytest.approx(50, rel=0.03)


@pytest.mark.parametrize("text", ["pareto:1:2", "uniform:5", "uniform:9:3", "normal:a:b", "fixed:-3"])
def test_sample_lengths_rejects_bad_distributions(text):
    with pytest.raises(ValueError):
        sample_lengths(3, text, np.random.default_rng(0))


def test_sharegpt_lengths_from_fixture(tmp_path):
    path = _write(tmp_path / "sg.csv", "num_prefill_tokens,num_decode_tokens,num_total_tokens\n"
                  "10,1,11\n20,2,22\n30,3,33\n40,4,44\n")
    i, o = sharegpt_lengths(4, np.random.default_rng(0), path=path)
    assert sorted(i.tolist()) == [10, 20, 30, 40]  # without replacement: every row once
    assert np.array_equal(o * 10, i)  # pairs stay together
    i, o = sharegpt_lengths(50, np.random.default_rng(0), path=path, max_input=25)
    assert set(i.tolist()) == {10, 20} and np.array_equal(o * 10, i)
    with pytest.raises(ValueError, match="no row"):
        sharegpt_lengths(1, np.random.default_rng(0), path=path, max_output=0)


@needs_shared
def test_sharegpt_lengths_from_shared_data():
    i, o = sharegpt_lengths(40_000, np.random.default_rng(0), max_input=2048)
    assert len(i) == 40_000 and i.max() <= 2048 and i.min() >= 1 and o.min() >= 1


# --------------------------------------------------------------------------- specs and streams


def test_build_workload_is_deterministic():
    spec = WorkloadSpec("gamma", num_requests=500, rate=4.0, burstiness=0.5, dataset="dist",
                        input_dist="lognormal:800:1", output_dist="uniform:1:300")
    a, b, c = build_workload(spec, 11), build_workload(spec, 11), build_workload(spec, 12)
    assert _same(a, b)
    assert not np.array_equal(a.arrival_s, c.arrival_s)
    assert not np.array_equal(a.input_tokens, c.input_tokens)


def test_changing_rate_keeps_lengths_and_changing_lengths_keeps_arrivals():
    base = WorkloadSpec("poisson", num_requests=1000, rate=2.0, dataset="random", range_ratio=0.5)
    a = build_workload(base, 5)
    faster = build_workload(replace(base, rate=20.0), 5)
    assert np.array_equal(a.input_tokens, faster.input_tokens)
    assert np.array_equal(a.output_tokens, faster.output_tokens)
    assert not np.array_equal(a.arrival_s, faster.arrival_s)
    other_lengths = build_workload(replace(base, dataset="dist", input_dist="normal:500:100",
                                           output_dist="exponential:30"), 5)
    assert np.array_equal(a.arrival_s, other_lengths.arrival_s)


def test_streams_are_independent_and_reproducible():
    s1, s2 = spawn_streams(3), spawn_streams(3)
    draws = [s.random(4) for s in s1]
    assert all(np.array_equal(d, s.random(4)) for d, s in zip(draws, s2))
    assert not np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[1], draws[2])


def test_burst_spec_and_spec_validation():
    w = build_workload(WorkloadSpec("burst", num_requests=3, input_len=9, output_len=2))
    assert w.arrival_s.tolist() == [0.0] * 3 and w.input_tokens.tolist() == [9] * 3
    with pytest.raises(ValueError, match="needs rate"):
        WorkloadSpec("poisson", num_requests=3)
    with pytest.raises(ValueError, match="needs num_requests"):
        WorkloadSpec("burst")
    with pytest.raises(ValueError, match="needs trace_path"):
        WorkloadSpec("trace")
    with pytest.raises(ValueError, match="needs num_users"):
        WorkloadSpec("closed", num_requests=3)
    with pytest.raises(ValueError):
        WorkloadSpec("nonsense", num_requests=3)


# ---------------------------------------------------------------------------------- closed loop


def test_closed_loop_think_times():
    spec = WorkloadSpec("closed", num_requests=100_000, num_users=8, think_time_s=2.0,
                        dataset="random", range_ratio=0.2)
    loop = build_workload(spec, 9)
    assert isinstance(loop, ClosedLoop) and len(loop) == 100_000
    t = loop.think_times()
    assert np.array_equal(t, build_workload(spec, 9).think_times())
    assert np.array_equal(loop.think_times(10), t[:10])  # a prefix of a longer draw
    assert t.mean() == pytest.approx(2.0, rel=0.02)
    more_users = build_workload(replace(spec, num_users=64, dataset="fixed"), 9)
    assert np.array_equal(more_users.think_times(), t)  # independent of users and lengths
    fixed = build_workload(replace(spec, think_time_dist="fixed"), 9)
    assert fixed.think_times(3).tolist() == [2.0] * 3
    with pytest.raises(ValueError, match="think_time_dist"):
        ClosedLoop(2, [1], [1], 1.0, "weibull")
    with pytest.raises(ValueError, match="num_users"):
        ClosedLoop(0, [1], [1])


# --------------------------------------------------------------------------- fixture loaders

AZURE = ("TIMESTAMP,ContextTokens,GeneratedTokens\n"
         "2023-11-16 18:17:03.9799600,4808,10\n"
         "2023-11-16 18:17:04.0319600,3180,0\n"
         "2023-11-16 18:17:05.9799600,100,5\n")


def test_load_azure_trace(tmp_path):
    w = traces.load_azure_trace(_write(tmp_path / "az.csv", AZURE))
    assert w.arrival_s.tolist() == pytest.approx([0.0, 0.052, 2.0])
    assert w.input_tokens.tolist() == [4808, 3180, 100]
    assert w.output_tokens.tolist() == [10, 1, 5] and w.num_clamped_outputs == 1
    assert w.name == "az" and w.prefix_hashes is None
    assert len(traces.load_azure_trace(tmp_path / "az.csv", limit=2)) == 2
    doubled = traces.load_azure_trace(tmp_path / "az.csv", time_scale=2.0)
    assert doubled.arrival_s.tolist() == pytest.approx([0.0, 0.104, 4.0])
    at_rate = traces.load_azure_trace(tmp_path / "az.csv", rate=4.0)
    assert at_rate.mean_rate == pytest.approx(4.0) and at_rate.arrival_s[-1] == pytest.approx(0.5)


def test_load_mooncake_trace(tmp_path):
    rows = [dict(timestamp=1000, input_length=600, output_length=5, hash_ids=[0, 1]),
            dict(timestamp=1000, input_length=700, output_length=0, hash_ids=[0, 2]),
            dict(timestamp=4500, input_length=100, output_length=9, hash_ids=[3])]
    path = _write(tmp_path / "mc.jsonl", "\n".join(map(json.dumps, rows)) + "\n\n")
    w = traces.load_mooncake_trace(path)
    assert w.arrival_s.tolist() == [0.0, 0.0, 3.5]
    assert w.input_tokens.tolist() == [600, 700, 100] and w.output_tokens.tolist() == [5, 1, 9]
    assert w.prefix_hashes == [(0, 1), (0, 2), (3,)] and w.prefix_block_tokens == 512
    assert w.num_clamped_outputs == 1
    assert traces.load_mooncake_trace(path, limit=2).prefix_hashes == [(0, 1), (0, 2)]
    no_hashes = _write(tmp_path / "nh.jsonl", json.dumps(dict(timestamp=0, input_length=3, output_length=4)))
    assert traces.load_mooncake_trace(no_hashes).prefix_hashes is None


def test_plain_csv_round_trip(tmp_path):
    w = build_workload(WorkloadSpec("poisson", num_requests=200, rate=3.3, dataset="random",
                                    range_ratio=0.9), 4)
    loaded = traces.load_plain_csv(traces.save_plain_csv(w, tmp_path / "w.csv"))
    assert _same(w, loaded)  # exact, including float arrival times
    assert not list(tmp_path.glob("*.tmp"))
    assert _same(traces.load_trace(tmp_path / "w.csv"), w)


def test_load_bench_json(tmp_path):
    result = dict(request_rate="inf", burstiness=1.0, input_lens=[100, 200, 300],
                  output_lens=[10, 0, 30], max_concurrency=None)
    path = _write(tmp_path / "bench.json", json.dumps(result))
    w = traces.load_bench_json(path)
    assert w.arrival_s.tolist() == [0.0] * 3 and w.output_tokens.tolist() == [10, 1, 30]
    assert w.num_clamped_outputs == 1
    paced = traces.load_bench_json(path, rate=2.0, burstiness=0.5, seed=8)
    expected = gamma_arrivals(3, 2.0, 0.5, spawn_streams(8).arrivals)
    assert np.array_equal(paced.arrival_s, expected)
    spec = WorkloadSpec("bench_json", trace_path=str(path), rate=2.0, burstiness=0.5)
    assert _same(build_workload(spec, 8), paced)
    assert traces.load_bench_json(path, limit=1).num_clamped_outputs == 0


def test_load_trace_detects_kinds(tmp_path):
    az = _write(tmp_path / "a.csv", AZURE)
    mc = _write(tmp_path / "m.jsonl", json.dumps(dict(timestamp=0, input_length=3, output_length=4)))
    js = _write(tmp_path / "b.json", json.dumps(dict(input_lens=[3], output_lens=[4])))
    plain = _write(tmp_path / "p.csv", "arrival_s,input_tokens,output_tokens\n0.5,3,4\n")
    assert traces.detect_trace_kind(az) is traces.TraceKind.AZURE
    assert traces.detect_trace_kind(mc) is traces.TraceKind.MOONCAKE
    assert traces.detect_trace_kind(js) is traces.TraceKind.BENCH_JSON
    assert traces.detect_trace_kind(plain) is traces.TraceKind.CSV
    assert traces.load_trace(plain).arrival_s.tolist() == [0.5]
    assert len(traces.load_trace(az, kind="azure", limit=1)) == 1
    spec = WorkloadSpec("trace", trace_path=str(az), num_requests=2, time_scale=10.0, name="x")
    w = build_workload(spec)
    assert len(w) == 2 and w.arrival_s[1] == pytest.approx(0.52) and w.name == "x"
    with pytest.raises(ValueError, match="unknown trace kind"):
        traces.load_trace(az, kind="parquet")
    with pytest.raises(ValueError, match="unknown trace format"):
        traces.load_trace(_write(tmp_path / "x.csv", "a,b\n1,2\n"))
    with pytest.raises(ValueError, match="sharegpt"):
        traces.load_trace(_write(tmp_path / "s.csv", "num_prefill_tokens,num_decode_tokens\n1,2\n"))


# ---------------------------------------------------------------------------- malformed files

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.mark.parametrize("text, message", [
    ("TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.97,5\n", r"missing column\(s\) \['GeneratedTokens'\]"),
    (HEADER + "2023-11-16 18:17:03.97,5,1\n2023-11-16 18:17:04.00,abc,1\n", "line 3: ContextTokens='abc'"),
    (HEADER + "2023-11-16 18:17:03.97,5,1\n2023-11-16 18:17:04.00,5,-2\n", "line 3: GeneratedTokens='-2'.*>= 0"),
    (HEADER + "yesterday,5,1\n", "line 2: TIMESTAMP='yesterday'; expected a timestamp"),
    (HEADER + "2023-11-16 18:17:04.00,5,1\n2023-11-16 18:17:03.00,5,1\n", "line 3: TIMESTAMP goes back"),
    (HEADER + "2023-11-16 18:17:04.00,5.5,1\n", "line 2: ContextTokens='5.5'; expected a whole number"),
    ("", "empty file"),
])
def test_malformed_azure_raises_clear_errors(tmp_path, text, message):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError, match=message) as err:
        traces.load_azure_trace(path)
    assert "bad.csv" in str(err.value)


@pytest.mark.parametrize("lines, message", [
    (['{"timestamp": 0, "input_length": 5, "output_length": 1}', "{not json"], "line 2: invalid JSON"),
    (['{"timestamp": 0, "output_length": 1}'], "line 1: input_length=None"),
    (['{"timestamp": 0, "input_length": -5, "output_length": 1}'], "line 1: input_length=-5"),
    (['{"timestamp": "x", "input_length": 5, "output_length": 1}'], "line 1: timestamp='x'"),
    (['{"timestamp": 9, "input_length": 5, "output_length": 1}',
      '{"timestamp": 3, "input_length": 5, "output_length": 1}'], "line 2: timestamp 3 goes back"),
    (['{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}',
      '{"timestamp": 1, "input_length": 5, "output_length": 1}'], "line 2: hash_ids present on some"),
    (['{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [3, -7]}'],
     "line 1: hash_ids holds -7; expected non-negative"),
    (['[1, 2]'], "line 1: got list"),
])
def test_malformed_mooncake_raises_clear_errors(tmp_path, lines, message):
    path = _write(tmp_path / "bad.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message) as err:
        traces.load_mooncake_trace(path)
    assert "bad.jsonl" in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("arrival_s,input_tokens,output_tokens\n0,5,1\n2,5,1\n1,5,1\n", "line 4: arrival_s goes back"),
    ("arrival_s,input_tokens,output_tokens\n-1,5,1\n", "line 2: arrival_s='-1'; expected seconds >= 0"),
    ("arrival_s,input_tokens,output_tokens\n0,5,0\n", "line 2: output_tokens='0'; expected a token count >= 1"),
    ("arrival_s,input_tokens,output_tokens\n0,5,1\n1,,1\n", r"line 3: input_tokens=\(empty\); expected a finite"),
    ("arrival_s,input_tokens\n0,5\n", "missing column"),
])
def test_malformed_plain_csv_raises_clear_errors(tmp_path, text, message):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError, match=message) as err:
        traces.load_plain_csv(path)
    assert "bad.csv" in str(err.value)


@pytest.mark.parametrize("payload, message", [
    ('{"input_lens": [1, 2]}', "missing list 'output_lens'"),
    ('{"input_lens": [1, -2], "output_lens": [1, 1]}', r"input_lens\[1\]=-2"),
    ('{"input_lens": [1, "x"], "output_lens": [1, 1]}', r"input_lens\[1\]='x'"),
    ('{"input_lens": [1, 2], "output_lens": [1]}', "expected equal"),
    ('{"input_lens": [1], "output_lens": [1], "request_rate": "fast"}', "request_rate"),
    ('{"input_lens": [1],\n "output_lens": [1', "line 2: invalid JSON"),
    ('[1]', "expected a JSON object"),
])
def test_malformed_bench_json_raises_clear_errors(tmp_path, payload, message):
    path = _write(tmp_path / "bad.json", payload)
    with pytest.raises(ValueError, match=message) as err:
        traces.load_bench_json(path)
    assert "bad.json" in str(err.value) or "request_rate" in message


# ------------------------------------------------------------------------------- shared data


def test_find_shared_data_uses_env_and_explains_misses(tmp_path, monkeypatch):
    (tmp_path / "traces").mkdir()
    _write(tmp_path / "traces" / "t.csv", "x\n")
    monkeypatch.setenv("SERVESIM_DATA", str(tmp_path))
    assert data_paths.find_shared_data("traces/t.csv") == tmp_path / "traces" / "t.csv"
    with pytest.raises(FileNotFoundError, match="SERVESIM_DATA"):
        data_paths.find_shared_data("traces/missing.csv")
    monkeypatch.delenv("SERVESIM_DATA")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="set \\$SERVESIM_DATA"):
        data_paths.find_shared_data("traces/no_such_file_anywhere.csv")


@needs_shared
@pytest.mark.parametrize("name, rows, mean_rate", [
    ("azure2023_code.csv", 8819, 2.6), ("azure2023_conv.csv", 19366, 5.5),
    ("mooncake_conversation.jsonl", 12031, 3.4),
])
def test_real_traces_load(name, rows, mean_rate):
    w = traces.load_trace(SHARED / name)
    assert len(w) == rows and w.arrival_s[0] == 0.0
    assert w.mean_rate == pytest.approx(mean_rate, rel=0.05)
    if name.endswith(".jsonl"):
        blocks = np.array([len(h) for h in w.prefix_hashes])
        assert np.array_equal(blocks, -(-w.input_tokens // w.prefix_block_tokens))
    if name == "azure2023_code.csv":
        assert w.input_tokens.mean() == pytest.approx(2048, rel=0.01)
        assert w.output_tokens.mean() == pytest.approx(28, rel=0.02)


def test_prompt_block_hashes_are_distinct_non_negative_ints():
    """Block j of a prompt is keyed h * per + j % per: distinct per (trace id, offset), never negative."""
    from servesim.sim.sources import prompt_block_hashes
    keys = prompt_block_hashes((0, 1, 5, 2), 4 * 512, 16, 512)
    assert len(keys) == 4 * 32 and all(isinstance(k, int) and k >= 0 for k in keys)
    assert len(set(keys)) == len(keys)
    assert keys[:3] == (0, 1, 2) and keys[32] == 32 and keys[64] == 5 * 32
    assert prompt_block_hashes((0, 1), 100, 16, 512) == tuple(range(6))  # only full blocks
    with pytest.raises(ValueError, match="non-negative ints; got -3"):
        prompt_block_hashes((4, -3), 2 * 512, 16, 512)
