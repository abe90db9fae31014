"""Built-in model catalogue, and reading architectures from Hugging Face ``config.json`` files.

Every :data:`CATALOG` entry copies the public ``config.json`` of the repo named in its ``hf_id``
(num_hidden_layers, hidden_size, num_attention_heads, num_key_value_heads, head_dim,
intermediate_size, vocab_size, max_position_embeddings, tie_word_embeddings, experts,
torch_dtype).  Canonical names are short and lower case; :func:`get_model` resolves them
case-insensitively, with or without the org prefix and the ``-Instruct``/``-chat``/``-hf``/``-it``
suffixes, and also reads a ``config.json`` path.

Not modelled (KV bytes are therefore upper bounds, as in vLLM 0.5, which allocates full-length
KV for every layer): sliding-window layers (Gemma-2, Mistral-7B v0.1), Phi-3-small's block-sparse
layers.  Biases, norms and gpt2's position embeddings are left out of parameter counts (< 0.5%).
"""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from .models import ModelSpec

_L3: dict[str, Any] = dict(num_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                           head_dim=128, intermediate_size=14336, vocab_size=128256)
_L3_70: dict[str, Any] = dict(num_layers=80, hidden_size=8192, num_attention_heads=64, num_key_value_heads=8,
                              head_dim=128, intermediate_size=28672, vocab_size=128256)

LLAMA_3_8B = ModelSpec("llama-3-8b", **_L3, max_position_embeddings=8192, hf_id="meta-llama/Meta-Llama-3-8B")
LLAMA_3_70B = ModelSpec("llama-3-70b", **_L3_70, max_position_embeddings=8192,
                        hf_id="meta-llama/Meta-Llama-3-70B")
LLAMA_31_8B = ModelSpec("llama-3.1-8b", **_L3, max_position_embeddings=131072, hf_id="meta-llama/Llama-3.1-8B")
LLAMA_31_70B = ModelSpec("llama-3.1-70b", **_L3_70, max_position_embeddings=131072,
                         hf_id="meta-llama/Llama-3.1-70B")
LLAMA_31_405B = ModelSpec("llama-3.1-405b", num_layers=126, hidden_size=16384, num_attention_heads=128,
                          num_key_value_heads=8, head_dim=128, intermediate_size=53248, vocab_size=128256,
                          max_position_embeddings=131072, hf_id="meta-llama/Llama-3.1-405B")

# Llama 2 checkpoints are stored in float16.
LLAMA_2_7B = ModelSpec("llama-2-7b", num_layers=32, hidden_size=4096, num_attention_heads=32,
                       num_key_value_heads=32, head_dim=128, intermediate_size=11008, vocab_size=32000,
                       max_position_embeddings=4096, torch_dtype="fp16", hf_id="meta-llama/Llama-2-7b-hf")
LLAMA_2_13B = ModelSpec("llama-2-13b", num_layers=40, hidden_size=5120, num_attention_heads=40,
                        num_key_value_heads=40, head_dim=128, intermediate_size=13824, vocab_size=32000,
                        max_position_embeddings=4096, torch_dtype="fp16", hf_id="meta-llama/Llama-2-13b-hf")
LLAMA_2_70B = ModelSpec("llama-2-70b", num_layers=80, hidden_size=8192, num_attention_heads=64,
                        num_key_value_heads=8, head_dim=128, intermediate_size=28672, vocab_size=32000,
                        max_position_embeddings=4096, torch_dtype="fp16", hf_id="meta-llama/Llama-2-70b-hf")

# Mistral 7B v0.3 extends the v0.2 vocabulary from 32000 to 32768 tokens.
MISTRAL_7B_V03 = ModelSpec("mistral-7b-v0.3", **{**_L3, "vocab_size": 32768}, max_position_embeddings=32768,
                           hf_id="mistralai/Mistral-7B-v0.3")
MISTRAL_7B_V02 = replace(MISTRAL_7B_V03, name="mistral-7b-v0.2", vocab_size=32000,
                         hf_id="mistralai/Mistral-7B-Instruct-v0.2")
# Mistral-Nemo's config.json states max_position_embeddings 1024000 (the model card says 128k).
MISTRAL_NEMO_12B = ModelSpec("mistral-nemo-12b", num_layers=40, hidden_size=5120, num_attention_heads=32,
                             num_key_value_heads=8, head_dim=128, intermediate_size=14336, vocab_size=131072,
                             max_position_embeddings=1024000, hf_id="mistralai/Mistral-Nemo-Instruct-2407")
