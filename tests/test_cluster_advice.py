"""Advice lines speak of the whole cluster when the scenario has one (replicas, pools, router)."""
from __future__ import annotations

from dataclasses import replace

import pandas as pd

from servesim.scenarios.advice import node_advice
from servesim.scenarios.loader import scenario_from_dict
from servesim.scenarios.regions import Boundary, Regions
from servesim.scenarios.schema import Advice, ClusterSection

BASE = {"name": "adv", "deployment": {"model": "llama-3.1-8b", "gpu": "h100-sxm", "tp": 2},
        "workload": {"kind": "poisson", "input_len": 256, "output_len": 16, "num_requests": 40},
        "sweep": {"axis": "rate", "points": [5, 10]}, "slos": ["p99_ttft_ms <= 400"]}


def _regions() -> Regions:
    none = Boundary("x", None)
    return Regions("adv", none, none, none, none, none, Boundary("slo", 10.0), 1.0, 1000.0, 10.0)


def _mean(gpus: float | None) -> pd.DataFrame:
    row = {"demand": 10.0, "output_throughput": 1000.0, "p99_ttft_ms": 300.0, "p99_tpot_ms": 20.0,
           "p95_num_running": 11.2, "cost_per_1m_tokens": 0.5, "cost_per_h": 12.0, "revenue_per_h": 20.0,
           "profit_per_h": 8.0}
    if gpus is not None:
        row["num_gpus_total"] = gpus
    return pd.DataFrame([row])


def _lines(cluster: ClusterSection | None, gpus: float | None) -> str:
    sc = scenario_from_dict(BASE).variants[0]
    sc = replace(sc, cluster=cluster, advice=Advice(target_demand=25.0))
    return "\n".join(node_advice(sc, _regions(), _mean(gpus)).lines)


def test_single_replica_advice_speaks_of_a_node():
    text = _lines(None, None)
    assert "a node costs 12.00 USD/h" in text
    assert "admit at most 12 concurrent requests per node (max_num_seqs=12)." in text
    assert "run 3 replica(s) (6 GPUs), each at 8.33 req/s" in text
    assert "cluster" not in text


def test_collocated_cluster_advice_speaks_of_the_cluster():
    text = _lines(ClusterSection(replicas=4, router="least-outstanding-tokens"), 8)
    assert "best point 10 req/s into the whole cluster" in text
    assert "the cluster (4 replicas, 8 GPUs, least-outstanding-tokens router) costs 12.00 USD/h" in text
    assert "per replica (max_num_seqs=12 on each of its 4 replicas)" in text
    assert "run 3 copies of the cluster (24 GPUs)" in text  # ceil(25 / 10) clusters of 8 GPUs
    assert "a node" not in text and "per node" not in text


def test_disaggregated_per_replica_demand_advice():
    text = _lines(ClusterSection(prefill_replicas=2, decode_replicas=1, router="jsq", demand_per_replica=True), 6)
    assert "the cluster (2 prefill + 1 decode replicas, 6 GPUs, jsq router)" in text
    assert "best point 10 req/s per replica" in text
    assert "prefill and decode samples pooled" in text
    # the point is per replica: 25 req/s needs 3 replicas of 2 GPUs each
    assert "run 3 replica(s) of this cluster's kind (6 GPUs)" in text
    assert "a node" not in text and "per node" not in text
