"""Clusters: single-replica equivalence, conservation across replicas and a KV transfer, the
transfer time, and the direction of a power cap's effect (routers: ``test_router.py``)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import mooncake_like, tiny_config

from servesim.sim.cluster import Cluster
from servesim.sim.cluster_config import ClusterConfig, ReplicaGroup, ReplicaRole, homogeneous_cluster
from servesim.sim.cluster_runner import simulate_cluster
from servesim.sim.cost_model import BatchShape, StepCostModel
from servesim.sim.gpus import get_link
from servesim.sim.kv_transfer import kv_transfer_bytes, transfer_time_s
from servesim.sim.model_catalog import get_model
from servesim.sim.power import CappedStepCostModel, PowerCap
from servesim.sim.profile import PowerCoefficients
from servesim.sim.router import RouterConfig
from servesim.sim.runner import SimOptions, simulate
from servesim.sim.workload import WorkloadSpec, build_workload


def _random(kind: str, n: int, input_len: int, output_len: int, **kw):
    return WorkloadSpec(kind=kind, num_requests=n, input_len=input_len, output_len=output_len,
                        dataset="random", range_ratio=0.6, **kw)


EQUIVALENCE_CASES = {
    "v1_preemption": (lambda: tiny_config("vllm-v1", num_gpu_blocks=80, max_num_seqs=32, max_num_batched_tokens=128,
                                          max_model_len=512),
                      lambda: build_workload(_random("poisson", 80, 150, 60, rate=60.0), 0)),
    "v1_prefix_caching": (lambda: tiny_config("vllm-v1", num_gpu_blocks=40, max_num_seqs=16, max_num_batched_tokens=64,
                                              max_model_len=512, enable_prefix_caching=True),
                          lambda: mooncake_like(80, seed=4, rate=40.0)),
    "v0_poisson": (lambda: tiny_config("vllm-v0", num_gpu_blocks=400, max_num_seqs=64, max_model_len=1024),
                   lambda: build_workload(_random("poisson", 80, 200, 80, rate=40.0), 1)),
}


@pytest.mark.parametrize("router", ["round-robin", "join-shortest-queue", "prefix-aware"])
@pytest.mark.parametrize("case", list(EQUIVALENCE_CASES))
def test_single_replica_cluster_is_todays_simulate_bit_for_bit(case, router):
    make_cfg, make_wl = EQUIVALENCE_CASES[case]
    cfg, wl = make_cfg(), make_wl()
    options = SimOptions(sample_interval_s=0.05)
    one = simulate(cfg, wl, options)
    cl = simulate_cluster(homogeneous_cluster(cfg, replicas=1, router=RouterConfig(router, staleness_s=0.1)), wl,
                          options)
    for key, value in one.summary.items():
        assert cl.summary[key] == value, key
    records = cl.records.to_frame()
    assert (records["replica"] == 0).all()
    pd.testing.assert_frame_equal(records[one.records.to_frame().columns], one.records.to_frame(), check_exact=True)
    series = cl.series.to_frame()
    pd.testing.assert_frame_equal(series.drop(columns="replica"), one.series.to_frame(), check_exact=True)
    assert cl.summary["num_replicas"] == 1 and cl.summary["per_replica"][0]["completed"] == one.summary["completed"]


def _all_blocks_free(rep) -> bool:
    kv = rep.engine.kv
    reserved = 1 if kv.null_block is not None else 0
    return kv.num_free_blocks == kv.block_pool.num_blocks - reserved and not kv.req_to_blocks


@pytest.mark.parametrize("router", ["round-robin", "random", "join-shortest-queue", "least-outstanding-tokens",
                                    "least-kv-usage", "prefix-aware"])
def test_collocated_conservation(router):
    cfg = tiny_config("vllm-v1", num_gpu_blocks=120, max_num_seqs=16, max_num_batched_tokens=64, max_model_len=512,
                      enable_prefix_caching=True)
    wl = mooncake_like(120, seed=2, rate=80.0)
    res = simulate_cluster(homogeneous_cluster(cfg, replicas=3, router=RouterConfig(router, staleness_s=0.05)), wl)
    s, frame = res.summary, res.records.to_frame()
    assert s["completed"] == len(wl) == sum(r["completed"] for r in s["per_replica"])
    assert set(frame["replica"]) <= {0, 1, 2} and (frame["replica"] >= 0).all()
    assert sum(r.engine.num_finished for r in res.cluster.replicas) == len(wl)
    assert all(_all_blocks_free(r) for r in res.cluster.replicas)
    series = res.series.to_frame()
    assert set(series["replica"]) == {0, 1, 2}


def _disagg(prefill: int, decode: int, link: str = "infiniband", blocks: int = 200, **kw) -> ClusterConfig:
    cfg = tiny_config("vllm-v1", num_gpu_blocks=blocks, max_num_seqs=16, max_num_batched_tokens=64,
                      max_model_len=512)
    return homogeneous_cluster(cfg, prefill_replicas=prefill, decode_replicas=decode, link=link, **kw)


def test_disaggregated_conservation_and_both_sides_freed():
    wl = build_workload(_random("poisson", 150, 150, 60, rate=80.0), 3)
    # A small decode pool: requests wait for decode blocks and decodes get preempted.
    res = simulate_cluster(_disagg(2, 2, blocks=60, router=RouterConfig("least-kv-usage", staleness_s=0.02)), wl)
    s, frame, cluster = res.summary, res.records.to_frame(), res.cluster
    decode_ids = {r.index for r in cluster.back}
    prefill_ids = {r.index for r in cluster.front}
    assert s["completed"] == len(wl) and s["num_kv_transfers"] == len(wl)
    assert set(frame["replica"]) <= decode_ids and set(frame["prefill_replica"]) <= prefill_ids
    # exactly one decode replica finished each request, and the decode replicas' completions add up
    assert sum(r.engine.num_finished for r in cluster.back) == len(wl)
    assert sum(p["completed"] for p in s["per_replica"] if p["role"] == "decode") == len(wl)
    assert sum(r.engine.num_finished for r in cluster.front) == len(wl)  # one prefill each
    assert all(_all_blocks_free(r) for r in cluster.replicas)
    assert s["mean_kv_wait_ms"] > 0  # the reservation queue was exercised
    # TTFT covers the prefill, the wait for blocks and the transfer
    ttft = frame["first_token_s"] - frame["arrival_s"]
    assert (ttft >= frame["transfer_s"] + frame["kv_wait_s"]).all()
    assert (frame["output_tokens"] == wl.output_tokens).all()


def test_slower_link_longer_ttft_same_tokens():
    wl = build_workload(_random("poisson", 60, 300, 30, rate=20.0), 4)
    fast = simulate_cluster(_disagg(1, 1, "nvlink"), wl).summary
    slow = simulate_cluster(_disagg(1, 1, "pcie"), wl).summary
    assert slow["mean_kv_transfer_ms"] > fast["mean_kv_transfer_ms"]
    assert slow["mean_ttft_ms"] > fast["mean_ttft_ms"]
    assert slow["total_output_tokens"] == fast["total_output_tokens"]


def test_transfer_time_from_model_kv_bytes_and_link():
    model = get_model("llama-3.1-70b")
    # 2 (K, V) x 80 layers x 8 KV heads x 128 dims x 2 bytes = 327,680 bytes per token in bf16
    assert kv_transfer_bytes(model, "bf16", 1) == 327_680
    assert kv_transfer_bytes(model, "fp8", 1000) == 163_840_000
    ib = get_link("infiniband")
    assert ib.bandwidth_bytes_per_s == 50e9
    expected = ib.latency_s + 1000 * 327_680 / (50e9 * 4)
    assert transfer_time_s(kv_transfer_bytes(model, "bf16", 1000), ib, 4) == pytest.approx(expected, rel=1e-15)
    with pytest.raises(ValueError, match="unknown link"):
        get_link("carrier-pigeon")


def test_transfer_time_recorded_per_request():
    cl = _disagg(1, 1, "pcie")
    wl = build_workload(WorkloadSpec(kind="burst", num_requests=1, input_len=200, output_len=5), 0)
    frame = simulate_cluster(cl, wl).records.to_frame()
    cfg = cl.groups[0].engine
    link = get_link("pcie")
    assert frame["transfer_s"][0] == pytest.approx(link.latency_s + 200 * cfg.model.kv_bytes_per_token(cfg.kv_dtype, 1)
                                                   / link.bandwidth_bytes_per_s, rel=1e-12)
    assert frame["kv_wait_s"][0] == 0.0


# ----- power -----------------------------------------------------------------------------------

def _cost(cap_w):
    cfg = tiny_config()
    inner = StepCostModel(cfg.model, cfg.gpu, cfg.profile.step)
    return CappedStepCostModel(inner, PowerCoefficients(idle_w=75, prefill_w=700, decode_w=380), PowerCap(cap_w)), inner


def test_power_cap_lower_cap_longer_steps_and_decode_less_sensitive():
    prefill = BatchShape(num_prefill_tokens=4096, num_prefill_seqs=4, prefill_attn_pairs=4 * 1024 * 1025 / 2)
    decode = BatchShape(num_decode_seqs=64, decode_context_tokens=64 * 2000)
    uncapped, inner = _cost(None)
    assert uncapped.step_time(prefill) == inner.step_time(prefill)  # bit for bit without a cap
    times = {cap: (_cost(cap)[0].step_time(prefill), _cost(cap)[0].step_time(decode)) for cap in (700, 500, 300)}
    assert times[700] == (inner.step_time(prefill), inner.step_time(decode))
    assert times[300][0] > times[500][0] > times[700][0]
    assert times[300][1] > times[500][1] >= times[700][1]
    slow_prefill = times[300][0] / times[700][0]
    slow_decode = times[300][1] / times[700][1]
    assert slow_prefill > slow_decode > 1.0  # memory-bound decode barely notices the clock
    a, b, fixed, c1, c2 = _cost(300)[0].decode_terms(64)
    assert (((a + b * 64 * 2000) + fixed) + c1) + c2 == pytest.approx(times[300][1], rel=1e-12)


def test_power_cap_lower_cap_less_energy_per_second_longer_latency():
    cfg = tiny_config("vllm-v1", num_gpu_blocks=400, max_num_seqs=32, max_num_batched_tokens=256, max_model_len=1024)
    wl = build_workload(_random("poisson", 200, 400, 60, rate=30.0), 5)
    runs = {cap: simulate_cluster(homogeneous_cluster(cfg, replicas=2, power_cap_w=cap), wl).summary
            for cap in (None, 450, 250)}
    assert runs[250]["mean_e2el_ms"] > runs[450]["mean_e2el_ms"] > runs[None]["mean_e2el_ms"]
    assert runs[250]["mean_gpu_power_w"] < runs[450]["mean_gpu_power_w"] < runs[None]["mean_gpu_power_w"]
    assert runs[250]["per_replica"][0]["gpu_power_cap_w"] == 250


def test_power_cap_applies_to_prefill_terms_and_multi_step_windows():
    """The capped model keeps the unscaled CPU-side prefill terms of the plain one and prices a
    vLLM 0.6 multi-step window (it had no window_time: a capped multi-step engine crashed)."""
    from dataclasses import replace
    model, inner = get_model("llama-3-8b"), _cost(None)[1]
    coeffs = replace(inner.coeffs, per_prefill_token_overhead_s=2e-6, prefill_layer_overhead_s=1e-4)
    plain = StepCostModel(model, inner.gpu, coeffs, 1)
    prefill = BatchShape(num_prefill_tokens=2048, num_prefill_seqs=2, prefill_attn_pairs=2 * 1024 * 1025 / 2)
    cpu = 2e-6 * 2048 + plain.prefill_fixed_s
    assert cpu > 0
    high = CappedStepCostModel(plain, PowerCoefficients(idle_w=75, prefill_w=700, decode_w=380), PowerCap(701.0))
    assert high.step_time(prefill) == plain.step_time(prefill)  # cap above demand: bit for bit
    low = CappedStepCostModel(plain, PowerCoefficients(idle_w=75, prefill_w=700, decode_w=380), PowerCap(300.0))
    assert low.step_time(prefill) > plain.step_time(prefill) > cpu
    assert high.window_time(32, 32 * 500, 10) == plain.window_time(32, 32 * 500, 10)
    assert low.window_time(32, 32 * 500, 10) > plain.window_time(32, 32 * 500, 10) > 0


def test_power_budget_splits_over_gpus_and_cap_below_idle_is_refused():
    cfg = tiny_config()
    cl = ClusterConfig((ReplicaGroup(cfg, 4),), power_budget_w=4 * 300.0)
    assert cl.gpu_cap_w(cl.groups[0]) == 300.0
    # the lowest applicable cap wins: a server cap over its GPUs, a group cap, a global one
    server = ClusterConfig((ReplicaGroup(cfg, 4), ReplicaGroup(cfg, 1, power_cap_w=250.0)),
                           server_power_cap_w=8 * 400.0, power_budget_w=1e6)
    assert [server.gpu_cap_w(g) for g in server.groups] == [400.0, 250.0]
    with pytest.raises(ValueError, match="idle power"):
        ClusterConfig((ReplicaGroup(cfg, 4),), power_budget_w=4 * 50.0)


def test_bad_cluster_configs_are_refused():
    cfg = tiny_config()
    with pytest.raises(ValueError, match="prefill and one decode"):
        ClusterConfig((ReplicaGroup(cfg, 1, ReplicaRole.PREFILL),))
    with pytest.raises(ValueError, match="not both"):
        homogeneous_cluster(cfg, replicas=2, prefill_replicas=1, decode_replicas=1)
    with pytest.raises(ValueError, match="vllm-v1"):
        ReplicaGroup(tiny_config("vllm-v0"), 1, ReplicaRole.DECODE)


def test_cluster_is_deterministic():
    cfg = tiny_config("vllm-v1", num_gpu_blocks=200, max_num_seqs=16, max_num_batched_tokens=64, max_model_len=512)
    wl = build_workload(_random("poisson", 80, 100, 40, rate=60.0), 6)
    cl = homogeneous_cluster(cfg, replicas=3, router=RouterConfig("random", seed=3))
    a, b = simulate_cluster(cl, wl), simulate_cluster(cl, wl)
    assert json.dumps(a.summary) == json.dumps(b.summary)


def test_cli_json_has_cluster_keys(capsys):
    from servesim.cli import main
    rc = main(["simulate", "--model", "llama-3-8b", "--rate", "20", "--num-requests", "60", "--replicas", "2",
               "--router", "jsq", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_replicas"] == 2 and len(summary["per_replica"]) == 2
    assert {"role", "completed", "energy_per_request_j"} <= set(summary["per_replica"][0])
    assert summary["completed"] == 60 and "energy_per_output_token_j" in summary
    rc = main(["simulate", "--rate", "20", "--num-requests", "10", "--prefill-replicas", "1"])
    assert rc == 2
    assert "decode-replicas" in capsys.readouterr().err


def test_fresh_router_sees_a_finish_that_a_stale_one_does_not():
    cfg = tiny_config("vllm-v1", num_gpu_blocks=200, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=512)
    from servesim.sim.workload import Workload
    # request 0 decodes for a long time on replica 0; request 1 finishes on replica 1 well before t = 1 s
    wl = Workload(np.array([0.0, 0.0, 1.0]), np.array([32, 32, 32]), np.array([400, 2, 2]))
    chosen = {}
    for staleness in (0.0, 10.0):
        res = simulate_cluster(homogeneous_cluster(cfg, replicas=2, router=RouterConfig("jsq", staleness_s=staleness)),
                               wl)
        chosen[staleness] = res.records.to_frame()["replica"].tolist()
    assert chosen[0.0] == [0, 1, 1]    # at t = 1 replica 1 is empty
    assert chosen[10.0] == [0, 1, 0]   # the t = 0 snapshot plus its own two dispatches: a tie, lowest index


def test_prefix_aware_routing_gets_more_cache_hits_than_round_robin():
    cfg = tiny_config("vllm-v1", num_gpu_blocks=300, max_num_seqs=16, max_num_batched_tokens=64, max_model_len=512,
                      enable_prefix_caching=True)
    wl = mooncake_like(200, seed=7, rate=40.0, num_prefixes=4, prefix_blocks=3)
    hits = {}
    for router in ("round-robin", "prefix-aware"):
        res = simulate_cluster(homogeneous_cluster(cfg, replicas=4, router=RouterConfig(router, staleness_s=0.1)), wl)
        hits[router] = int(res.records.to_frame()["num_cached_tokens"].sum())
    assert hits["prefix-aware"] > hits["round-robin"]


@pytest.mark.parametrize("replicas", [1, 3])
def test_closed_loop_cluster_users_keep_one_request_and_one_replica_matches(replicas):
    cfg = tiny_config("vllm-v1", num_gpu_blocks=60, max_num_seqs=16, max_num_batched_tokens=64, max_model_len=512)
    wl = build_workload(_random("closed", 60, 120, 30, num_users=8, think_time_s=0.05), 3)
    res = simulate_cluster(homogeneous_cluster(cfg, replicas=replicas, router=RouterConfig("jsq", staleness_s=0.1)),
                           wl)
    frame = res.records.to_frame()
    assert res.summary["completed"] == 60 and set(frame["replica"]) == set(range(replicas))
    think = wl.think_times(60)
    later = frame.iloc[8:]
    assert np.all(frame["arrival_s"][:8] == 0.0)
    for k, t in zip(later["request_id"], later["arrival_s"]):  # a think time after some finish
        assert np.any(np.isclose(frame["finish_s"].to_numpy() + think[k], t, rtol=0, atol=1e-12))
    if replicas == 1:  # the per-request results of today's simulate (the engine runs its live path here)
        one = simulate(cfg, wl)
        pd.testing.assert_frame_equal(frame[one.records.to_frame().columns], one.records.to_frame(), check_exact=True)
        for key in ("completed", "mean_ttft_ms", "p99_itl_ms", "mean_e2el_ms", "num_preemptions", "gpu_energy_j"):
            assert res.summary[key] == one.summary[key], key


def test_closed_loop_disaggregated():
    wl = build_workload(_random("closed", 40, 150, 20, num_users=6, think_time_s=0.02), 5)
    res = simulate_cluster(_disagg(1, 2, router=RouterConfig("lot", staleness_s=0.05)), wl)
    assert res.summary["completed"] == 40 and res.summary["num_kv_transfers"] == 40
    assert all(_all_blocks_free(r) for r in res.cluster.replicas)


def test_blocks_held_on_both_sides_during_a_transfer_and_freed_after():
    from servesim.sim.cluster import Cluster
    from servesim.sim.gpus import LinkSpec
    from servesim.sim.workload import Workload
    cfg = tiny_config("vllm-v1", num_gpu_blocks=64, max_num_seqs=8, max_num_batched_tokens=256, max_model_len=512)
    nbytes = kv_transfer_bytes(cfg.model, cfg.kv_dtype, 200)
    slow = LinkSpec("slow", nbytes / 1.0, 1e-6)  # 200 tokens' KV take one second
    cl = ClusterConfig((ReplicaGroup(cfg, 1, ReplicaRole.PREFILL), ReplicaGroup(cfg, 1, ReplicaRole.DECODE)),
                       link=slow)
    cluster = Cluster(cl, Workload(np.array([0.0]), np.array([200]), np.array([3])))
    prefill, decode = cluster.replicas
    full = 64 - 1  # v1 keeps a null block
    cluster.env.run(until=0.5)  # the prefill (a few ms) is done, the KV is on the wire
    assert prefill.engine.num_finished == 1 and decode.engine.num_finished == 0
    assert prefill.engine.kv.num_free_blocks == full - 13  # cdiv(200, 16) blocks still held for the send
    assert decode.engine.kv.num_free_blocks == full - 13   # and allocated for the receive
    cluster.env.run()
    assert prefill.engine.kv.num_free_blocks == full and decode.engine.kv.num_free_blocks == full
    assert cluster.records.status[0] == 1 and cluster.transfer_s[0] == pytest.approx(1.0 + 1e-6)
    assert cluster.records.cols["first_token_s"][0] > 1.0  # TTFT includes the transfer


@pytest.mark.parametrize("router, staleness", [("round-robin", 0.05), ("random", 0.05),
                                               ("join-shortest-queue", 0.05), ("least-outstanding-tokens", 0.3),
                                               ("least-kv-usage", 0.05), ("prefix-aware", 0.1)])
def test_replicas_run_alone_between_refreshes_with_the_same_results(router, staleness, monkeypatch):
    """Collocated replicas of an open loop run in their own environments (one after another, up to
    each refresh instant of the router's snapshot); one shared environment gives the same summary,
    records and time series."""
    cfg = tiny_config("vllm-v1", num_gpu_blocks=120, max_num_seqs=16, max_num_batched_tokens=64, max_model_len=512,
                      enable_prefix_caching=True)
    wl = mooncake_like(160, seed=3, rate=60.0)
    cluster = homogeneous_cluster(cfg, replicas=3, router=RouterConfig(router, staleness_s=staleness))
    alone = simulate_cluster(cluster, wl, SimOptions(sample_interval_s=0.05))
    assert alone.cluster.independent or alone.cluster.windowed
    monkeypatch.setattr(Cluster, "share_environment", True)
    shared = simulate_cluster(cluster, wl, SimOptions(sample_interval_s=0.05))
    assert not shared.cluster.independent and not shared.cluster.windowed
    assert json.dumps(alone.summary, sort_keys=True, default=str) == json.dumps(shared.summary, sort_keys=True,
                                                                                 default=str)
    pd.testing.assert_frame_equal(alone.records.to_frame(), shared.records.to_frame(), check_exact=True)
    pd.testing.assert_frame_equal(alone.series.to_frame(), shared.series.to_frame(), check_exact=True)
