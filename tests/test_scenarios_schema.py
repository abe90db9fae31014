"""Scenario files (servesim.scenarios.schema / loader): validation errors that name the field and
what is allowed, variants derived with dataclasses.replace, points and SLO forms, and that every
shipped scenario loads."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from servesim.scenarios.loader import (
    ScenarioError,
    load_scenario,
    parse_points,
    scenario_from_dict,
    scenario_to_dict,
    shipped_scenarios,
)
from servesim.scenarios.schema import SLO, ArrivalKind, Axis, Deployment, WorkloadSection

BASE = textwrap.dedent("""
    name: demo
    base_variant: tp1
    deployment: {model: llama-3.1-8b, gpu: h100-sxm, tp: 1, knobs: {max_num_seqs: 128}}
    workload: {kind: poisson, input_len: 512, output_len: 64, num_requests: 50}
    sweep: {axis: rate, points: [1, 2, 4], seeds: 2}
    economics:
      prices: {input_per_1m_tokens: 0.1, output_per_1m_tokens: 0.4}
      costs: {gpu_rental_per_gpu_hour: 2.5, energy_price_per_kwh: 0.1, pue: 1.2}
    slos: ["p99_ttft_ms <= 500", {metric: tpot, percentile: 90, max_ms: 40}]
    variants:
      - name: tp2
        deployment: {tp: 2, knobs: {max_num_batched_tokens: 4096}}