MISTRAL_LARGE_2407 = ModelSpec("mistral-large-2407", num_layers=88, hidden_size=12288, num_attention_heads=96,
                               num_key_value_heads=8, head_dim=128, intermediate_size=28672, vocab_size=32768,
                               max_position_embeddings=131072, hf_id="mistralai/Mistral-Large-Instruct-2407")
MIXTRAL_8X7B = ModelSpec("mixtral-8x7b", **{**_L3, "vocab_size": 32000}, max_position_embeddings=32768,
                         num_experts=8, num_experts_per_tok=2, hf_id="mistralai/Mixtral-8x7B-v0.1")
# The Instruct release (the one ML.ENERGY served) has vocab 32768; the base v0.1 has 32000.
MIXTRAL_8X22B = ModelSpec("mixtral-8x22b", num_layers=56, hidden_size=6144, num_attention_heads=48,
                          num_key_value_heads=8, head_dim=128, intermediate_size=16384, vocab_size=32768,
                          max_position_embeddings=65536, num_experts=8, num_experts_per_tok=2,
                          hf_id="mistralai/Mixtral-8x22B-Instruct-v0.1")

# Qwen base configs state 131072 positions; the -Instruct configs state 32768 (YaRN for more).
QWEN15_14B = ModelSpec("qwen1.5-14b", num_layers=40, hidden_size=5120, num_attention_heads=40,
                       num_key_value_heads=40, head_dim=128, intermediate_size=13696, vocab_size=152064,
                       max_position_embeddings=32768, hf_id="Qwen/Qwen1.5-14B")
QWEN25_7B = ModelSpec("qwen2.5-7b", num_layers=28, hidden_size=3584, num_attention_heads=28,
                      num_key_value_heads=4, head_dim=128, intermediate_size=18944, vocab_size=152064,
                      max_position_embeddings=131072, hf_id="Qwen/Qwen2.5-7B")
QWEN25_32B = ModelSpec("qwen2.5-32b", num_layers=64, hidden_size=5120, num_attention_heads=40,
                       num_key_value_heads=8, head_dim=128, intermediate_size=27648, vocab_size=152064,
                       max_position_embeddings=131072, hf_id="Qwen/Qwen2.5-32B")
QWEN25_72B = ModelSpec("qwen2.5-72b", num_layers=80, hidden_size=8192, num_attention_heads=64,
                       num_key_value_heads=8, head_dim=128, intermediate_size=29568, vocab_size=152064,
                       max_position_embeddings=131072, hf_id="Qwen/Qwen2.5-72B")
QWEN3_8B = ModelSpec("qwen3-8b", num_layers=36, hidden_size=4096, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, intermediate_size=12288, vocab_size=151936,
                     max_position_embeddings=40960, hf_id="Qwen/Qwen3-8B")
# Qwen3-32B: 64 query heads x 128 = 8192 > hidden 5120 (head_dim is explicit in the config).
QWEN3_32B = ModelSpec("qwen3-32b", num_layers=64, hidden_size=5120, num_attention_heads=64,
                      num_key_value_heads=8, head_dim=128, intermediate_size=25600, vocab_size=151936,
                      max_position_embeddings=40960, hf_id="Qwen/Qwen3-32B")

DEEPSEEK_LLM_7B = ModelSpec("deepseek-llm-7b", num_layers=30, hidden_size=4096, num_attention_heads=32,
                            num_key_value_heads=32, head_dim=128, intermediate_size=11008, vocab_size=102400,
                            max_position_embeddings=4096, hf_id="deepseek-ai/deepseek-llm-7b-chat")

# gpt2-xl: n_layer 48, n_embd 1600, n_head 25 (MHA, head_dim 64), n_inner null -> 4 * 1600,
# plain GELU MLP, n_positions 1024, tied LM head; no torch_dtype key, weights are float32.
GPT2_XL = ModelSpec("gpt2-xl", num_layers=48, hidden_size=1600, num_attention_heads=25, num_key_value_heads=25,
                    head_dim=64, intermediate_size=6400, vocab_size=50257, max_position_embeddings=1024,
                    tie_word_embeddings=True, mlp_gated=False, torch_dtype="fp32",
                    hf_id="openai-community/gpt2-xl")
