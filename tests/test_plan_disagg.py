"""`servesim plan --disaggregated`: prefill/decode pools searched beside collocated replicas, and
chosen where a constructed case makes them cheaper (long prompts, short outputs, a tight TPOT SLO:
collocated decodes share steps with 4k-token prefill chunks, a decode pool never does)."""
from __future__ import annotations

import json

import pytest

from servesim.cli import main
from servesim.scenarios.cli import plan_workload
from servesim.scenarios.plan import PlanRequest, plan
from servesim.scenarios.plan_disagg import splits
from servesim.scenarios.schema import SLO

SLOS = (SLO("ttft", 2000.0, 99), SLO("tpot", 25.0, 99))
BASE = dict(model="llama-3.1-8b", demand_rps=20.0, workload=plan_workload("fixed:4096:64", 20.0, 1.0), slos=SLOS,
            gpus=("h100-sxm",), tps=(1,), max_num_seqs=(256,), seeds=1, profile_draws=0, workers=1)


def test_splits_are_the_bounded_ratios_at_each_count():
    assert splits(1) == []
    assert splits(2) == [(1, 1)]
    assert splits(3) == [(2, 1), (1, 2)]
    assert splits(4) == [(2, 2), (3, 1), (1, 3)]
    assert splits(8) == [(4, 4), (5, 3), (3, 5), (6, 2), (2, 6)]
    assert all(p >= 1 and d >= 1 and p + d == n for n in range(2, 40) for p, d in splits(n))


@pytest.fixture(scope="module")
def both():
    return plan(PlanRequest(**BASE)), plan(PlanRequest(**BASE, disaggregated=True))


def test_plan_chooses_disaggregated_pools_when_they_are_cheaper(both):
    collocated, mixed = both
    only = collocated.options[0]
    assert only.prefill_replicas == 0
    best = mixed.options[0]
    assert best.prefill_replicas >= 1 and best.decode_replicas >= 1
    assert best.replicas == best.prefill_replicas + best.decode_replicas
    assert best.cost_per_h < only.cost_per_h  # fewer GPUs meet the TPOT SLO when decodes run alone
    assert best.cost_per_h == pytest.approx(best.num_gpus * 2.50, rel=1e-9)  # priced once, for every GPU
    # every run of the answer was the disaggregated cluster at the full demand
    for row in best.evaluation.rows:
        assert row["num_replicas"] == best.replicas and row["num_kv_transfers"] > 0
        assert row["p99_tpot_ms"] <= 25.0
    # the collocated answer is still among the options, the same as without --disaggregated
    same = [o for o in mixed.options if o.prefill_replicas == 0]
    assert same and same[0].replicas == only.replicas
    d = best.to_dict()
    assert d["layout"] == "disaggregated" and d["prefill_replicas"] == best.prefill_replicas
    assert "energy_per_output_token_j" in d["predictions"]


def test_router_plan_prices_the_cluster_once():
    routed = plan(PlanRequest(**{**BASE, "workload": plan_workload("fixed:512:64", 20.0, 1.0), "demand_rps": 120.0,
                                 "slos": (SLO("ttft", 1000.0, 99), SLO("tpot", 40.0, 99))}, router="round-robin"))
    best = routed.options[0]
    assert best.cost_per_h == pytest.approx(best.replicas * 2.50, rel=1e-9)


def test_cli_plan_disaggregated_compares_layouts(capsys):
    args = ["plan", "--demand", "20", "--workload", "fixed:4096:64", "--gpus", "h100-sxm", "--tp", "1",
            "--max-num-seqs", "256", "--duration", "20", "--seeds", "1", "--profile-draws", "0", "--workers", "1",
            "--slo", "p99_ttft_ms<=2000,p99_tpot_ms<=25", "--disaggregated"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "collocated vs disaggregated" in captured.out and "cheaper: disaggregated" in captured.out
    assert "[plan] h100-sxm TP1 max_num_seqs=256 disaggregated" in captured.err  # progress
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["best"]["layout"] == "disaggregated"
    assert out["best_by_layout"]["collocated"]["layout"] == "collocated"
    assert main(args + ["--engine", "vllm-v0"]) == 2  # P/D is v1-only: a clear error
    assert "vllm-v1" in capsys.readouterr().err
