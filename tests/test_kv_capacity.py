"""KV capacity: the memory model's direction of effect and errors, a synthetic round trip of the
overhead fit, the shipped-profile writer, and (when ../shared/data is present) the fit on the 115
real start-up records."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from servesim.calibrate.kv_capacity import evaluate, fit_terms, report_dict, write_profiles
from servesim.calibrate.kv_records import RECORDS_FILE, KvRecord, MemoryEra, load_records
from servesim.cli import main
from servesim.sim.config import make_engine_config
from servesim.sim.data_paths import find_shared_data
from servesim.sim.gpus import get_gpu
from servesim.sim.memory import MemoryInputs, kv_capacity, memory_breakdown, weight_bytes_per_gpu
from servesim.sim.model_catalog import get_model
from servesim.sim.profile import MemoryCoefficients, load_profile, shipped_profiles_dir

GIB = 2**30
H100 = get_gpu("h100-sxm")


def _records_file() -> Path | None:
    try:
        return find_shared_data(str(RECORDS_FILE))
    except FileNotFoundError:
        return None


def _cfg(model: str = "llama-3.1-8b", **kw):
    return make_engine_config(get_model(model), H100, "vllm-v1", max_model_len=kw.pop("max_model_len", 8192), **kw)


# ----- direction of effect and errors ---------------------------------------------------------
def test_more_batched_tokens_leave_fewer_kv_tokens():
    tokens = [kv_capacity(_cfg(max_num_batched_tokens=n, max_num_seqs=256)).kv_capacity_tokens
              for n in (2048, 8192, 32768, 131072)]
    assert tokens == sorted(tokens, reverse=True) and tokens[0] > tokens[-1]


def test_higher_memory_utilization_leaves_more_kv_tokens():
    tokens = [kv_capacity(_cfg(gpu_memory_utilization=u)).kv_capacity_tokens for u in (0.5, 0.7, 0.9, 0.95)]
    assert tokens == sorted(tokens) and tokens[0] < tokens[-1]


def test_more_sampler_rows_and_a_bigger_vocabulary_cost_memory():
    few, many = (kv_capacity(_cfg(max_num_seqs=s)).activation_bytes for s in (64, 1024))
    assert many > few
    mem = MemoryCoefficients()
    small = memory_breakdown(MemoryInputs.from_config(_cfg()), mem)
    big_vocab = replace(get_model("llama-3.1-8b"), vocab_size=256000)
    big = memory_breakdown(replace(MemoryInputs.from_config(_cfg()), model=big_vocab), mem)
    assert big.activation_bytes > small.activation_bytes


def test_tensor_parallel_shards_weights_and_adds_communicator_memory():
    one, two = (kv_capacity(_cfg(tp=tp)) for tp in (1, 2))
    assert two.weight_bytes < 0.51 * one.weight_bytes + 0.1 * GIB
    assert two.non_torch_bytes > one.non_torch_bytes
    assert two.kv_capacity_tokens > 2 * one.kv_capacity_tokens  # per GPU the KV heads halve too


def test_quantized_linear_layers_keep_16_bit_embeddings():
    m = get_model("llama-3.1-8b")
    bf16, fp8 = weight_bytes_per_gpu(m, "bf16", 1), weight_bytes_per_gpu(m, "fp8", 1)
    embeddings = 2 * 128256 * 4096 * 2
    assert fp8 == pytest.approx((bf16 - embeddings) / 2 + embeddings, rel=1e-3)


def test_a_model_that_does_not_fit_is_a_clear_error():
    with pytest.raises(ValueError) as err:
        kv_capacity(_cfg("llama-3.1-70b"))
    text = str(err.value)
    assert "llama-3.1-70b does not fit on h100-sxm with TP=1" in text and "weights take" in text
    assert "tensor parallelism" in text


def test_the_cli_refuses_a_model_that_does_not_fit(capsys):
    rc = main(["simulate", "--model", "llama-3.1-70b", "--gpu", "h100-sxm", "--tp", "1", "--num-requests", "4"])
    err = capsys.readouterr().err
    assert rc != 0 and "does not fit" in err and "Traceback" not in err


def test_cuda_graphs_are_not_deducted_by_the_shipped_v1_profile():
    # vLLM <= 0.19 captures graphs after sizing the KV cache (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS off)
    assert kv_capacity(_cfg()).cuda_graph_bytes == 0.0


# ----- synthetic round trip -------------------------------------------------------------------
TRUTH = MemoryCoefficients(non_torch_bytes=0.4 * GIB, non_torch_tp_bytes=1.5 * GIB, non_torch_per_rank_bytes=0.1 * GIB,
                           activation_tensors_hidden=5.0, sampler_bytes_per_logit=20.0,
                           weight_overhead_bytes=0.05 * GIB)


def _synthetic_record(i: int, model: str, tp: int, tokens: int, seqs: int, util: float, dtype: str = "bf16",
                      components: bool = True) -> KvRecord:
    m = get_model(model)
    inp = MemoryInputs(m, H100.memory_bytes, util, tp, dtype, "bf16", 16, tokens, seqs)
    b = memory_breakdown(inp, TRUTH)
    logged = (lambda v: round(v / GIB, 2)) if components else (lambda v: None)  # vLLM logs 0.01 GiB
    return KvRecord(index=i, source="synthetic", model_id=model, version="0.19.0", era=MemoryEra.V1_017, model=m,
                    gpu=H100, weight_dtype=dtype, kv_cache_dtype="bf16", tp=tp, gpu_memory_utilization=util,
                    max_model_len=4096, max_num_seqs=seqs, max_num_batched_tokens=tokens, block_size=16,
                    reported_tokens=b.kv_capacity_tokens, available_kv_gib=logged(b.available_kv_bytes),
                    weights_gib=logged(b.weight_bytes), activation_peak_gib=logged(b.activation_bytes),
                    non_torch_gib=logged(b.non_torch_bytes), cuda_graph_gib=None, total_memory_gib=None,
                    confidence="synthetic", assumptions=())


def test_fit_recovers_known_overheads_from_generated_records():
    """Records generated from TRUTH (components rounded to 0.01 GiB as vLLM logs them) are fitted
    from the default coefficients: every term comes back within its logging-limited tolerance."""
    grid = [("llama-3.1-8b", 1, 8192, 1024, 0.95), ("llama-3.1-8b", 2, 8192, 1024, 0.9),
            ("llama-3.1-8b", 4, 2048, 256, 0.9), ("qwen2.5-7b", 1, 8192, 1024, 0.95),
            ("codellama-7b", 1, 16384, 64, 0.9), ("granite-3.1-8b", 1, 32768, 128, 0.95),
            ("gemma-2-9b", 1, 8192, 512, 0.9), ("qwen2.5-72b", 4, 8192, 1024, 0.95),
            ("mixtral-8x7b", 2, 4096, 256, 0.95), ("phi-4", 2, 8192, 1024, 0.9),
            ("qwen3-8b", 4, 8192, 1024, 0.95, "bf16", False), ("llama-3.1-70b", 2, 8192, 1024, 0.95, "fp8")]
    records = [_synthetic_record(i, *g) for i, g in enumerate(grid)]
    terms = fit_terms(records)
    got = terms.coefficients[MemoryEra.V1_017]
    assert got.sampler_bytes_per_logit == pytest.approx(20.0, abs=0.5)
    assert got.activation_tensors_hidden == pytest.approx(5.0, abs=0.6)
    assert got.non_torch_bytes == pytest.approx(0.4 * GIB, abs=0.02 * GIB)
    assert got.non_torch_tp_bytes + 2 * got.non_torch_per_rank_bytes == pytest.approx(1.7 * GIB, abs=0.03 * GIB)
    assert got.non_torch_per_rank_bytes == pytest.approx(0.1 * GIB, abs=0.02 * GIB)
    assert got.weight_overhead_bytes == pytest.approx(0.05 * GIB, abs=0.01 * GIB)
    result = evaluate(records)
    assert result["summary"]["in_sample"]["max_abs_error"] < 0.005


def test_a_tp_term_without_tp_records_is_reported_not_identified():
    records = [_synthetic_record(i, m, 1, 8192, 1024, 0.95) for i, m in enumerate(
        ["llama-3.1-8b", "qwen2.5-7b", "codellama-7b", "gemma-2-9b"])]
    terms = fit_terms(records)
    assert {"non_torch_tp_bytes", "non_torch_per_rank_bytes"} <= set(terms.not_identified[MemoryEra.V1_017])


def test_write_profiles_rewrites_only_the_memory_section(tmp_path):
    src = shipped_profiles_dir()
    for p in src.glob("*.json"):
        shutil.copy(p, tmp_path / p.name)
    before = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    records = [_synthetic_record(i, *g) for i, g in enumerate(
        [("llama-3.1-8b", 1, 8192, 1024, 0.95), ("llama-3.1-8b", 2, 8192, 1024, 0.9),
         ("qwen2.5-7b", 4, 8192, 1024, 0.95), ("codellama-7b", 1, 16384, 64, 0.9)])]
    fake = tmp_path / "records.csv"
    fake.write_text("synthetic\n")
    report = report_dict(evaluate(records), fake)
    written = write_profiles(report, tmp_path)
    assert {p.name for p in written} >= {"h100-sxm_vllm-v1.json"}
    for p in written:
        after = json.loads(p.read_text())
        assert {k: v for k, v in after.items() if k != "memory"} == {k: v for k, v in before[p.name].items()
                                                                     if k != "memory"}
        assert after["memory"]["sampler_bytes_per_logit"]["value"] == pytest.approx(20.0, abs=0.5)
        load_profile(p)  # the schema still loads


# ----- the real start-up records --------------------------------------------------------------
@pytest.fixture(scope="module")
def real_result():
    path = _records_file()
    if path is None:
        pytest.skip("needs ../shared/data/kv_capacity (real vLLM start-up records)")
    records = load_records(path)
    return records, evaluate(records)


def test_every_record_is_used_or_skipped_with_a_reason(real_result):
    records, result = real_result
    assert len(records) == 115
    assert all(r.usable or r.skip_reason for r in records)
    assert sum(r.usable for r in records) >= 70


def test_real_records_meet_the_kv_target_leave_one_model_out(real_result):
    """The issue's target: 95% of the records within 3%, each architecture predicted by terms
    fitted without it.  The one record vLLM could not fit (no memory for a KV block) is predicted
    not to fit."""
    _, result = real_result
    lomo = result["summary"]["leave_one_model_out"]
    assert lomo["n"] >= 65 and lomo["within_3pct"] >= 0.95
    assert lomo["failures_predicted"] == "1/1"


def test_real_memory_components_match_their_logged_values(real_result):
    _, result = real_result
    rows = [r for r in result["in_sample"] if r["era"] == MemoryEra.V1_017.value]
    for logged, pred, tol in (("weights_gib", "weights_gib", 0.12), ("activation_peak_gib", "activation_gib", 0.25),
                              ("non_torch_gib", "non_torch_gib", 0.25)):
        errs = sorted(abs(r["predicted"][pred] - r["logged"][logged]) for r in rows if r["logged"][logged] is not None)
        assert errs and errs[len(errs) // 2] < 0.05 and errs[-1] < tol, logged


def test_a_profile_with_the_old_memory_terms_is_refused_then_rewritten(tmp_path):
    src = shipped_profiles_dir() / "h100-sxm_vllm-v1.json"
    data = json.loads(src.read_text())
    data["memory"] = {"non_torch_bytes": {"value": 1e9}, "activation_bytes_per_token_hidden": {"value": 18.0},
                      "cuda_graph_bytes": {"value": 5e8}}
    legacy = tmp_path / "legacy_vllm-v1.json"
    legacy.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="--write-profiles"):
        load_profile(legacy)
    records = [_synthetic_record(i, m, tp, 8192, 1024, 0.95) for i, (m, tp) in enumerate(
        [("llama-3.1-8b", 1), ("qwen2.5-7b", 2), ("codellama-7b", 4), ("gemma-2-9b", 1)])]
    fake = tmp_path / "records.csv"
    fake.write_text("synthetic\n")
    write_profiles(report_dict(evaluate(records), fake), tmp_path)
    assert load_profile(legacy).memory.sampler_bytes_per_logit == pytest.approx(20.0, abs=0.5)