# Falcon-40B: new_decoder_architecture with num_kv_heads (n_head_kv) 8, i.e. 8 KV groups of 16
# query heads each (GQA, not single-head MQA); head_dim 8192/128 = 64; plain GELU MLP 4 * hidden.
# The config has no tie_word_embeddings key, so the transformers default (tied) applies; vLLM
# ties too.  No max_position_embeddings key either: FalconConfig's default 2048 is the context.
FALCON_40B = ModelSpec("falcon-40b", num_layers=60, hidden_size=8192, num_attention_heads=128,
                       num_key_value_heads=8, head_dim=64, intermediate_size=32768, vocab_size=65024,
                       max_position_embeddings=2048, tie_word_embeddings=True, mlp_gated=False,
                       hf_id="tiiuae/falcon-40b")

# Gemma-2: explicit head_dim, tied embeddings, vocab 256000, 8192 positions.  The 2B and 9B
# checkpoints are float32 (served in 16 bits: ModelSpec.serving_dtype); the 27B is bfloat16.
_GEMMA2: dict[str, Any] = dict(vocab_size=256000, max_position_embeddings=8192, tie_word_embeddings=True)
GEMMA_2_2B = ModelSpec("gemma-2-2b", num_layers=26, hidden_size=2304, num_attention_heads=8, num_key_value_heads=4,
                       head_dim=256, intermediate_size=9216, **_GEMMA2, torch_dtype="fp32",
                       hf_id="google/gemma-2-2b")
GEMMA_2_9B = ModelSpec("gemma-2-9b", num_layers=42, hidden_size=3584, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=256, intermediate_size=14336, **_GEMMA2, torch_dtype="fp32",
                       hf_id="google/gemma-2-9b")
GEMMA_2_27B = ModelSpec("gemma-2-27b", num_layers=46, hidden_size=4608, num_attention_heads=32,
                        num_key_value_heads=16, head_dim=128, intermediate_size=36864, **_GEMMA2,
                        hf_id="google/gemma-2-27b")

# Phi-3: head_dim = hidden / heads (96 mini, 128 medium); vocab 32064; untied.  Phi-3-small
# (model_type phi3small) uses ff_intermediate_size and a tied 100352-token vocabulary.
PHI_3_MINI_4K = ModelSpec("phi-3-mini-4k", num_layers=32, hidden_size=3072, num_attention_heads=32,
                          num_key_value_heads=32, head_dim=96, intermediate_size=8192, vocab_size=32064,
                          max_position_embeddings=4096, hf_id="microsoft/Phi-3-mini-4k-instruct")
PHI_3_SMALL_8K = ModelSpec("phi-3-small-8k", num_layers=32, hidden_size=4096, num_attention_heads=32,
                           num_key_value_heads=8, head_dim=128, intermediate_size=14336, vocab_size=100352,
                           max_position_embeddings=8192, tie_word_embeddings=True,
                           hf_id="microsoft/Phi-3-small-8k-instruct")
PHI_3_MEDIUM_4K = ModelSpec("phi-3-medium-4k", num_layers=40, hidden_size=5120, num_attention_heads=40,
                            num_key_value_heads=10, head_dim=128, intermediate_size=17920, vocab_size=32064,
                            max_position_embeddings=4096, hf_id="microsoft/Phi-3-medium-4k-instruct")

# Models of the KV-capacity start-up records (../shared/data/kv_capacity), from their public
# config.json files.  CodeLlama-7b: the Llama-2-7B shape with a 32016-token vocabulary and 16k context.
CODELLAMA_7B = ModelSpec("codellama-7b", num_layers=32, hidden_size=4096, num_attention_heads=32,
                         num_key_value_heads=32, head_dim=128, intermediate_size=11008, vocab_size=32016,
                         max_position_embeddings=16384, hf_id="codellama/CodeLlama-7b-hf")
# Gemma-7B: 16 heads x 256 = 4096 > hidden 3072, MHA, GeGLU MLP, tied 256000-token vocabulary.
GEMMA_7B = ModelSpec("gemma-7b", num_layers=28, hidden_size=3072, num_attention_heads=16, num_key_value_heads=16,
                     head_dim=256, intermediate_size=24576, vocab_size=256000, max_position_embeddings=8192,
                     tie_word_embeddings=True, hf_id="google/gemma-7b")
# Granite 3.1: GQA, tied 49155-token vocabulary, 128k context.
GRANITE_31_2B = ModelSpec("granite-3.1-2b", num_layers=40, hidden_size=2048, num_attention_heads=32,
                          num_key_value_heads=8, head_dim=64, intermediate_size=8192, vocab_size=49155,
                          max_position_embeddings=131072, tie_word_embeddings=True,
                          hf_id="ibm-granite/granite-3.1-2b-instruct")
