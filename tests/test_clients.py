"""Closed-loop clients (sim/clients.py): lock-step gone with realistic clients, warm-up exclusion,
request-path overhead in TTFT, determinism, and bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from servesim.sim.clients import ClientKind, ClientModel, client_preset
from servesim.sim.config import make_engine_config
from servesim.sim.gpus import get_gpu
from servesim.sim.model_catalog import get_model
from servesim.sim.runner import simulate
from servesim.sim.workload import ClosedLoop, WorkloadSpec, build_workload


@pytest.fixture(scope="module")
def cfg():
    return make_engine_config(get_model("llama-3.1-8b"), get_gpu("h100-sxm"), "vllm-v1")


def _loop(users: int, n: int, client: ClientModel, seed: int = 0, isl: int = 1024, osl: int = 64) -> ClosedLoop:
    return ClosedLoop(users, np.full(n, isl), np.full(n, osl), seed=seed, client=client)


def test_ideal_client_keeps_lock_step(cfg):
    s = simulate(cfg, _loop(8, 64, ClientModel())).summary
    assert s["std_ttft_ms"] < 1e-9  # every user prefills in the same step, forever


@pytest.mark.parametrize("kind", ["vllm-bench", "aiperf", "guidellm"])
def test_realistic_clients_break_lock_step(cfg, kind):
    s = simulate(cfg, _loop(8, 64, client_preset(kind))).summary
    assert s["std_ttft_ms"] > 1.0
    assert s["completed"] == 64


def test_same_seed_same_result_other_seed_differs(cfg):
    client = client_preset("vllm-bench")
    a = simulate(cfg, _loop(8, 64, client, seed=3)).summary
    b = simulate(cfg, _loop(8, 64, client, seed=3)).summary
    c = simulate(cfg, _loop(8, 64, client, seed=4)).summary
    assert a == b
    assert a["mean_ttft_ms"] != c["mean_ttft_ms"]


def test_fixed_overhead_adds_to_ttft_and_e2el(cfg):
    ideal = simulate(cfg, _loop(1, 5, ClientModel())).summary
    slow = simulate(cfg, _loop(1, 5, ClientModel(ClientKind.VLLM_BENCH, request_overhead_s=0.05))).summary
    assert slow["mean_ttft_ms"] == pytest.approx(ideal["mean_ttft_ms"] + 50.0, rel=1e-9)
    assert slow["mean_e2el_ms"] == pytest.approx(ideal["mean_e2el_ms"] + 50.0, rel=1e-9)
    assert slow["mean_tpot_ms"] == pytest.approx(ideal["mean_tpot_ms"], rel=1e-9)


def test_prompt_tokens_are_served_one_request_at_a_time(cfg):
    # Four users send at t=0; the front end spends 1 ms per 1000 prompt tokens on each in turn, so
    # the engine receives them 1, 2, 3, 4 ms after t=0 and the client's TTFT includes that wait.
    client = ClientModel(ClientKind.VLLM_BENCH, per_prompt_token_s=1e-6)
    res = simulate(cfg, _loop(4, 4, client, isl=1000))
    first = res.records.cols["first_scheduled_s"]
    assert np.allclose(np.sort(first)[0], 1e-3)
    assert res.summary["std_ttft_ms"] > 0


def test_warmup_is_not_counted_and_drained_phase_starts_after_it(cfg):
    client = client_preset("aiperf", num_warmup_requests=8)
    loop = _loop(4, 8 + 20, client)
    res = simulate(cfg, loop)
    assert res.summary["completed"] == 20
    cols = res.records.cols
    last_warm_finish = np.nanmax(cols["finish_s"][:8])
    assert np.nanmin(cols["arrival_s"][8:]) >= last_warm_finish


def test_seamless_warmup_keeps_users_busy(cfg):
    client = client_preset("vllm-bench", num_warmup_requests=8)
    res = simulate(cfg, _loop(4, 28, client))
    cols = res.records.cols
    assert res.summary["completed"] == 20
    assert np.nanmin(cols["arrival_s"][8:]) < np.nanmax(cols["finish_s"][:8])


def test_ramp_up_spreads_first_requests(cfg):
    res = simulate(cfg, _loop(4, 4, ClientModel(ClientKind.AIPERF, ramp_up_s=2.0)))
    assert np.allclose(np.sort(res.records.cols["arrival_s"]), [0.0, 0.5, 1.0, 1.5])


def test_build_workload_adds_warmup_to_requested_count():
    spec = WorkloadSpec(kind="closed", num_requests=10, num_users=2, client=client_preset("aiperf", num_warmup_requests=4))
    loop = build_workload(spec, seed=0)
    assert len(loop) == 14 and loop.num_warmup_requests == 4


@pytest.mark.parametrize("field,value", [("jitter_s", -1.0), ("request_overhead_s", float("nan")),
                                         ("num_warmup_requests", -2)])
def test_bad_client_values_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        replace(ClientModel(), **{field: value})


def test_unknown_client_kind_lists_valid_ones():
    with pytest.raises(ValueError, match="vllm-bench"):
        client_preset("locust")


def test_cli_client_flags():
    out = subprocess.run([sys.executable, "-I", "-m", "servesim", "simulate", "--concurrency", "4", "--num-requests", "8",
                          "--client", "aiperf", "--warmup-requests", "4", "--input-len", "256", "--output-len", "16",
                          "--json"], capture_output=True, text=True, check=True)
    s = json.loads(out.stdout)
    assert s["completed"] == 8 and s["std_ttft_ms"] > 0
    bad = subprocess.run([sys.executable, "-I", "-m", "servesim", "simulate", "--concurrency", "4", "--client-jitter", "-1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--client-jitter" in bad.stderr and "Traceback" not in bad.stderr
