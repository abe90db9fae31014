"""Kernel probes with PyTorch: time the GEMMs and attention of one architecture, write kernel tables.

``servesim measure --backend torch-kernels --model llama-3.1-8b --out DIR`` times, with random
weights, the kernels one decoder layer runs, at the shapes serving produces, and writes them in the
aiconfigurator parquet format :mod:`servesim.calibrate.kernel_tables` reads (same file names and
columns, ``latency`` in ms; the ``framework``/``version``/``device``/``kernel_source`` columns
say what was really timed):

* GEMM (``torch.nn.functional.linear``): qkv, o, gate_up, down and the LM head, each split for the
  TP sizes asked (``n`` or ``k`` divided by TP), ``m`` = tokens in the batch;
* prefill attention (``torch.nn.functional.scaled_dot_product_attention``, causal): batch x
  prompt length, query and KV heads per GPU;
* decode attention (the same, one query against a contiguous KV cache of ``step + 1`` tokens,
  GQA via ``enable_gqa``): batch x context.

It is *not* vLLM's paged FlashAttention kernel nor its CUDA-graph launch path, so efficiencies
fitted to these tables describe PyTorch's kernels on that GPU.  All-reduce needs several GPUs
and is not probed.  ``provenance.json`` records GPU, driver, CUDA, cuDNN and torch versions, date,
host and every shape grid.  On a GPU, timing uses CUDA events (median of repeats after warm-up); on
CPU (tests, ``--shapes tiny``), ``time.perf_counter``.  Requires the ``gpu-probe`` extra (torch).
"""
from __future__ import annotations

import datetime
import json
import platform
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .launcher import gpu_info

FILES = {"gemm": "gemm_vllm_0.24.0_gemm_perf.parquet",
         "context_attention": "attention_vllm_0.24.0_context_attention_perf.parquet",
         "generation_attention": "attention_vllm_0.24.0_generation_attention_perf.parquet"}
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# Shape grids: tokens per GEMM, (batch, prompt) for prefill, (batch, context) for decode.
GRIDS = {
    "tiny": {"m": [1, 4, 16], "prefill": [(1, 16), (2, 32)], "decode": [(1, 16), (4, 64)], "max_kv_bytes": 2**24},
    "quick": {"m": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
              "prefill": [(b, s) for b in (1, 4) for s in (128, 512, 1024, 2048, 4096, 8192, 16384)],
              "decode": [(b, c) for b in (1, 8, 32, 128, 512) for c in (128, 1024, 4096, 16384, 65536)],
              "max_kv_bytes": 16 * 2**30},
    "full": {"m": sorted({2**i for i in range(15)} | {3 * 2**i for i in range(13)}),
             "prefill": [(b, s) for b in (1, 2, 4, 8, 16) for s in (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384,
                                                                     32768)],
             "decode": [(b, 2**j) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) for j in range(4, 18)],
             "max_kv_bytes": 32 * 2**30},
}


@dataclass(frozen=True)
class ProbeOptions:
    model: str
    out: Path
    device: str | None = None
    shapes: str = "quick"
    tp: tuple[int, ...] = (1,)
    dtype: str = "bf16"
    warmup: int = 3
    repeats: int = 10


def _torch():
    try:
        import torch
    except ImportError:
        raise ValueError("--backend torch-kernels needs PyTorch: pip install 'servesim[gpu-probe]'") from None
    return torch


class Timer:
    """Median seconds of ``fn()`` over repeats (CUDA events on a GPU)."""

    def __init__(self, torch, device: str, warmup: int, repeats: int) -> None:
        self.torch, self.cuda, self.warmup, self.repeats = torch, device.startswith("cuda"), warmup, repeats

    def __call__(self, fn) -> float:
        for _ in range(self.warmup):
            fn()
        samples = []
        for _ in range(self.repeats):
            if self.cuda:
                start, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) * 1e-3)
            else:
                t = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t)
        return statistics.median(samples)