GRANITE_31_8B = ModelSpec("granite-3.1-8b", num_layers=40, hidden_size=4096, num_attention_heads=32,
                          num_key_value_heads=8, head_dim=128, intermediate_size=12800, vocab_size=49155,
                          max_position_embeddings=131072, tie_word_embeddings=True,
                          hf_id="ibm-granite/granite-3.1-8b-instruct")
# Phi-2: plain GELU MLP (fc1/fc2), head_dim 2560/32 = 80, untied LM head, float16 checkpoint.
PHI_2 = ModelSpec("phi-2", num_layers=32, hidden_size=2560, num_attention_heads=32, num_key_value_heads=32,
                  head_dim=80, intermediate_size=10240, vocab_size=51200, max_position_embeddings=2048,
                  mlp_gated=False, torch_dtype="fp16", hf_id="microsoft/phi-2")
# Phi-4 (model_type phi3): GQA 40/10, 100352-token vocabulary, 16k context.
PHI_4 = ModelSpec("phi-4", num_layers=40, hidden_size=5120, num_attention_heads=40, num_key_value_heads=10,
                  head_dim=128, intermediate_size=17920, vocab_size=100352, max_position_embeddings=16384,
                  hf_id="microsoft/phi-4")
QWEN3_06B = ModelSpec("qwen3-0.6b", num_layers=28, hidden_size=1024, num_attention_heads=16, num_key_value_heads=8,
                      head_dim=128, intermediate_size=3072, vocab_size=151936, max_position_embeddings=40960,
                      tie_word_embeddings=True, hf_id="Qwen/Qwen3-0.6B")
QWEN3_14B = ModelSpec("qwen3-14b", num_layers=40, hidden_size=5120, num_attention_heads=40, num_key_value_heads=8,
                      head_dim=128, intermediate_size=17408, vocab_size=151936, max_position_embeddings=40960,
                      hf_id="Qwen/Qwen3-14B")
# Qwen3-30B-A3B: 128 experts of width 768, 8 active, no shared expert.
QWEN3_30B_A3B = ModelSpec("qwen3-30b-a3b", num_layers=48, hidden_size=2048, num_attention_heads=32,
                          num_key_value_heads=4, head_dim=128, intermediate_size=6144, vocab_size=151936,
                          max_position_embeddings=40960, num_experts=128, num_experts_per_tok=8,
                          moe_intermediate_size=768, hf_id="Qwen/Qwen3-30B-A3B")
# Qwen1.5-MoE-A2.7B: 60 experts of width 1408, 4 active, plus a shared expert of width 5632.
QWEN15_MOE_A27B = ModelSpec("qwen1.5-moe-a2.7b", num_layers=24, hidden_size=2048, num_attention_heads=16,
                            num_key_value_heads=16, head_dim=128, intermediate_size=5632, vocab_size=151936,
                            max_position_embeddings=8192, num_experts=60, num_experts_per_tok=4,
                            moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
                            hf_id="Qwen/Qwen1.5-MoE-A2.7B")

CATALOG: dict[str, ModelSpec] = {m.name: m for m in (
    LLAMA_3_8B, LLAMA_3_70B, LLAMA_31_8B, LLAMA_31_70B, LLAMA_31_405B, LLAMA_2_7B, LLAMA_2_13B, LLAMA_2_70B,
    MISTRAL_7B_V03, MISTRAL_7B_V02, MISTRAL_NEMO_12B, MISTRAL_LARGE_2407, MIXTRAL_8X7B, MIXTRAL_8X22B,
    QWEN15_14B, QWEN25_7B, QWEN25_32B, QWEN25_72B, QWEN3_8B, QWEN3_32B, DEEPSEEK_LLM_7B, GPT2_XL, FALCON_40B,
    GEMMA_2_2B, GEMMA_2_9B, GEMMA_2_27B, PHI_3_MINI_4K, PHI_3_SMALL_8K, PHI_3_MEDIUM_4K,
    CODELLAMA_7B, GEMMA_7B, GRANITE_31_2B, GRANITE_31_8B, PHI_2, PHI_4, QWEN3_06B, QWEN3_14B, QWEN3_30B_A3B,
    QWEN15_MOE_A27B,
)}

