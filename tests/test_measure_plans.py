"""Measurement plans (servesim.measure.plans) and the launcher's pure helpers."""
from __future__ import annotations

import pytest

from servesim.measure.harness import parse_flags
from servesim.measure.launcher import check_url, is_loopback, parse_kv_log
from servesim.measure.plans import FAMILIES, LIMITS, Mode, load_plan, plan_from_dict, shipped_plans


def test_shipped_plans_cover_every_family_and_stay_bounded():
    assert {"quick", "full"} <= set(shipped_plans())
    for name in ("quick", "full"):
        plan = load_plan(name)
        assert set(plan.families) == set(FAMILIES)
        points, dropped = plan.points(131072)
        assert not dropped
        assert sum(len(p.requests) for p in points) <= plan.max_requests
        assert len({p.point_id for p in points}) == len(points)  # ids are unique: they key --resume
        assert all(len(p.requests) <= LIMITS["requests_per_point"] for p in points)


def test_expansion_modes_lengths_and_max():
    plan = plan_from_dict({"families": {
        "prefill": {"prompt_lens": [16, "max"], "output_len": 1, "repeats": 2},
        "decode": {"concurrency": [1, 4], "prompt_len": 8, "output_len": 5},
        "kv_capacity": {},
        "rate": {"rates": [2.5], "num_requests": 5, "prompt_len": 8, "output_len": 2}}})
    points, dropped = plan.points(100)
    by_id = {p.point_id: p for p in points}
    assert by_id["prefill/pmax"].requests[0].prompt_len == 99  # max_model_len - output_len
    assert by_id["prefill/p16"].mode is Mode.SEQUENTIAL and len(by_id["prefill/p16"].requests) == 2
    assert by_id["decode/n4"].mode is Mode.BURST and len(by_id["decode/n4"].requests) == 4
    assert by_id["kv_capacity"].mode is Mode.READOUT and not by_id["kv_capacity"].requests
    offsets = [r.offset_s for r in by_id["rate/r2.5"].requests]
    assert offsets[0] == 0.0 and offsets == sorted(offsets)
    # Seeded: the same plan gives the same arrivals.
    again, _ = plan.points(100)
    assert [r.offset_s for r in {p.point_id: p for p in again}["rate/r2.5"].requests] == offsets
    # Prompts that do not fit the served context are dropped and named.
    _, dropped = plan_from_dict({"families": {"prefill": {"prompt_lens": [16, 200]}}}).points(100)
    assert dropped == ["prefill/p200"]


@pytest.mark.parametrize("raw, message", [
    ({"families": {"bogus": {}}}, "unknown families"),
    ({"families": {"decode": {"concurrency": [100000]}}}, "concurrency"),
    ({"families": {"rate": {"rates": [-1]}}}, "rate.rates"),
    ({"families": {"prefill": {"prompt_lens": ["huge"]}}}, "prefill.prompt_lens"),
    ({"families": {}, "max_duration_s": 1e9}, "max_duration_s"),
    ({"families": {}, "colour": "red"}, "unknown keys"),
    ({"families": {"decode": {"concurrency": [4096, 4096]}}, "max_requests": 5000}, "max_requests"),
])
def test_bad_plans_are_rejected_with_the_key_named(raw, message):
    with pytest.raises(ValueError, match=message):
        plan_from_dict(raw)


def test_unknown_plan_name_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="quick"):
        load_plan("no-such-plan")


def test_kv_log_lines_of_both_generations():
    v1 = "INFO ... GPU KV cache size: 441,216 tokens\nINFO Maximum concurrency for 131,072 tokens per request: 3.37x"
    assert parse_kv_log(v1) == {"kv_cache_tokens": 441216,
                                "max_concurrency": {"tokens_per_request": 131072, "concurrency": 3.37}}
    v0 = "INFO gpu_executor.py:102] # GPU blocks: 27153, # CPU blocks: 2048"
    assert parse_kv_log(v0) == {"num_gpu_blocks": 27153, "num_cpu_blocks": 2048}


def test_urls_and_flags():
    assert is_loopback("http://127.0.0.1:8000") and is_loopback("http://localhost:1") and is_loopback("http://[::1]:8")
    assert not is_loopback("http://10.0.0.1:8000")
    assert check_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    with pytest.raises(ValueError, match="--url"):
        check_url("127.0.0.1:8000")
    flags = parse_flags(["--max-num-seqs", "256", "--enable-chunked-prefill", "--max-model-len=4096", "--port", "8"])
    assert flags == {"max_num_seqs": "256", "enable_chunked_prefill": True, "max_model_len": "4096", "port": "8"}
