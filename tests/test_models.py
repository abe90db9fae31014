"""Model catalogue: parameter counts, KV bytes per token, name resolution and config.json loading."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from servesim.sim.model_catalog import CATALOG, from_hf_config, get_model, list_models
from servesim.sim.models import ModelSpec

# Published totals (model cards / Hugging Face safetensors metadata), in billions of parameters.
PUBLISHED_PARAMS_B = {
    "llama-3-8b": 8.03, "llama-3.1-8b": 8.03, "llama-3.1-70b": 70.6, "llama-3.1-405b": 405.9,
    "llama-2-7b": 6.74, "llama-2-13b": 13.0, "llama-2-70b": 69.0,
    "mistral-7b-v0.3": 7.25, "mistral-nemo-12b": 12.2, "mistral-large-2407": 123.0,
    "mixtral-8x7b": 46.7, "mixtral-8x22b": 141.0,
    "qwen1.5-14b": 14.2, "qwen2.5-7b": 7.61, "qwen2.5-32b": 32.8, "qwen2.5-72b": 72.7,
    "qwen3-8b": 8.2, "qwen3-32b": 32.8, "deepseek-llm-7b": 6.9,
    "gpt2-xl": 1.56, "falcon-40b": 41.8,
    "gemma-2-2b": 2.61, "gemma-2-9b": 9.24, "gemma-2-27b": 27.2,
    "phi-3-mini-4k": 3.82, "phi-3-small-8k": 7.39, "phi-3-medium-4k": 14.0,
}

MLENERGY_NAMES = [  # column Model of the ML.ENERGY v2 H100 chat results
    "google/gemma-2-27b-it", "google/gemma-2-2b-it", "google/gemma-2-9b-it",
    "meta-llama/Meta-Llama-3.1-405B-Instruct", "meta-llama/Meta-Llama-3.1-70B-Instruct",
    "meta-llama/Meta-Llama-3.1-8B-Instruct", "microsoft/Phi-3-medium-4k-instruct",
    "microsoft/Phi-3-mini-4k-instruct", "microsoft/Phi-3-small-8k-instruct",
    "mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mistral-Large-Instruct-2407",
    "mistralai/Mistral-Nemo-Instruct-2407", "mistralai/Mixtral-8x22B-Instruct-v0.1",
    "mistralai/Mixtral-8x7B-Instruct-v0.1",
]

LLAMA_STYLE_CONFIG = {
    "_name_or_path": "example/tiny-llama", "model_type": "llama", "num_hidden_layers": 4, "hidden_size": 256,
    "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 688, "vocab_size": 1000,
    "max_position_embeddings": 2048, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}
GPT2_STYLE_CONFIG = {  # gpt2-xl's config.json, trimmed
    "model_type": "gpt2", "n_layer": 48, "n_embd": 1600, "n_head": 25, "n_inner": None,
    "vocab_size": 50257, "n_positions": 1024, "n_ctx": 1024, "activation_function": "gelu_new",
}


def write_config(folder: Path, config: dict, name: str = "config.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(config))
    return path


# ----- catalogue facts ------------------------------------------------------------------------
def test_catalogue_covers_the_required_models() -> None:
    assert set(PUBLISHED_PARAMS_B) <= set(CATALOG)
    assert {"llama-3-70b", "mistral-7b-v0.2"} <= set(CATALOG)
    assert list_models() == sorted(CATALOG)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_B))
def test_param_count_within_2pct_of_published(name: str) -> None:
    published = PUBLISHED_PARAMS_B[name] * 1e9
    assert CATALOG[name].num_params == pytest.approx(published, rel=0.02)


@pytest.mark.parametrize("name, spec", sorted(CATALOG.items()))
def test_entries_are_consistent(name: str, spec: ModelSpec) -> None:
    assert spec.name == name == name.lower()
    assert spec.hf_id and "/" in spec.hf_id
    assert get_model(spec.hf_id) is spec
    assert get_model(name.upper()) is spec


def test_moe_active_params() -> None:
    mixtral = CATALOG["mixtral-8x7b"]
    assert mixtral.is_moe and mixtral.num_experts == 8 and mixtral.num_experts_per_tok == 2
    # Mistral AI quotes ~12.9B active parameters per token (embedding lookup included there).
    assert mixtral.num_active_params == pytest.approx(12.9e9, rel=0.02)


def test_fp32_checkpoints_are_served_in_16_bits() -> None:
    assert CATALOG["gemma-2-9b"].torch_dtype == "fp32"
    assert CATALOG["gemma-2-9b"].serving_dtype == "bf16"
    assert CATALOG["gpt2-xl"].serving_dtype == "bf16"
    assert CATALOG["llama-2-7b"].serving_dtype == "fp16"
    assert CATALOG["llama-3.1-8b"].serving_dtype == "bf16"


# ----- KV cache ---------------------------------------------------------------------------
def test_kv_bytes_llama3_8b() -> None:
    spec = get_model("llama-3-8b")
    assert spec.kv_bytes_per_token("bf16") == 131072  # 2 * 32 layers * 8 heads * 128 * 2 B = 128 KiB
    assert spec.kv_bytes_per_token("fp8") == 65536


@pytest.mark.parametrize("name, expected", [
    ("falcon-40b", 2 * 60 * 8 * 64 * 2),        # 8 KV groups (new decoder architecture)
    ("gpt2-xl", 2 * 48 * 25 * 64 * 2),          # MHA: all 25 heads cached
    ("llama-2-7b", 2 * 32 * 32 * 128 * 2),      # MHA: 512 KiB
    ("qwen2.5-7b", 2 * 28 * 4 * 128 * 2),       # GQA 4 KV heads
    ("gemma-2-9b", 2 * 42 * 8 * 256 * 2),       # head_dim 256
    ("phi-3-mini-4k", 2 * 32 * 32 * 96 * 2),    # head_dim 3072 / 32 = 96
])
def test_kv_bytes_per_token_bf16(name: str, expected: int) -> None:
    assert get_model(name).kv_bytes_per_token("bf16") == expected


def test_kv_bytes_split_and_replicated_across_tp() -> None:
    spec = get_model("llama-3.1-70b")
    assert spec.kv_bytes_per_token("bf16", tp=1) == 327680
    assert spec.kv_bytes_per_token("bf16", tp=4) == 327680 / 4
    assert spec.kv_bytes_per_token("bf16", tp=8) == 327680 / 8
    # 8 KV heads on 16 ranks: each rank keeps a replica of one head, as vLLM does.
    assert spec.kv_bytes_per_token("bf16", tp=16) == 327680 / 8


# ----- name resolution --------------------------------------------------------------------
@pytest.mark.parametrize("alias, canonical", [
    ("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama-3.1-8b"),
    ("llama-3.1-8b", "llama-3.1-8b"),
    ("Llama-3.1-8B-Instruct", "llama-3.1-8b"),
    ("meta-llama/Llama-3.1-8B", "llama-3.1-8b"),
    ("Meta-Llama-3-8B", "llama-3-8b"),
    ("meta-llama/Meta-Llama-3-70B-Instruct", "llama-3-70b"),
    ("meta-llama/Llama-2-7b-chat-hf", "llama-2-7b"),
    ("Mistral-7B", "mistral-7b-v0.3"),
    ("mistralai/Mistral-7B-Instruct-v0.2", "mistral-7b-v0.2"),
    ("Qwen/Qwen2.5-72B-Instruct", "qwen2.5-72b"),
    ("deepseek-ai/deepseek-llm-7b-chat", "deepseek-llm-7b"),
    ("gpt2-xl", "gpt2-xl"),
    ("tiiuae/falcon-40b-instruct", "falcon-40b"),
    ("mixtral_8x7b", "mixtral-8x7b"),
])
def test_alias_resolution(alias: str, canonical: str) -> None:
    assert get_model(alias) is CATALOG[canonical]


@pytest.mark.parametrize("name", MLENERGY_NAMES)
def test_mlenergy_model_names_resolve(name: str) -> None:
    spec = get_model(name)
    assert spec.hf_id.split("/")[0] == name.split("/")[0]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'llama-9-1b'") as info:
        get_model("llama-9-1b")
    assert "llama-3.1-8b" in str(info.value) and "gpt2-xl" in str(info.value)


# ----- config.json ------------------------------------------------------------------------
def test_load_llama_style_config_file_and_folder(tmp_path: Path) -> None:
    path = write_config(tmp_path / "tiny-llama", LLAMA_STYLE_CONFIG)
    spec = get_model(str(path))
    assert (spec.num_layers, spec.hidden_size, spec.num_key_value_heads, spec.head_dim) == (4, 256, 2, 32)
    assert spec.mlp_gated and not spec.tie_word_embeddings and spec.torch_dtype == "bf16"
    assert spec.name == spec.hf_id == "example/tiny-llama"
    assert get_model(str(path.parent)) == spec
    assert spec.kv_bytes_per_token("bf16") == 2 * 4 * 2 * 32 * 2


def test_load_gpt2_style_config_matches_catalogue(tmp_path: Path) -> None:
    path = write_config(tmp_path / "gpt2-xl", GPT2_STYLE_CONFIG)
    spec = get_model(str(path))
    assert spec.name == "gpt2-xl"
    assert spec == replace(CATALOG["gpt2-xl"], hf_id="")
    assert spec.intermediate_size == 6400 and not spec.mlp_gated and spec.tie_word_embeddings
    assert spec.torch_dtype == "fp32"  # no torch_dtype key: float32 checkpoint


def test_falcon_conventions() -> None:
    falcon_40b = {"model_type": "falcon", "hidden_size": 8192, "num_attention_heads": 128, "num_kv_heads": 8,
                  "num_hidden_layers": 60, "new_decoder_architecture": True, "parallel_attn": True,
                  "vocab_size": 65024, "torch_dtype": "bfloat16"}
    spec = from_hf_config(falcon_40b, "falcon-40b")
    assert spec == replace(CATALOG["falcon-40b"], hf_id="")
    refined_web = {"model_type": "RefinedWeb", "hidden_size": 8192, "n_head": 128, "n_head_kv": 8, "n_layer": 60,
                   "vocab_size": 65024, "torch_dtype": "bfloat16"}
    assert from_hf_config(refined_web, "falcon-40b") == spec
    falcon_7b = {"model_type": "falcon", "hidden_size": 4544, "num_attention_heads": 71, "num_hidden_layers": 32,
                 "multi_query": True, "new_decoder_architecture": False, "vocab_size": 65024}
    assert from_hf_config(falcon_7b, "falcon-7b").num_key_value_heads == 1  # MQA


def test_moe_conventions() -> None:
    mixtral = {"model_type": "mixtral", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
               "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000,
               "max_position_embeddings": 32768, "num_local_experts": 8, "num_experts_per_tok": 2,
               "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    assert from_hf_config(mixtral, "mixtral-8x7b").num_params == CATALOG["mixtral-8x7b"].num_params
    qwen_moe = {"model_type": "qwen2_moe", "num_hidden_layers": 24, "hidden_size": 2048, "num_attention_heads": 16,
                "num_key_value_heads": 16, "intermediate_size": 5632, "moe_intermediate_size": 1408,
                "shared_expert_intermediate_size": 5632, "num_experts": 60, "num_experts_per_tok": 4,
                "vocab_size": 151936, "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}
    spec = from_hf_config(qwen_moe, "qwen1.5-moe-a2.7b")
    assert spec.moe_intermediate_size == 1408 and spec.shared_expert_intermediate_size == 5632
    assert spec.num_params == pytest.approx(14.3e9, rel=0.02)          # Qwen1.5-MoE-A2.7B: 14.3B total
    # "A2.7B" counts both embedding matrices; num_active_params leaves out the input lookup.
    assert spec.num_active_params + spec.vocab_size * spec.hidden_size == pytest.approx(2.7e9, rel=0.02)


def test_head_dim_key_and_dtype_mapping() -> None:
    qwen3 = {"model_type": "qwen3", "num_hidden_layers": 64, "hidden_size": 5120, "num_attention_heads": 64,
             "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 25600, "vocab_size": 151936,
             "max_position_embeddings": 40960, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    assert from_hf_config(qwen3, "qwen3-32b") == replace(CATALOG["qwen3-32b"], hf_id="")
    for hf_dtype, ours in (("bfloat16", "bf16"), ("float16", "fp16"), ("float32", "fp32")):
        assert from_hf_config({**qwen3, "torch_dtype": hf_dtype}, "x").torch_dtype == ours


# ----- errors -----------------------------------------------------------------------------
def test_missing_key_names_file_and_key(tmp_path: Path) -> None:
    config = {k: v for k, v in LLAMA_STYLE_CONFIG.items() if k != "num_hidden_layers"}
    path = write_config(tmp_path, config)
    with pytest.raises(ValueError, match="num_hidden_layers") as info:
        get_model(str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("key, value", [("hidden_size", "4096"), ("num_attention_heads", 0),
                                        ("vocab_size", 12.5), ("torch_dtype", "float8"),
                                        ("tie_word_embeddings", "yes")])
def test_bad_value_names_key(tmp_path: Path, key: str, value: object) -> None:
    path = write_config(tmp_path, {**LLAMA_STYLE_CONFIG, key: value})
    with pytest.raises(ValueError, match=key):
        get_model(str(path))


def test_malformed_json_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON file") as info:
        get_model(str(bad))
    assert str(bad) in str(info.value)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        get_model(str(tmp_path / "list.json"))
    with pytest.raises(ValueError, match="no such file"):
        get_model(str(tmp_path / "absent" / "config.json"))
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(ValueError, match="no such file"):
        get_model(str(tmp_path / "empty-folder"))  # a folder without config.json


def test_mla_models_are_refused() -> None:
    with pytest.raises(ValueError, match="latent attention"):
        from_hf_config({"model_type": "deepseek_v3", "hidden_size": 7168}, "deepseek-v3")
