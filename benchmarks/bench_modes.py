"""Speed of the engine in every mode users run (issue 13), paired against the base case.

Each mode is simulated in a fresh subprocess (so its peak RSS is its own) and reports simulated
requests per CPU second (``time.process_time`` around ``simulate``, which includes building the
request source and ``sim/metrics.summarize``; building the workload is timed apart), engine
steps per request and peak RSS.  The machines are noisy, so absolute figures are not comparable
across runs; the *cost ratio* is: CPU seconds per request of the mode over that of the base case
measured in the same run (the base case runs first and again last, and the ratio uses the mean).

Modes (Llama-3.1-8B on one H100 SXM, shipped profiles, unless named otherwise):

* ``base``: 100,000 ShareGPT-conversation-length requests, vllm-v1, Poisson at 80% of the
  saturating rate (measured as the request throughput of a 5,000-request burst);
* ``mooncake``: the Mooncake conversation trace (its own arrivals and prefix hashes) with prefix
  caching, vllm-v1;
* ``v0-chunked``: vllm-v0 with chunked prefill at 80% of its own saturating rate;
* ``exact``: the base case on the per-request reference path (``--exact``);
* ``70b-tp1`` / ``70b-tp2``: Llama-3.1-70B, fp8 weights on one GPU / bf16 on two, max model length
  8192, at 80% of the saturating rate (of a 2,000-request burst): a small KV cache (~560 / ~1,800
  blocks), so requests are preempted;
* ``overload-100`` / ``overload-150``: the base case at 100% / 150% of saturation;
* ``low-20``: the base case at 20% of saturation.

    python benchmarks/bench_modes.py                  # every mode (~1-3 min on one core)
    python benchmarks/bench_modes.py --scale 0.1      # quick: a tenth of the requests
    python benchmarks/bench_modes.py --modes base,mooncake --json
    python benchmarks/bench_modes.py --memory         # 1,000,000 base-case requests: peak RSS (< 1 GiB)
    python benchmarks/bench_modes.py --against /work/base-754/.venv/bin/python
        # every mode run alternately with this interpreter's servesim and the other one's:
        # the paired speedup per mode (cost per request, other / this)

Needs ../shared/data (or $SERVESIM_DATA) for the ShareGPT table and the Mooncake trace.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    """One row of the table: what to simulate, and how many requests by default."""

    name: str
    num_requests: int
    what: str


MODES = [
    Mode("base", 100_000, "8B, ShareGPT lengths, Poisson 80% load, v1 (prefix caching on)"),
    Mode("mooncake", 3_000, "8B, Mooncake conversation trace, prefix caching, v1"),
    Mode("v0-chunked", 10_000, "8B, ShareGPT, 80% load, vllm-v0 chunked prefill"),
    Mode("exact", 5_000, "base case on the per-request path (--exact)"),
    Mode("70b-tp1", 10_000, "70B fp8 TP1, ShareGPT, 80% load (small KV: preemption)"),
    Mode("70b-tp2", 10_000, "70B bf16 TP2, ShareGPT, 80% load (small KV: preemption)"),
    Mode("overload-100", 20_000, "base case at 100% of saturation"),
    Mode("overload-150", 20_000, "base case at 150% of saturation"),
    Mode("low-20", 20_000, "base case at 20% of saturation"),
]
BY_NAME = {m.name: m for m in MODES}


def _data_dir() -> str:
    env = os.environ.get("SERVESIM_DATA")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "shared", "data"))


def _setup(mode: str, n: int, seed: int):
    """The engine config, workload and options of ``mode`` with ``n`` requests."""
    from servesim.sim.config import make_engine_config
    from servesim.sim.gpus import get_gpu
    from servesim.sim.model_catalog import get_model
    from servesim.sim.runner import SimOptions, simulate
    from servesim.sim.workload import WorkloadSpec, build_workload

    gpu = get_gpu("h100-sxm")
    engine, load, exact, burst_n = "vllm-v1", 0.8, False, 5000
    kwargs: dict = {}
    model = get_model("llama-3.1-8b")
    if mode == "mooncake":
        cfg = make_engine_config(model, gpu, "vllm-v1", enable_prefix_caching=True)
        path = os.path.join(_data_dir(), "traces", "mooncake_conversation.jsonl")
        wl = build_workload(WorkloadSpec(kind="trace", trace_path=path, num_requests=n), seed=seed)
        return cfg, wl, SimOptions(seed=seed), None
    if mode == "v0-chunked":
        engine, kwargs = "vllm-v0", {"enable_chunked_prefill": True}
    elif mode == "exact":
        exact = True
    elif mode in ("70b-tp1", "70b-tp2"):
        model, burst_n = get_model("llama-3.1-70b"), 2000
        kwargs = {"tp": 1, "weight_dtype": "fp8"} if mode == "70b-tp1" else {"tp": 2}
        kwargs["max_model_len"] = 8192   # the KV cache cannot hold 131,072 tokens
    elif mode.startswith("overload-") or mode.startswith("low-"):
        load = int(mode.split("-")[1]) / 100
    elif mode != "base":
        raise ValueError(f"unknown mode {mode!r}; valid: {sorted(BY_NAME)}")
    cfg = make_engine_config(model, gpu, engine, **kwargs)
    burst = build_workload(WorkloadSpec(kind="burst", num_requests=burst_n, dataset="sharegpt-conversations"), seed=seed)
    sat = simulate(cfg, burst).summary["request_throughput"]
    wl = build_workload(WorkloadSpec(kind="poisson", num_requests=n, rate=load * sat,
                                     dataset="sharegpt-conversations"), seed=seed)
    return cfg, wl, SimOptions(seed=seed, exact=exact), load * sat


def run_one(mode: str, n: int, seed: int) -> dict:
    """Simulate one mode in this process and measure it."""
    from servesim.sim.runner import simulate

    t0 = time.process_time()
    cfg, wl, options, rate = _setup(mode, n, seed)
    t_setup = time.process_time() - t0
    t0 = time.process_time()
    result = simulate(cfg, wl, options)   # source, engine run and summarize
    cpu = time.process_time() - t0
    n_done = len(wl) if hasattr(wl, "__len__") else n
    s = result.summary
    return {"mode": mode, "requests": n_done, "rate": rate, "setup_cpu_s": t_setup, "cpu_s": cpu,
            "requests_per_cpu_s": n_done / cpu, "steps": result.num_steps,
            "steps_per_request": result.num_steps / n_done,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "summary": {k: s.get(k) for k in ("request_throughput", "output_throughput", "mean_ttft_ms",
                                              "p99_ttft_ms", "mean_tpot_ms", "num_preemptions",
                                              "prefix_cache_hit_rate")}}


def spawn(python: str, mode: str, n: int, seed: int) -> dict:
    """:func:`run_one` in a fresh ``python`` process (its own peak RSS)."""
    out = subprocess.run([python, os.path.abspath(__file__), "--one", mode, "--requests", str(n),
                          "--seed", str(seed)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"mode {mode} failed under {python}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cost(r: dict) -> float:
    return r["cpu_s"] / r["requests"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default=",".join(m.name for m in MODES), help="comma-separated subset")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every mode's request count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory", action="store_true", help="only the 1,000,000-request peak-RSS check")
    p.add_argument("--against", metavar="PYTHON", help="another interpreter (e.g. a baseline checkout's venv)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.requests, args.seed)))
        return 0
    if not args.scale > 0:
        p.error(f"--scale must be > 0, got {args.scale}")
    if args.memory:
        r = spawn(sys.executable, "base", 1_000_000, args.seed)
        if args.json:
            print(json.dumps(r))
        else:
            print(f"1,000,000 base-case requests: {r['cpu_s']:.1f} CPU s ({r['requests_per_cpu_s']:,.0f} req/CPU-s), "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB (target < 1024 MiB)")
        return 0
    names = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in names if m not in BY_NAME]
    if bad:
        p.error(f"unknown mode(s) {bad}; valid: {[m.name for m in MODES]}")
    if "base" not in names:
        names.insert(0, "base")
    names = ["base"] + [m for m in names if m != "base"] + ["base"]
    pythons = [sys.executable] + ([args.against] if args.against else [])
    rows: dict[str, list[dict]] = {}
    for name in names:
        n = max(1, round(BY_NAME[name].num_requests * args.scale))
        for py in pythons:   # alternate the interpreters mode by mode: paired under the same load
            rows.setdefault(f"{name}@{py}", []).append(spawn(py, name, n, args.seed))
            if not args.json:
                r = rows[f"{name}@{py}"][-1]
                print(f"  ran {name:13} {'(other)' if py != sys.executable else '':8} {r['requests']:>7,} req "
                      f"{r['cpu_s']:7.2f} CPU s", file=sys.stderr, flush=True)
    results = []
    for py in pythons:
        base = rows[f"base@{py}"]
        base_cost = sum(_cost(r) for r in base) / len(base)
        for name in dict.fromkeys(names):
            r = rows[f"{name}@{py}"][0]
            if name == "base":   # first and last run of the base case: their mean
                cpu = base_cost * r["requests"]
                r = dict(r, cpu_s=cpu, requests_per_cpu_s=r["requests"] / cpu,
                         base_cpu_s_runs=[x["cpu_s"] for x in base])
            results.append(dict(r, python=py, cost_ratio=_cost(r) / base_cost))
    if args.against:
        mine = {r["mode"]: r for r in results if r["python"] == sys.executable}
        for r in results:
            if r["python"] == args.against:
                mine[r["mode"]]["speedup_vs_other"] = _cost(r) / _cost(mine[r["mode"]])
    if args.json:
        print(json.dumps({"scale": args.scale, "results": results}, indent=1))
        return 0
    for py in pythons:
        print(f"\nservesim under {py}  (CPU time per request; ratio = cost / base cost, same run)")
        print(f"{'mode':14} {'requests':>9} {'req/CPU-s':>10} {'steps/req':>9} {'peak RSS':>9} {'ratio':>6}"
              + ("  speedup" if args.against and py == sys.executable else "") + "  what")
        for r in results:
            if r["python"] != py:
                continue
            extra = f"  {r['speedup_vs_other']:6.2f}x" if "speedup_vs_other" in r else ""
            print(f"{r['mode']:14} {r['requests']:>9,} {r['requests_per_cpu_s']:>10,.0f} {r['steps_per_request']:>9.1f} "
                  f"{r['peak_rss_mib']:>6.0f} MiB {r['cost_ratio']:>5.1f}x{extra}  {BY_NAME[r['mode']].what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
