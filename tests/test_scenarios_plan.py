"""The capacity planner (servesim.scenarios.plan): the cheapest option meets the SLOs with the
fewest replicas (one fewer fails), options are ranked by cost, infeasible (GPU, TP) pairs are
named with the reason, and the CLI prints the table and its wall time."""
from __future__ import annotations

from dataclasses import replace

import pytest

from servesim.cli import main
from servesim.scenarios.cli import plan_workload
from servesim.scenarios.plan import PlanRequest, _feasible, _scenario, evaluate, meets, plan
from servesim.scenarios.schema import SLO

SLOS = (SLO("ttft", 1000.0, 99), SLO("tpot", 40.0, 99))


@pytest.fixture(scope="module")
def request_and_result():
    req = PlanRequest(model="llama-3.1-8b", demand_rps=120.0, workload=plan_workload("fixed:512:64", 20.0, 1.0),
                      slos=SLOS, gpus=("h100-sxm",), tps=(1, 3), max_num_seqs=(16, 256), workers=2)
    return req, plan(req)


def test_cheapest_option_meets_slos_with_fewest_replicas(request_and_result) -> None:
    req, result = request_and_result
    assert result.options, "an 8B model at 120 req/s must be servable on H100s"
    best = result.options[0]
    assert meets(best.row, SLOS)
    assert best.cost_per_h == pytest.approx(best.replicas * best.tp * 2.50, rel=1e-9)  # no energy price given
    costs = [o.cost_per_h for o in result.options]
    assert costs == sorted(costs)
    if best.replicas > 1:  # one replica fewer does not meet the SLOs with the required confidence
        sc = _scenario(req, best.gpu, best.tp, best.max_num_seqs)
        assert not evaluate(req, sc, best.replicas - 1).meets
    assert best.per_replica_rps == pytest.approx(120.0 / best.replicas)
    tokens_per_h = 120.0 * 3600 * (512 + 64) / 1e6
    assert best.cost_per_1m_tokens == pytest.approx(best.cost_per_h / tokens_per_h)


def test_infeasible_pairs_are_named(request_and_result) -> None:
    _, result = request_and_result
    assert any(tp == 3 and "does not divide 32 attention heads" in why for _, tp, why in result.infeasible)
    req = PlanRequest(model="llama-3.1-70b", demand_rps=1.0, workload=plan_workload("fixed:512:64", 10, 1.0),
                      slos=SLOS, gpus=("l40s",), tps=(1, 4))
    pairs, infeasible = _feasible(req)
    assert pairs == [("l40s", 4)]
    assert infeasible[0][:2] == ("l40s", 1) and "does not fit on l40s" in infeasible[0][2]


def test_a_tighter_slo_never_costs_less(request_and_result) -> None:
    req, result = request_and_result
    tight = plan(replace(req, slos=(SLO("ttft", 1000.0, 99), SLO("tpot", 12.0, 99)), tps=(1,)))
    if tight.options:
        assert tight.options[0].cost_per_h >= result.options[0].cost_per_h


def test_plan_request_errors() -> None:
    with pytest.raises(ValueError, match="--demand must be a positive"):
        PlanRequest(model="x", demand_rps=0, workload=plan_workload("sharegpt", 10, 1.0), slos=SLOS)
    with pytest.raises(ValueError, match="at least one SLO"):
        PlanRequest(model="x", demand_rps=1, workload=plan_workload("sharegpt", 10, 1.0), slos=())
    with pytest.raises(ValueError, match="expected fixed:IN:OUT"):
        plan_workload("zipf:3", 10, 1.0)


def test_cli_plan_prints_ranked_options_and_wall_time(capsys) -> None:
    assert main(["plan", "--demand", "10", "--workload", "fixed:512:64", "--gpus", "h100-sxm",
                 "--tp", "1", "--max-num-seqs", "128", "--duration", "15", "--gpu-price", "h100-sxm=3",
                 "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "USD/1M tok" in text and "advice:" in text and "wall time" in text
    assert "  1 h100-sxm    1          128" in text
    assert main(["plan", "--demand", "10", "--gpus", "h100-sxm", "--gpu-price", "h100-sxm=cheap"]) == 2


def test_plan_with_a_router_simulates_the_whole_cluster() -> None:
    """`plan --router R` runs r replicas behind R at the full demand (issue 14): the evaluated rows
    are cluster rows with r replicas, the answer's assumptions name the router, and routing cannot
    beat the ideal split's replica count by more than chance allows."""
    base = dict(model="llama-3.1-8b", demand_rps=120.0, workload=plan_workload("fixed:512:64", 20.0, 1.0),
                slos=SLOS, gpus=("h100-sxm",), tps=(1,), max_num_seqs=(256,), seeds=1, profile_draws=0, workers=1)
    ideal = plan(PlanRequest(**base))
    routed = plan(PlanRequest(**base, router="join-shortest-queue", router_staleness_s=0.5))
    assert ideal.options and routed.options
    best = routed.options[0]
    assert best.replicas >= 2  # one H100 cannot serve 120 req/s of 512/64 under these SLOs
    assert all(row.get("num_replicas") == best.replicas for row in best.evaluation.rows)
    assert all(row.get("num_replicas") is None or row.get("num_replicas") == 1 for row in ideal.options[0].evaluation.rows)
    assert "join-shortest-queue" in routed.assumptions["router"]
    assert best.replicas >= ideal.options[0].replicas - 1