""")


def load_text(text: str, tmp_path: Path):
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return load_scenario(path)


def with_change(path: str, value) -> str:
    """BASE with one (dotted) key set to ``value``."""
    data = yaml.safe_load(BASE)
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return yaml.safe_dump(data)


def test_base_and_variant(tmp_path) -> None:
    sf = load_text(BASE, tmp_path)
    base, tp2 = sf.variants
    assert (base.name, tp2.name) == ("tp1", "tp2")
    assert base.sweep.axis is Axis.RATE and base.sweep.points == (1.0, 2.0, 4.0) and base.sweep.seeds == (0, 1)
    assert base.workload.kind is ArrivalKind.POISSON
    assert base.slos == (SLO("ttft", 500.0, 99.0), SLO("tpot", 40.0, 90.0))
    # the variant replaces only what it names, nested sections included
    assert tp2.deployment.tp == 2 and tp2.deployment.knobs.max_num_batched_tokens == 4096
    assert tp2.deployment.knobs.max_num_seqs == 128 and tp2.deployment.model == "llama-3.1-8b"
    assert tp2.economics == base.economics and tp2.workload == base.workload
    assert base.deployment.tp == 1  # the base is untouched (frozen dataclasses)
    with pytest.raises(AttributeError):
        base.deployment.tp = 4  # type: ignore[misc]


def test_resolved_dict_round_trips(tmp_path) -> None:
    sf = load_text(BASE, tmp_path)
    again = scenario_from_dict(scenario_to_dict(sf))
    assert again.variants == sf.variants


@pytest.mark.parametrize("change, message", [
    (("deployment.knobs.max_num_seq", 4), r"deployment\.knobs: unknown field 'max_num_seq'; allowed: \["),
    (("deployment.tp", "two"), r"deployment\.tp: expected an integer, got 'two'"),
    (("deployment.tp", 0), r"deployment: tp must be >= 1, got 0"),
    (("deployment.model", "llama-9"), r"deployment: unknown model 'llama-9'"),
    (("deployment.gpu", "h1000"), r"unknown GPU 'h1000'; valid: \["),
    (("deployment.engine", "vllm-v2"), r"engine must be one of \['vllm-v1', 'vllm-v0'\]"),
    (("deployment.kv_cache_dtype", "fp4"), r"kv_cache_dtype must be one of \["),
    (("workload.kind", "closed"), r"sweep axis 'rate' needs workload kind one of \['poisson', 'gamma', 'trace'\]"),
    (("workload.kind", "uniform"), r"workload\.kind: must be one of \['burst', 'closed', 'poisson', 'gamma'"),
    (("workload.range_ratio", 1.5), r"range_ratio must be in \[0, 1\)"),
    (("sweep.axis", "users"), r"sweep\.axis: must be one of \['burst', 'concurrency', 'rate'"),
    (("sweep.points", [0, 1]), r"points must be finite and > 0"),
    (("sweep.points", "many"), r"sweep\.points: expected a list of numbers or a range"),
    (("sweep.seeds", [1, 1]), r"seeds must be distinct integers >= 0"),
    (("economics.costs.pue", 0.8), r"pue must be >= 1"),
    (("economics.costs.gpu_capex_per_gpu", 30000), r"give gpu_rental_per_gpu_hour or gpu_capex_per_gpu"),
    (("economics.prices.per_1k_billable_tokens", 0.001), r"give per_1k_billable_tokens or input/output"),
    (("economics.prices.billable", "tokens"), r"billable must be one of \['total', 'output', 'input'\]"),
    (("slos", ["p99_ttft <= 5"]), r"slos\[0\]: cannot read SLO 'p99_ttft <= 5'"),
    (("slos", [{"metric": "latency", "max_ms": 5}]), r"metric must be one of \['ttft', 'tpot', 'e2el', 'itl'\]"),
    (("slos", [{"metric": "itl", "percentile": 90, "max_ms": 5}]), r"itl SLOs support percentile 0"),
    (("regions.slope_ratio", 2), r"slope_ratio must be in \(0, 1\)"),
    (("regions.throughput", "goodput"), r"throughput must be one of \["),
    (("colour", "blue"), r"unknown top-level key 'colour'; allowed: \["),
])
def test_errors_name_the_field_and_what_is_allowed(tmp_path, change, message) -> None:
    with pytest.raises(ScenarioError, match=message) as info:
        load_text(with_change(*change), tmp_path)
    assert "scenario.yaml" in str(info.value)


def test_variant_errors_name_the_variant(tmp_path) -> None:
    data = yaml.safe_load(BASE)
    data["variants"].append({"name": "bad", "deployment": {"tp": -1}})
    with pytest.raises(ScenarioError, match=r"variants\[1\]: deployment: tp must be >= 1"):
        load_text(yaml.safe_dump(data), tmp_path)
    data["variants"][-1] = {"name": "tp2", "deployment": {"tp": 4}}
    with pytest.raises(ScenarioError, match="variant names must be distinct"):
        load_text(yaml.safe_dump(data), tmp_path)
    data["variants"][-1] = {"name": "x", "sweeep": {}}
    with pytest.raises(ScenarioError, match=r"unknown key 'sweeep'; a variant may override"):
        load_text(yaml.safe_dump(data), tmp_path)


def test_missing_required_fields(tmp_path) -> None:
    data = yaml.safe_load(BASE)
    del data["deployment"]["model"]
    with pytest.raises(ScenarioError, match=r"deployment: missing required field\(s\) \['model'\]"):
        load_text(yaml.safe_dump(data), tmp_path)


def test_points_forms() -> None:
    assert parse_points([4, 1, 2, 2], Axis.CONCURRENCY, "p") == (1.0, 2.0, 4.0)
    assert parse_points({"start": 1, "stop": 1000, "num": 4, "scale": "log"}, Axis.BURST, "p") == (1, 10, 100, 1000)
    assert parse_points({"start": 0.5, "stop": 2, "step": 0.5}, Axis.RATE, "p") == (0.5, 1.0, 1.5, 2.0)
    with pytest.raises(ScenarioError, match="whole numbers"):
        parse_points([1.5], Axis.CONCURRENCY, "p")
    with pytest.raises(ScenarioError, match="0 < start <= stop"):
        parse_points({"start": 5, "stop": 1}, Axis.RATE, "p")


def test_section_rules_at_construction() -> None:
    with pytest.raises(ValueError, match="kind 'trace' needs trace"):
        WorkloadSection(kind="trace")
    with pytest.raises(ValueError, match="dataset 'dist' needs input_dist and output_dist"):
        WorkloadSection(kind="poisson", dataset="dist")
    assert Deployment(model="x", weight_dtype="fp8", kv_cache_dtype="fp8").label.startswith("x on 1x h100-sxm")


def test_every_shipped_scenario_loads() -> None:
    shipped = shipped_scenarios()
    assert {"h100nvl-concurrency", "mistral7b-128k-tp2", "llama70b-fp8-tp", "azure-conv-profit"} <= set(shipped)
    for name, path in shipped.items():
        sf = load_scenario(path)
        assert sf.variants and all(v.sweep.points for v in sf.variants), name
    nvl = load_scenario("h100nvl-concurrency")  # shipped names resolve without a path
    assert [v.deployment.model for v in nvl.variants][:4] == ["gpt2-xl", "deepseek-llm-7b", "qwen1.5-14b",
                                                                "falcon-40b"]


def test_unknown_scenario_file() -> None:
    with pytest.raises(FileNotFoundError, match="shipped scenarios"):
        load_scenario("no-such-scenario.yaml")


def test_type_checker_declarations_match_the_derived_fields():
    """scenarios/schema_fields.py tells mypy which fields derive_fields adds to each section: the
    same names, types and required fields as the sections get at run time (an EngineArgs or
    WorkloadSpec field added, renamed or retyped without it fails here, not silently in mypy)."""
    import dataclasses
    import typing

    from servesim.scenarios import schema, schema_fields
    from servesim.sim.arg_spec import arg_fields

    for section, declared in schema_fields.DECLARED.items():
        cls = getattr(schema, section)
        hints = typing.get_type_hints(cls)
        derived = {f.name: (hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                   for f, *_ in arg_fields(cls)}
        decl_hints = typing.get_type_hints(declared)
        wanted = {f.name: (decl_hints[f.name], f.default is dataclasses.MISSING)
                  for f in dataclasses.fields(declared)}
        assert wanted == derived, section
        assert schema_fields.DeploymentFields is object  # no base at run time: the fields are derive_fields'
