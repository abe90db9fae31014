"""EngineArgs is the one declaration of the engine knobs: the flags, the scenario schema and the
engine configuration all come from it, and build what ``make_engine_config`` built before it
(``tests/legacy_engine_config.py``, the function as of commit 754c1ad)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from legacy_engine_config import legacy_make_engine_config

from servesim import argtypes as at
from servesim.cli import build_parser
from servesim.scenarios.loader import ScenarioError, scenario_from_dict
from servesim.scenarios.points import engine_config as scenario_engine_config
from servesim.scenarios.schema import Deployment, EngineKnobs
from servesim.sim.arg_spec import spec_of
from servesim.sim.config import create_engine_config, make_engine_config
from servesim.sim.engine_args import VLLM_DEFAULTS, EngineArgs, EngineVersion
from servesim.sim.gpus import get_gpu
from servesim.sim.model_catalog import get_model
from servesim.sim.profile import load_profile, shipped_profiles

REPO = Path(__file__).resolve().parents[1]
FIELDS = {f.name: f for f in dataclasses.fields(EngineArgs)}


def _subparser(command: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[command]


def _options(command: str) -> dict[str, object]:
    return {a.dest: a for a in _subparser(command)._actions}


# ------------------------------------------------------------------------------ flag generation


@pytest.mark.parametrize("command", ["simulate", "serve"])
def test_every_engine_arg_has_a_flag(command):
    options = _options(command)
    for name, f in FIELDS.items():
        assert name in options, f"EngineArgs.{name} has no flag on servesim {command}"
        assert tuple(options[name].option_strings[:len(spec_of(f).flags)]) == spec_of(f).flags
        assert options[name].default == f.default


def test_flags_keep_their_names():
    """The flags of the README and of older scripts: every one still parses to the same knob."""
    old = ["--model", "--gpu", "--tp", "--tensor-parallel-size", "--engine", "--profile", "--dtype",
           "--max-num-seqs", "--max-num-batched-tokens", "--block-size", "--gpu-memory-utilization",
           "--max-model-len", "--enable-chunked-prefill", "--no-enable-chunked-prefill", "--enable-prefix-caching",
           "--no-enable-prefix-caching", "--kv-cache-dtype", "--num-gpu-blocks", "--preemption-mode",
           "--swap-space", "--num-scheduler-steps"]
    strings = {s for a in _subparser("simulate")._actions for s in a.option_strings}
    assert set(old) <= strings
    validate = {s for a in _subparser("validate")._actions for s in a.option_strings}
    assert {"-p", "--profile", "--model", "--gpu", "--engine", "--tp", "--max-num-seqs", "--max-num-batched-tokens",
            "--max-model-len", "--gpu-memory-utilization", "--num-gpu-blocks", "--num-scheduler-steps"} <= validate
    calibrate = _options("calibrate")
    assert calibrate["engine"].default == "vllm-v0" and calibrate["num_scheduler_steps"].default == 1


def test_help_shows_units_defaults_and_vllm_names():
    text = _subparser("simulate").format_help()
    flat = " ".join(text.split())
    assert "[tokens]" in flat and "[GiB]" in flat and "[sequences]" in flat and "[fraction]" in flat
    assert "vllm-v1 1024 on GPUs with >= 70 GiB, else 256; vllm-v0 256" in flat
    assert "vllm-v1 on (always); vllm-v0 off" in flat
    assert "(default 0.9)" in flat
    assert "(vLLM--num-gpu-blocks-override)" in "".join(text.split())  # argparse wraps at hyphens


def test_every_field_is_documented():
    for name, f in FIELDS.items():
        spec = spec_of(f)
        assert spec.help and spec.flags and spec.section in ("deployment", "knobs"), name
        if f.default is None and name != "weight_dtype" and name != "profile":
            assert spec.defaults or spec.omitted, f"{name}: None means what?"
    for name in VLLM_DEFAULTS:  # every rule has its text, for both engines
        assert {e for e, _ in spec_of(FIELDS[name]).defaults} == {"vllm-v1", "vllm-v0"}, name


# ----------------------------------------------------------------------- defaults per engine


@pytest.mark.parametrize(("engine", "gpu", "expected"), [
    ("vllm-v1", "h100-sxm", dict(max_num_seqs=1024, max_num_batched_tokens=8192, enable_chunked_prefill=True,
                                 enable_prefix_caching=True, num_scheduler_steps=1, max_model_len=131072)),
    ("vllm-v1", "a100-40gb", dict(max_num_seqs=256, max_num_batched_tokens=2048)),
    ("vllm-v0", "h100-sxm", dict(max_num_seqs=256, max_num_batched_tokens=131072, enable_chunked_prefill=False,
                                 enable_prefix_caching=False, num_scheduler_steps=1)),
    ("vllm-v0", "a100-40gb", dict(max_num_seqs=256, max_num_batched_tokens=131072)),
])
def test_vllm_defaults_per_engine(engine, gpu, expected):
    r = EngineArgs(engine=engine, gpu=gpu).resolved(gpu_memory_bytes=get_gpu(gpu).memory_bytes,
                                                    max_position_embeddings=131072)
    assert {k: getattr(r, k) for k in expected} == expected


def test_v0_defaults_follow_chunking_length_and_profile():
    short = EngineArgs(engine="vllm-v0", max_model_len=1024)
    assert short.resolved(gpu_memory_bytes=80e9, max_position_embeddings=4096).max_num_batched_tokens == 2048
    chunked = EngineArgs(engine="vllm-v0", enable_chunked_prefill=True)
    assert chunked.resolved(gpu_memory_bytes=80e9, max_position_embeddings=4096).max_num_batched_tokens == 512
    cfg = create_engine_config(EngineArgs(engine="vllm-v0", profile="h100-sxm_vllm-v0.6_lambda-sep2024"))
    assert cfg.scheduler.num_scheduler_steps == 10  # the fitted deployment ran vLLM 0.6 multi-step


@pytest.mark.parametrize(("changes", "message"), [
    (dict(max_num_seqs=0), r"max_num_seqs must be >= 1 \(or omitted for vLLM's default\), got 0"),
    (dict(block_size=7), r"block_size must be one of \[1, 8, 16, 32, 64, 128\], got 7"),
    (dict(gpu_memory_utilization=1.5), r"gpu_memory_utilization must be in \(0, 1\], got 1.5"),
    (dict(engine="vllm-v2"), r"engine must be one of \['vllm-v1', 'vllm-v0'\]"),
    (dict(weight_dtype="int3"), r"unknown dtype 'int3'"),
    (dict(num_scheduler_steps=0), r"num_scheduler_steps must be an integer in \[1, 64\]"),
    (dict(tensor_parallel_size=True), r"tensor_parallel_size must be an integer"),
])
def test_bad_values_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        EngineArgs(**changes)


@pytest.mark.parametrize(("changes", "message"), [
    (dict(enable_chunked_prefill=False), "vllm-v1 always uses chunked prefill"),
    (dict(preemption_mode="swap"), "vllm-v1 preempts by recompute only"),
    (dict(num_scheduler_steps=4), "multi-step scheduling is a vllm-v0"),
    (dict(engine="vllm-v0", long_prefill_token_threshold=64), "a vllm-v1 option"),
])
def test_engine_refusals(changes, message):
    with pytest.raises(ValueError, match=message):
        create_engine_config(EngineArgs(**changes))


# ----------------------------------------------- round trip: flags -> EngineArgs -> EngineConfig


ROUND_TRIP = [
    ("", {}),
    ("--engine vllm-v0", dict(engine="vllm-v0")),
    ("--engine vllm-v0 --enable-chunked-prefill --max-num-seqs 64",
     dict(engine="vllm-v0", enable_chunked_prefill=True, max_num_seqs=64)),
    ("--engine vllm-v0 --preemption-mode swap --swap-space 8 --num-scheduler-steps 4 --max-model-len 4096",
     dict(engine="vllm-v0", preemption_mode="swap", swap_space_gib=8.0, num_scheduler_steps=4, max_model_len=4096)),
    ("--model llama-3.1-70b --tp 4 --dtype fp8 --kv-cache-dtype fp8 --gpu h200",
     dict(model="llama-3.1-70b", gpu="h200", tp=4, weight_dtype="fp8", kv_cache_dtype="fp8")),
    ("--tensor-parallel-size 2 --block-size 32 --gpu-memory-utilization 0.8 --no-enable-prefix-caching "
     "--max-num-batched-tokens 4096", dict(tp=2, block_size=32, gpu_memory_utilization=0.8,
                                           enable_prefix_caching=False, max_num_batched_tokens=4096)),
    ("--gpu a100-40gb --num-gpu-blocks 3000 --max-model-len 8192",
     dict(gpu="a100-40gb", num_gpu_blocks=3000, max_model_len=8192)),
    ("--engine vllm-v0 --gpu l40s --model mistral-7b", dict(engine="vllm-v0", gpu="l40s", model="mistral-7b")),
]


def _legacy(kw: dict) -> object:
    kw = dict(kw)
    model, gpu, engine = kw.pop("model", "llama-3.1-8b"), kw.pop("gpu", "h100-sxm"), kw.pop("engine", "vllm-v1")
    return legacy_make_engine_config(get_model(model), get_gpu(gpu), engine, **kw)


@pytest.mark.parametrize(("flags", "kw"), ROUND_TRIP)
def test_flags_build_what_make_engine_config_built(flags, kw):
    args = build_parser().parse_args(["simulate", *flags.split()])
    cfg = create_engine_config(at.engine_args_from(args))
    assert cfg == _legacy(kw)
    rest = {k: v for k, v in kw.items() if k not in ("model", "gpu", "engine")}
    wrapper = make_engine_config(get_model(kw.get("model", "llama-3.1-8b")), get_gpu(kw.get("gpu", "h100-sxm")),
                                 kw.get("engine", "vllm-v1"), **rest)
    assert wrapper == cfg


def test_profile_flag_round_trip():
    path = str(shipped_profiles()["h100-sxm_vllm-v0.6_lambda-sep2024"])
    args = build_parser().parse_args(["simulate", "--engine", "vllm-v0", "--profile", path])
    assert create_engine_config(at.engine_args_from(args)) == _legacy(dict(engine="vllm-v0",
                                                                         profile=load_profile(path)))


def test_unknown_make_engine_config_knob_is_named():
    with pytest.raises(TypeError, match="unknown engine argument 'max_num_seq'; valid: "):
        make_engine_config(get_model("llama-3.1-8b"), get_gpu("h100-sxm"), max_num_seq=3)


# ------------------------------------------------------------------------------- the scenarios


def test_scenario_sections_are_engine_args():
    deployment = {f.name for f in dataclasses.fields(Deployment)} - {"knobs", "model_overrides"}
    knobs = {f.name for f in dataclasses.fields(EngineKnobs)}
    keys = {spec_of(f).scenario or f.name for f in FIELDS.values()}
    assert deployment | knobs == keys and not deployment & knobs
    assert {f.name: f.default for f in dataclasses.fields(EngineKnobs)} == \
        {n: FIELDS[n].default for n in knobs}


def _scenario(deployment: dict) -> dict:
    return {"name": "s", "deployment": deployment, "workload": {"kind": "burst"},
            "sweep": {"axis": "burst", "points": [4]}}


@pytest.mark.parametrize(("deployment", "message"), [
    ({"model": "llama-3.1-8b", "knobs": {"max_num_seqz": 4}},
     r"deployment\.knobs: unknown field 'max_num_seqz'; allowed: \[.*'max_num_seqs'.*'num_scheduler_steps'"),
    ({"model": "llama-3.1-8b", "tensor_parallel": 2}, r"deployment: unknown field 'tensor_parallel'; allowed: \[.*'tp'"),
    ({"model": "llama-3.1-8b", "knobs": {"swap_space_gib": -1}}, r"swap_space_gib must be >= 0, got -1"),
    ({"model": "llama-3.1-8b", "weight_dtype": "int3"}, r"unknown dtype 'int3'"),
    ({"gpu": "h100-sxm"}, r"missing required field\(s\) \['model'\]"),
])
def test_scenario_engine_keys_are_checked(deployment, message):
    with pytest.raises(ScenarioError, match=message):
        scenario_from_dict(_scenario(deployment))


@pytest.mark.parametrize(("deployment", "kw"), [
    ({"model": "llama-3.1-8b"}, {}),
    ({"model": "llama-3.1-8b", "engine": "vllm-v0", "tp": 2,
      "knobs": {"max_num_seqs": 128, "enable_chunked_prefill": True, "swap_space_gib": 2.0}},
     dict(engine="vllm-v0", tp=2, max_num_seqs=128, enable_chunked_prefill=True, swap_space_gib=2.0)),
    ({"model": "llama-3.1-70b", "gpu": "h200", "tp": 4, "weight_dtype": "fp8", "kv_cache_dtype": "fp8",
      "knobs": {"num_gpu_blocks": 9000, "max_model_len": 8192, "block_size": 32}},
     dict(model="llama-3.1-70b", gpu="h200", tp=4, weight_dtype="fp8", kv_cache_dtype="fp8", num_gpu_blocks=9000,
          max_model_len=8192, block_size=32)),
])
def test_scenario_builds_what_make_engine_config_built(deployment, kw):
    sc = scenario_from_dict(_scenario(deployment)).variants[0]
    assert scenario_engine_config(sc.deployment) == _legacy(kw)


def test_scenario_takes_new_knobs():
    sc = scenario_from_dict(_scenario({"model": "llama-3.1-8b", "engine": "vllm-v0",
                                       "knobs": {"num_scheduler_steps": 4}})).variants[0]
    assert scenario_engine_config(sc.deployment).scheduler.num_scheduler_steps == 4
    sc = scenario_from_dict(_scenario({"model": "llama-3.1-8b",
                                       "knobs": {"long_prefill_token_threshold": 256}})).variants[0]
    assert scenario_engine_config(sc.deployment).scheduler.long_prefill_token_threshold == 256


# ---------------------------------------------------------------- no other module restates them


# The command lines that configure a simulated replica (the plan's candidate lists, --tp 1,2,4,
# and the python -m tools of calibrate/ are other things).
REPLICA_CLIS = ("servesim/cli.py", "servesim/cluster_cli.py", "calibrate/cli.py", "measure/cli.py", "serve/cli.py")
# measure's own flags of the same spelling: the live server's model name and context length
# (http backend) and the kernel shapes to time (torch-kernels), not a replica's knobs.
MEASURE_OWN = ("--model", "--max-model-len", "--tp", "--dtype")


def test_no_cli_restates_the_engine_flags():
    """Engine flags are added only by argtypes.add_args from EngineArgs' specs, never spelled out."""
    for rel in REPLICA_CLIS:
        path = REPO / rel
        if not path.exists():
            continue
        text = path.read_text()
        for f in FIELDS.values():
            for flag in spec_of(f).flags:
                if rel == "measure/cli.py" and flag in MEASURE_OWN:
                    continue
                pattern = r"add_argument\((\s*['\"]-\w['\"],)?\s*['\"]" + re.escape(flag) + r"['\"]"
                assert not re.search(pattern, text), f"{rel} spells out {flag}; use argtypes.add_engine_args"