# Spellings that normalisation alone does not reach (keys already normalised).
ALIASES: dict[str, str] = {
    "mistral-7b": "mistral-7b-v0.3",
    "mistral-nemo": "mistral-nemo-12b", "mistral-nemo-2407": "mistral-nemo-12b",
    "mistral-large": "mistral-large-2407", "mistral-large-123b": "mistral-large-2407",
    "mixtral-8x7b-v0.1": "mixtral-8x7b", "mixtral-8x22b-v0.1": "mixtral-8x22b",
    "phi-3-mini": "phi-3-mini-4k", "phi-3-small": "phi-3-small-8k", "phi-3-medium": "phi-3-medium-4k",
    "deepseek-7b": "deepseek-llm-7b",
}

_SUFFIX_SEGMENTS = ("instruct", "chat", "hf", "it", "base")


def _normalize(name: str) -> str:
    """Lower case, org prefix and ``meta-`` dropped, ``instruct/chat/hf/it/base`` segments dropped."""
    key = name.strip().lower().rstrip("/").rsplit("/", 1)[-1]
    key = re.sub(r"[\s_]+", "-", key)
    key = re.sub(r"^meta-", "", key)
    return "-".join(seg for seg in key.split("-") if seg and seg not in _SUFFIX_SEGMENTS)


def _build_index() -> dict[str, str]:
    """Normalised name -> canonical name, from canonical names, hf_ids and :data:`ALIASES`."""
    index: dict[str, str] = {}
    pairs = [(n, n) for n in CATALOG] + [(m.hf_id, n) for n, m in CATALOG.items()] + list(ALIASES.items())
    for alias, canonical in pairs:
        key = _normalize(alias)
        if index.setdefault(key, canonical) != canonical:
            raise AssertionError(f"alias {alias!r} maps to both {index[key]} and {canonical}")
    return index


_INDEX = _build_index()


def list_models() -> list[str]:
    """Canonical model names, sorted."""
    return sorted(CATALOG)


def get_model(name_or_path: str) -> ModelSpec:
    """A catalogue model by name or alias, or the architecture in a ``config.json``.

    ``name_or_path`` is tried as a path first (a ``config.json`` file or a folder holding one);
    otherwise as a name, case-insensitively, with or without org prefix and instruct/chat/hf
    suffixes.  Raises ``ValueError`` listing the valid names for an unknown name, and naming the
    file and key for an unreadable or malformed config.
    """
    path = Path(name_or_path).expanduser()
    if path.exists() or name_or_path.endswith(".json"):
        return _load_config(path)
    canonical = _INDEX.get(_normalize(name_or_path))
    if canonical is None:
        raise ValueError(f"unknown model {name_or_path!r}; valid names: {list_models()}, "
                         f"or a path to a Hugging Face config.json")
    return CATALOG[canonical]


def _load_config(path: Path) -> ModelSpec:
    file = path / "config.json" if path.is_dir() else path
    try:
        config = json.loads(file.read_text())
    except FileNotFoundError:
        raise ValueError(f"{file}: no such file (expected a Hugging Face config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: not a readable JSON file: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(config).__name__}")
    name = str(config.get("_name_or_path") or file.resolve().parent.name)
    try:
        return from_hf_config(config, name)
    except ValueError as exc:
        raise ValueError(f"{file}: {exc}") from None


# ----- config.json parsing ------------------------------------------------------------------
# Architectures with a plain (up, down) MLP rather than a gated one (gate, up, down).
_PLAIN_MLP_TYPES = frozenset({"gpt2", "falcon", "RefinedWeb", "RefinedWebModel", "gpt_neox", "gptj",
                              "opt", "bloom", "gpt_bigcode", "phi", "starcoder2"})
# Architectures whose config class defaults tie_word_embeddings to True when the key is absent
# (transformers' PretrainedConfig default, kept by these subclasses); the rest default to False.
_TIED_BY_DEFAULT = frozenset({"gpt2", "falcon", "RefinedWeb", "RefinedWebModel", "gemma", "gemma2",
                              "gpt_bigcode", "bloom", "opt"})
_FALCON_TYPES = frozenset({"falcon", "RefinedWeb", "RefinedWebModel"})
_MLA_TYPES = frozenset({"deepseek_v2", "deepseek_v3", "kimi_k2"})
_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "half": "fp16", "float": "fp32"}


def _int(config: dict[str, Any], keys: tuple[str, ...], default: int | None = None) -> int:
    """The first of ``keys`` present with a non-null value, checked to be a positive integer."""
    for key in keys:
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"key {key!r} must be a positive integer, got {value!r}")
        return value
    if default is None:
        raise ValueError(f"missing key {keys[0]!r}" + (f" (or {', '.join(keys[1:])})" if keys[1:] else ""))
    return default