def linear_shapes(spec, tp: int) -> list[tuple[str, int, int]]:
    """(layer, n, k) of the linear layers of one GPU of a TP group (column-parallel split n,
    row-parallel split k), vLLM's fused qkv and gate_up."""
    q, kv, h = spec.num_attention_heads * spec.head_dim, max(1, spec.num_key_value_heads // tp) * spec.head_dim, \
        spec.hidden_size
    inter = spec.moe_intermediate_size or spec.intermediate_size
    up = (2 if spec.mlp_gated else 1) * inter
    return [("qkv", q // tp + 2 * kv, h), ("o", h, q // tp), ("gate_up", up // tp, h), ("down", h, inter // tp),
            ("lm_head", spec.vocab_size // tp, h)]


def run_probe(opts: ProbeOptions) -> int:
    torch = _torch()
    from ..sim.model_catalog import get_model  # architecture facts only (config.json numbers)
    spec = get_model(opts.model)
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, DTYPES[opts.dtype])
    grid = GRIDS[opts.shapes]
    timer = Timer(torch, device, opts.warmup, opts.repeats)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU {platform.processor() or 'unknown'}"
    common = {"framework": "PyTorch", "version": torch.__version__, "device": name}
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {k: [] for k in FILES}
    torch.manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)
    for tp in opts.tp:
        for layer, n, k in linear_shapes(spec, tp):
            w = rand(n, k)
            for m in grid["m"]:
                x = rand(m, k)
                sec = timer(lambda x=x, w=w: torch.nn.functional.linear(x, w))
                rows["gemm"].append({**common, "op_name": "gemm", "kernel_source": "torch.nn.functional.linear",
                                     "gemm_dtype": DTYPES[opts.dtype], "m": m, "n": n, "k": k, "layer": layer,
                                     "tp": tp, "latency": sec * 1e3})
        heads, kv_heads = spec.num_attention_heads // tp, max(1, spec.num_key_value_heads // tp)
        d = spec.head_dim
        attn = {**common, "kernel_source": "torch_sdpa", "num_heads": heads, "num_key_value_heads": kv_heads,
                "head_dim": d, "beam_width": 1, "attn_dtype": DTYPES[opts.dtype], "kv_cache_dtype": DTYPES[opts.dtype],
                "window_size": 0, "tp": tp}
        for b, s in grid["prefill"]:
            if b * s * (heads + 2 * kv_heads) * d * 2 > grid["max_kv_bytes"]:
                continue
            q = rand(b, heads, s, d)
            kk = rand(b, kv_heads, s, d)
            vv = rand(b, kv_heads, s, d)
            sec = timer(lambda q=q, kk=kk, vv=vv, gqa=heads != kv_heads:
                        torch.nn.functional.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa))
            rows["context_attention"].append({**attn, "op_name": "context_attention", "batch_size": b, "isl": s,
                                              "step": 0, "latency": sec * 1e3})
        for b, ctx in grid["decode"]:
            if b * ctx * 2 * kv_heads * d * 2 > grid["max_kv_bytes"]:
                continue
            q = rand(b, heads, 1, d)
            kk = rand(b, kv_heads, ctx, d)
            vv = rand(b, kv_heads, ctx, d)
            sec = timer(lambda q=q, kk=kk, vv=vv, gqa=heads != kv_heads:
                        torch.nn.functional.scaled_dot_product_attention(q, kk, vv, enable_gqa=gqa))
            rows["generation_attention"].append({**attn, "op_name": "generation_attention", "batch_size": b,
                                                 "isl": 1, "step": ctx - 1, "latency": sec * 1e3})
            q = kk = vv = None  # free the KV cache before the next shape allocates its own
    for kind, file in FILES.items():
        tmp = out / (file + ".tmp")
        pd.DataFrame(rows[kind]).to_parquet(tmp, index=False)
        tmp.replace(out / file)
    provenance = {
        "what": "servesim measure --backend torch-kernels", "argv": sys.argv, "model": spec.name,
        "architecture": {k: getattr(spec, k) for k in ("num_layers", "hidden_size", "num_attention_heads",
                                                       "num_key_value_heads", "head_dim", "intermediate_size",
                                                       "vocab_size")},
        "device": name, "gpus": gpu_info() if device.startswith("cuda") else None, "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if device.startswith("cuda") else None,
        "python": platform.python_version(), "host": socket.gethostname(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": DTYPES[opts.dtype], "tp": list(opts.tp), "shapes": opts.shapes, "grid": grid,
        "timing": {"method": "CUDA events" if device.startswith("cuda") else "perf_counter",
                   "warmup": opts.warmup, "repeats": opts.repeats, "statistic": "median"},
        "rows": {k: len(v) for k, v in rows.items()}, "files": FILES,
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    print(f"servesim measure: {sum(len(v) for v in rows.values())} kernel timings of {spec.name} on {name} "
          f"written to {out}", file=sys.stderr)
    return 0