def test_schema_and_points_do_not_restate_the_knobs():
    schema = (REPO / "scenarios/schema.py").read_text()
    points = (REPO / "scenarios/points.py").read_text()
    builder = points[points.index("def engine_config("):points.index("# ---", points.index("def engine_config("))]
    for f in FIELDS.values():
        key = spec_of(f).scenario or f.name
        assert not re.search(rf"^\s+{key}\s*:\s*\S", schema, re.M), f"schema.py declares {key} itself"
        if f.name != "model":  # passed as the resolved ModelSpec (model_overrides applied)
            assert not re.search(rf"\b{f.name}\s*=", builder), f"points.engine_config passes {f.name} by hand"


def test_engine_version_enum_is_shared():
    from servesim.sim import config
    assert config.EngineVersion is EngineVersion


def test_resolved_scenario_round_trips():
    """The resolved scenario.json a sweep writes reads back to the same generated sections."""
    from servesim.scenarios.loader import scenario_to_dict
    data = _scenario({"model": "llama-3.1-8b", "engine": "vllm-v0", "tp": 2, "kv_cache_dtype": "fp8",
                      "knobs": {"max_num_seqs": 64, "num_scheduler_steps": 4}})
    data["cluster"] = {"groups": [{"replicas": 1, "gpu": "h200", "knobs": {"max_num_seqs": 8}}]}
    sf = scenario_from_dict(data)
    again = scenario_from_dict(scenario_to_dict(sf))
    assert again.variants == sf.variants
    assert again.variants[0].cluster.groups[0].gpu == "h200" and again.variants[0].cluster.groups[0].tp is None
