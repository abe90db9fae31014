"""Regenerate the golden back-test summaries: ``python tests/golden/make_golden.py``.

Each scenario simulates a small, fixed workload on Llama-3-8B / H100 SXM with a profile whose
coefficients are written out below, *not* the shipped profiles (those get refit as calibration
improves, which must not move these files).  ``tests/test_golden.py`` re-runs every scenario and
compares each summary key with the committed ``<name>.json`` (relative tolerance 1e-9).

Regenerate only when a change of results is intended, and say why in the commit message.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from servesim.sim.config import EngineConfig, make_engine_config
from servesim.sim.gpus import get_gpu
from servesim.sim.model_catalog import get_model
from servesim.sim.profile import MemoryCoefficients, PowerCoefficients, Profile, StepCoefficients
from servesim.sim.runner import SimOptions, simulate
from servesim.sim.workload import WorkloadSpec, build_workload

GOLDEN_DIR = Path(__file__).resolve().parent

# Fixed coefficients, close to a fitted H100 profile but frozen here on purpose.
STEP = StepCoefficients(eff_bw=0.84, eff_mm=0.79, eff_attn_prefill=0.67, eff_attn_decode=0.9,
                        ar_latency_s=5.2e-6, ar_bandwidth_bytes_per_s=207e9, layer_overhead_s=2.7e-5,
                        step_overhead_s=3e-3, per_seq_overhead_s=4e-5, per_token_overhead_s=2e-7,
                        swap_bandwidth_bytes_per_s=25e9)
# Memory terms close to the KV-capacity fit for vLLM 0.17-0.19 (docs/memory.md), frozen here.
MEMORY = MemoryCoefficients(non_torch_bytes=0.27e9, non_torch_tp_bytes=1.9e9, non_torch_per_rank_bytes=0.044e9,
                            activation_tensors_hidden=3.9, activation_tensors_intermediate=3.0,
                            sampler_bytes_per_logit=12.84, moe_workspace_in_peak=1.0, weight_overhead_bytes=0.039e9,
                            cuda_graph_bytes=0.0)
POWER = PowerCoefficients(idle_w=75.0, prefill_w=700.0, decode_w=380.0)


def profile(engine: str) -> Profile:
    return Profile(name=f"golden_{engine}", engine=engine, engine_version="golden", gpu="h100-sxm",
                   step=STEP, memory=MEMORY, power=POWER)


def config(engine: str, **kw) -> EngineConfig:
    return make_engine_config(get_model("llama-3-8b"), get_gpu("h100-sxm"), engine, profile=profile(engine), **kw)


SEED = 0

# name -> (engine config, workload spec); all run with SimOptions(seed=SEED)
SCENARIOS: dict[str, tuple[Callable[[], EngineConfig], WorkloadSpec]] = {
    # The ML.ENERGY shape: a 320-request burst on vLLM 0.5.4 defaults, fixed lengths.
    "v0_burst320_fixed": (
        lambda: config("vllm-v0", max_model_len=4096),
        WorkloadSpec(kind="burst", num_requests=320, input_len=512, output_len=256)),
    # Poisson arrivals on vLLM v1 defaults, vLLM's random dataset.
    "v1_poisson200_random": (
        lambda: config("vllm-v1", max_model_len=4096),
        WorkloadSpec(kind="poisson", num_requests=200, rate=8.0, input_len=1024, output_len=256,
                     dataset="random", range_ratio=0.5)),
    # Closed loop: 32 users with exponential think time.
    "v1_closed_loop32": (
        lambda: config("vllm-v1", max_model_len=4096),
        WorkloadSpec(kind="closed", num_requests=160, num_users=32, think_time_s=1.0, input_len=512,
                     output_len=128, dataset="random", range_ratio=0.5)),
    # KV-bound: a small cache (measured-style block count) forces recompute preemption on v1.
    "v1_kv_bound_burst": (
        lambda: config("vllm-v1", max_model_len=2048, num_gpu_blocks=600, max_num_seqs=128,
                       max_num_batched_tokens=2048),
        WorkloadSpec(kind="burst", num_requests=120, input_len=600, output_len=300, dataset="random",
                     range_ratio=0.5)),
}


def run(name: str) -> dict:
    """The summary of scenario ``name``."""
    make_cfg, spec = SCENARIOS[name]
    return simulate(make_cfg(), build_workload(spec, SEED), SimOptions(seed=SEED)).summary


def path_of(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.json"


def main(names: list[str]) -> int:
    for name in names or list(SCENARIOS):
        if name not in SCENARIOS:
            print(f"unknown scenario {name!r}; known: {sorted(SCENARIOS)}", file=sys.stderr)
            return 2
        summary = run(name)
        path = path_of(name)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        print(f"{path}: {summary['completed']} completed, {summary['num_preemptions']} preemptions, "
              f"{summary['output_throughput']:.1f} output tok/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
