"""Cluster scenarios: the ``cluster:`` section, sweep points on a cluster, the shipped Splitwise- and
POLCA-style scenarios, and the power-headroom answer."""
from __future__ import annotations

import json
import math
import textwrap

import pandas as pd
import pytest

from servesim.cli import main
from servesim.scenarios.cluster_point import cluster_config, power_headroom
from servesim.scenarios.loader import ScenarioError, load_scenario, scenario_from_dict, scenario_to_dict
from servesim.scenarios.points import PointTask, engine_config, run_point
from servesim.scenarios.sweep import SweepOptions, run_sweep
from servesim.sim.cluster_config import ReplicaRole

TINY = textwrap.dedent("""
    name: tiny-cluster
    base_variant: collocated
    deployment: {model: llama-3.1-8b, gpu: h100-sxm, knobs: {num_gpu_blocks: 2000, max_model_len: 4096}}
    cluster: {replicas: 2, router: jsq, router_staleness_s: 0.2}
    workload: {kind: poisson, input_len: 256, output_len: 16, num_requests: 40}
    sweep: {axis: rate, points: [5, 20], seeds: 1}
    economics:
      prices: {per_1k_billable_tokens: 0.0002}
      costs: {gpu_rental_per_gpu_hour: 2.0}
    slos: ["p99_ttft_ms <= 400"]
    variants:
      - name: disagg
        cluster: {replicas: 0, prefill_replicas: 1, decode_replicas: 1}
      - name: mixed
        cluster:
          replicas: 0
          groups:
            - {replicas: 1, gpu: h200, name: big}
            - {replicas: 1, knobs: {max_num_seqs: 8}, power_cap_w: 400}
""")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("scn") / "tiny.yaml"
    path.write_text(TINY)
    return load_scenario(path)


def test_cluster_section_and_variants(tiny):
    base, disagg, mixed = tiny.variants
    assert base.cluster.replicas == 2 and base.cluster.router == "jsq"
    assert disagg.cluster.prefill_replicas == 1 and disagg.cluster.router == "jsq"  # inherited
    cfg = cluster_config(mixed, engine_config)
    assert [g.engine.gpu.name for g in cfg.groups] == ["h200", "h100-sxm"]
    assert cfg.groups[1].engine.scheduler.max_num_seqs == 8 and cfg.gpu_cap_w(cfg.groups[1]) == 400
    roles = [g.role for g in cluster_config(disagg, engine_config).groups]
    assert roles == [ReplicaRole.PREFILL, ReplicaRole.DECODE]
    again = scenario_from_dict(scenario_to_dict(tiny))  # a sweep folder's resolved scenario reads back
    assert again.variants == tiny.variants


@pytest.mark.parametrize("bad, message", [
    ({"replicas": 2, "prefill_replicas": 1, "decode_replicas": 1}, "exactly one"),
    ({"prefill_replicas": 1}, "go together"),
    ({"replicas": 2, "router": "fastest"}, "unknown router"),
    ({"replicas": 2, "kv_link": "smoke"}, "unknown link"),
    ({"groups": [{"replicas": 1, "role": "both"}]}, "role must be one of"),
    ({"groups": [{"replicas": 1, "knobs": {"max_seqs": 3}}]}, "unknown engine knob"),
])
def test_bad_cluster_sections_are_named(bad, message):
    data = {"deployment": {"model": "llama-3.1-8b"}, "workload": {"kind": "burst"},
            "sweep": {"axis": "burst", "points": [4]}, "cluster": bad}
    with pytest.raises(ScenarioError, match=message):
        scenario_from_dict(data)


def test_cluster_point_row(tiny):
    row = run_point(PointTask(tiny.variants[1], 20.0, 0)).row
    assert row["error"] == ""
    assert row["num_replicas"] == 2 and row["num_gpus_total"] == 2 and row["num_kv_transfers"] == 40
    assert row["completed"] == 40 and row["mean_kv_transfer_ms"] > 0
    assert 0 <= row["replica_completed_cv"] < 1 and not math.isnan(row["energy_per_request_j"])


def test_tiny_cluster_sweep_writes_a_report_with_load_balance(tiny, tmp_path):
    result = run_sweep(tiny, SweepOptions(out_dir=tmp_path / "out", workers=1, progress=False))
    curve = pd.read_csv(tmp_path / "out" / "curve.csv")
    assert set(curve["variant"]) == {"collocated", "disagg", "mixed"} and curve["error"].isna().all()
    # economics pay for every GPU of the cluster: 2 GPUs at 2.0 per hour
    assert (curve["fixed_cost_per_h"] == 4.0).all()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Load balance across replicas" in report
    assert result.files


def test_shipped_cluster_scenarios_load():
    sw = load_scenario("splitwise-70b")
    assert [v.name for v in sw.variants] == ["collocated", "disagg-1to1", "disagg-2to1"]
    gpus = [cluster_config(v, engine_config).num_gpus for v in sw.variants]
    assert gpus == [24, 24, 24]  # equal GPU count
    polca = load_scenario("polca-power-budget")
    caps = [cluster_config(v, engine_config) for v in polca.variants]
    assert [round(c.gpu_cap_w(c.groups[0]), 1) for c in caps] == [700.0, 560.0, 466.7, 400.0, 350.0]
    assert all(v.cluster.demand_per_replica for v in polca.variants)


def test_power_headroom_answers_the_polca_question(tmp_path, capsys):
    rows = []
    for variant, gpus, slow in (("n4", 32, 0.0), ("n5", 40, 0.05), ("n6", 48, 0.12), ("n7", 56, 0.3)):
        for demand, base in ((1.0, 100.0), (2.0, 200.0)):
            rows.append({"variant": variant, "demand": demand, "seed": 0, "error": "", "num_gpus_total": gpus,
                         "p99_e2el_ms": base * (1 + slow * demand / 2)})
    curve = pd.DataFrame(rows)
    table, answer = power_headroom(curve, "n4", "p99_e2el_ms", 0.1)
    assert answer == "n5"
    assert table.set_index("variant")["worst_slowdown"].round(6).to_dict() == {"n4": 0.0, "n5": 0.05, "n6": 0.12,
                                                                               "n7": 0.3}
    assert power_headroom(curve, "n4", "p99_e2el_ms", 0.1, max_demand=1.0)[1] == "n6"  # 6% at demand 1
    curve.to_csv(tmp_path / "curve.csv", index=False)
    assert main(["power-headroom", str(tmp_path), "--baseline", "n4", "--max-slowdown", "0.2"]) == 0
    assert "most GPUs within 20%: n6" in capsys.readouterr().out
    assert main(["power-headroom", str(tmp_path), "--baseline", "nope"]) == 2
    with pytest.raises(ValueError, match="not a curve column"):
        power_headroom(curve, "n4", "p42_ms")


def test_simulate_out_writes_replica_columns(tmp_path):
    out = tmp_path / "run"
    assert main(["simulate", "--rate", "20", "--num-requests", "30", "--prefill-replicas", "1", "--decode-replicas",
                 "2", "--router", "lot", "--out", str(out), "--json"]) == 0
    records = pd.read_parquet(out / "requests.parquet")
    assert {"replica", "prefill_replica", "transfer_s", "kv_wait_s"} <= set(records.columns)
    assert set(records["replica"]) <= {1, 2} and (records["prefill_replica"] == 0).all()
    series = pd.read_csv(out / "timeseries.csv")
    assert set(series["replica"]) == {0, 1, 2}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_replicas"] == 3 and [r["role"] for r in summary["per_replica"]] == ["prefill", "decode",
                                                                                            "decode"]
