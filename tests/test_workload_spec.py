"""WorkloadSpec is the one workload description: the scenario's workload section and the
``simulate`` flags are generated from it and build the specs the hand-written code built, and
``sim/traces.py`` and ``sim/workload.py`` no longer import each other."""
from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from servesim.cli import build_parser, main
from servesim.scenarios.loader import ScenarioError, scenario_from_dict
from servesim.scenarios.points import point_workload
from servesim.scenarios.schema import WorkloadSection
from servesim.sim.arg_spec import spec_of
from servesim.sim.clients import client_preset
from servesim.sim.workload import WorkloadSpec, build_workload
from servesim.simulate_run import workload_spec

REPO = Path(__file__).resolve().parents[1]
SPEC = {f.name: f for f in dataclasses.fields(WorkloadSpec)}


def test_section_fields_come_from_the_spec():
    shared = [f for f in dataclasses.fields(WorkloadSection) if f.name in SPEC and f.name != "kind"]
    assert {f.name for f in shared} == {n for n, f in SPEC.items() if f.metadata and spec_of(f).section == "workload"}
    assert len(shared) == 13
    for f in shared:
        assert spec_of(f) is spec_of(SPEC[f.name])
    schema = (REPO / "scenarios/schema.py").read_text()
    for f in shared:  # generated, not declared
        assert not re.search(rf"^\s+{f.name}\s*:\s*\S", schema, re.M), f"schema.py declares {f.name}"


@pytest.mark.parametrize(("workload", "message"), [
    ({"kind": "burst", "input_lenn": 5}, r"workload: unknown field 'input_lenn'; allowed: \[.*'input_len'"),
    ({"kind": "burst", "input_len": 0}, r"input_len must be an integer in \[1, 10000000\], got 0"),
    ({"kind": "burst", "dataset": "alpaca"}, r"dataset must be one of \['fixed', 'random', 'sharegpt'"),
    ({"kind": "burst", "dataset": "dist", "input_dist": "zipf:3", "output_dist": "fixed:4"},
     r"bad length distribution 'zipf:3'"),
])
def test_bad_workload_keys_are_named(workload, message):
    data = {"name": "s", "deployment": {"model": "llama-3.1-8b"}, "workload": workload,
            "sweep": {"axis": "burst", "points": [4]}}
    with pytest.raises(ScenarioError, match=message):
        scenario_from_dict(data)


def _same(a, b) -> None:
    assert type(a) is type(b)
    np.testing.assert_array_equal(a.input_tokens, b.input_tokens)
    np.testing.assert_array_equal(a.output_tokens, b.output_tokens)
    if hasattr(a, "arrival_s"):
        np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    else:
        assert (a.num_users, a.think_time_s) == (b.num_users, b.think_time_s)


# (scenario workload, axis, demand, the spec the hand-written point_workload built)
POINTS = [
    ({"kind": "burst", "dataset": "random", "range_ratio": 0.5}, "burst", 64,
     dict(kind="burst", num_requests=64, dataset="random", range_ratio=0.5)),
    ({"kind": "closed", "num_requests": 50, "think_time_s": 0.5}, "concurrency", 8,
     dict(kind="closed", num_requests=50, num_users=8, think_time_s=0.5)),
    ({"kind": "poisson", "dataset": "sharegpt", "max_input_tokens": 900, "num_requests": 80}, "rate", 3.0,
     dict(kind="poisson", num_requests=80, rate=3.0, burstiness=1.0, dataset="sharegpt", max_input_tokens=900)),
    ({"kind": "gamma", "burstiness": 0.5, "dataset": "dist", "input_dist": "lognormal:900:0.5",
      "output_dist": "uniform:10:50", "num_requests": 40}, "rate", 5.0,
     dict(kind="gamma", num_requests=40, rate=5.0, burstiness=0.5, dataset="dist", input_dist="lognormal:900:0.5",
          output_dist="uniform:10:50")),
    ({"kind": "poisson", "rate": 2.0, "num_requests": 30}, "input_len", 512,
     dict(kind="poisson", num_requests=30, rate=2.0, burstiness=1.0, input_len=512)),
]


@pytest.mark.parametrize(("workload", "axis", "demand", "expected"), POINTS)
def test_point_workload_builds_the_same_requests(workload, axis, demand, expected):
    data = {"name": "s", "deployment": {"model": "llama-3.1-8b"}, "workload": workload,
            "sweep": {"axis": axis, "points": [demand]}}
    sc = scenario_from_dict(data).variants[0]
    for seed in (0, 3):
        _same(point_workload(sc, demand, seed), build_workload(WorkloadSpec(name="s", **expected), seed))


# (simulate flags, the spec the hand-written workload_spec built)
FLAGS = [
    ("--burst 32 --dataset random --input-len 500 --range-ratio 0.2",
     WorkloadSpec(kind="burst", num_requests=32, dataset="random", input_len=500, range_ratio=0.2)),
    ("--rate 4 --num-requests 200 --output-len 64",
     WorkloadSpec(kind="poisson", num_requests=200, rate=4.0, burstiness=1.0, output_len=64)),
    ("--rate 4 --burstiness 0.3", WorkloadSpec(kind="gamma", num_requests=1000, rate=4.0, burstiness=0.3)),
    ("--concurrency 16 --think-time 2 --client vllm-bench",
     WorkloadSpec(kind="closed", num_requests=1000, num_users=16, think_time_s=2.0,
                  client=client_preset("vllm-bench", num_warmup_requests=None, request_overhead_s=None,
                                       jitter_s=None, ramp_up_s=None))),
    ("--trace t.csv --time-scale 2 --num-requests 10",
     WorkloadSpec(kind="trace", trace_path="t.csv", num_requests=10, time_scale=2.0)),
    ("--bench-json b.json --bench-rate 3", WorkloadSpec(kind="bench_json", trace_path="b.json", rate=3.0,
                                                          burstiness=1.0)),
    ("", WorkloadSpec(kind="poisson", num_requests=1000, rate=10.0, burstiness=1.0)),
]


@pytest.mark.parametrize(("flags", "expected"), FLAGS)
def test_flags_build_the_same_spec(flags, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.csv").write_text("arrival_s,input_tokens,output_tokens\n0,5,5\n")
    (tmp_path / "b.json").write_text("{}")
    args = build_parser().parse_args(["simulate", *flags.split()])
    assert workload_spec(args) == expected


def test_length_distributions_from_the_command_line(capsys):
    assert main(["simulate", "--burst", "20", "--dataset", "dist", "--input-dist", "fixed:100",
                 "--output-dist", "fixed:7", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total_input_tokens"] == 2000 and summary["total_output_tokens"] == 140


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, inside a function) for every import of a source file."""
    tree = ast.parse(path.read_text())
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mods = [f"{'.' * node.level}{node.module or ''}"] + \
                   [f"{'.' * node.level}{a.name}" for a in node.names if not node.module]
            out += [(m, id(node) in local) for m in mods]
    return out


def test_traces_and_workload_do_not_import_each_other():
    traces = [m for m, _ in _imports(REPO / "sim/traces.py")]
    assert ".workload" not in traces
    assert all(not local for m, local in _imports(REPO / "sim/workload.py") if m in (".traces", ".lengths"))
    assert "__getattr__" not in (REPO / "sim/workload.py").read_text()