def _kv_heads(config: dict[str, Any], model_type: str, heads: int) -> int:
    """KV heads: explicit GQA keys, Falcon's MQA / new-decoder conventions, else MHA."""
    if model_type in _FALCON_TYPES:
        # "RefinedWeb" (the original falcon-40b config) is the new decoder architecture.
        if config.get("new_decoder_architecture", model_type == "RefinedWeb"):
            return _int(config, ("num_kv_heads", "n_head_kv"), default=heads)
        # FalconConfig defaults multi_query to True (falcon-7b: one KV head).
        return 1 if config.get("multi_query", True) else heads
    return _int(config, ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num"),
                default=heads)


def from_hf_config(config: dict[str, Any], name: str) -> ModelSpec:
    """A :class:`ModelSpec` from a parsed Hugging Face ``config.json``.

    Reads the llama/mistral/qwen2/qwen3/gemma2/phi3/mixtral/qwen-moe key names, gpt2's
    ``n_layer/n_embd/n_head/n_inner/n_positions`` and Falcon's ``num_kv_heads``/``multi_query``/
    ``new_decoder_architecture``; multimodal configs are read from their ``text_config``.
    Raises ``ValueError`` naming a missing or invalid key.  MLA models (DeepSeek-V2/V3) are
    refused: their KV cache is a compressed latent that :class:`ModelSpec` cannot express.
    """
    if isinstance(config.get("text_config"), dict) and "num_hidden_layers" not in config:
        config = {**config, **config["text_config"]}
    model_type = str(config.get("model_type", ""))
    if model_type in _MLA_TYPES:
        raise ValueError(f"model_type {model_type!r} uses multi-head latent attention, not supported")
    hidden = _int(config, ("hidden_size", "n_embd", "d_model"))
    heads = _int(config, ("num_attention_heads", "n_head", "num_heads"))
    head_dim = config.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ValueError(f"no 'head_dim' key and hidden_size {hidden} is not a multiple of heads {heads}")
        head_dim = hidden // heads
    head_dim = _int({"head_dim": head_dim}, ("head_dim",))
    plain_mlp = model_type in _PLAIN_MLP_TYPES
    intermediate = _int(config, ("intermediate_size", "n_inner", "ffn_hidden_size", "ff_intermediate_size"),
                        default=4 * hidden if plain_mlp else None)
    expert_keys = ("num_local_experts", "num_experts", "n_routed_experts")  # Mixtral, Qwen-MoE, DeepSeek
    experts = _int(config, expert_keys) if any(config.get(k) for k in expert_keys) else 0
    dtype = config.get("torch_dtype", config.get("dtype")) or "float32"  # transformers loads fp32 by default
    if not isinstance(dtype, str) or dtype.lower() not in _DTYPES:
        raise ValueError(f"key 'torch_dtype' must be one of {sorted(_DTYPES)}, got {dtype!r}")
    tied = config.get("tie_word_embeddings", model_type in _TIED_BY_DEFAULT)
    if not isinstance(tied, bool):
        raise ValueError(f"key 'tie_word_embeddings' must be true or false, got {tied!r}")
    return ModelSpec(
        name=name,
        num_layers=_int(config, ("num_hidden_layers", "n_layer", "num_layers")),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=_kv_heads(config, model_type, heads),
        head_dim=head_dim,
        intermediate_size=intermediate,
        vocab_size=_int(config, ("vocab_size", "padded_vocab_size")),
        # FalconConfig's default context is 2048 when the key is absent.
        max_position_embeddings=_int(config, ("max_position_embeddings", "n_positions", "seq_length", "n_ctx"),
                                     default=2048 if model_type in _FALCON_TYPES else None),
        tie_word_embeddings=tied,
        mlp_gated=not plain_mlp,
        num_experts=experts,
        num_experts_per_tok=_int(config, ("num_experts_per_tok", "moe_top_k"), default=1) if experts else 0,
        moe_intermediate_size=_int(config, ("moe_intermediate_size",), default=0) if experts else 0,
        shared_expert_intermediate_size=_int(config, ("shared_expert_intermediate_size",), default=0)
        if experts else 0,
        torch_dtype=_DTYPES[dtype.lower()],
        hf_id=str(config.get("_name_or_path", "")),
    )


__all__ = ["ALIASES", "CATALOG", "from_hf_config", "get_model", "list_models"]
