"""servesim's one summary against ``vllm bench serve``'s own: vLLM 0.27's
``vllm.benchmarks.serve.calculate_metrics`` on random request outcomes (failures, single-token
requests, chunks of several tokens), and the detailed result file vLLM writes of them read back
through :func:`~servesim.calibrate.measured_run.bench_requests`.  Every key must agree.

Skips without vLLM (oracle/install.sh builds the environment); fails under
``SERVESIM_REQUIRE_ORACLE=1``.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest

from servesim.calibrate.measured_run import bench_requests
from servesim.sim.metrics import summarize

try:
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput
    from vllm.benchmarks.serve import calculate_metrics
except Exception as exc:  # ImportError, or a vLLM that imports but breaks
    why = f"vLLM's benchmark code unavailable ({type(exc).__name__}: {exc}); install it with oracle/install.sh"
    if os.environ.get("SERVESIM_REQUIRE_ORACLE") == "1":
        pytest.fail(why, pytrace=False)
    pytest.skip(why, allow_module_level=True)

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def outcomes(seed: int, n: int) -> list[RequestFuncOutput]:
    """Request outcomes as vLLM's client records them (start_time on the client's clock)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        start = 100.0 + float(rng.exponential(0.05)) * i
        if rng.random() < 0.1:  # a failed request: what vLLM's request function leaves
            out.append(RequestFuncOutput(success=False, prompt_len=int(rng.integers(10, 500)), start_time=start,
                                         error="HTTP 500"))
            continue
        chunks = int(rng.choice([1, 1, 2, 5, 40]))
        tokens_per_chunk = int(rng.choice([1, 1, 4]))
        ttft = float(rng.gamma(2.0, 0.05))
        itl = [float(x) for x in rng.gamma(2.0, 0.01, chunks - 1)]
        out.append(RequestFuncOutput(success=True, latency=ttft + sum(itl), ttft=ttft, itl=itl,
                                     output_tokens=chunks * tokens_per_chunk,
                                     prompt_len=int(rng.integers(10, 500)), start_time=start))
    return out


def detailed_result(outputs: list[RequestFuncOutput], duration_s: float) -> dict:
    """What ``vllm bench serve --save-result --save-detailed`` writes of these outputs."""
    return {"duration": duration_s, "input_lens": [o.prompt_len for o in outputs],
            "output_lens": [o.output_tokens if o.success else 0 for o in outputs],
            "ttfts": [o.ttft for o in outputs], "itls": [o.itl for o in outputs],
            "start_times": [o.start_time for o in outputs], "errors": [o.error for o in outputs]}


def vllm_keys(metrics) -> dict:
    """BenchmarkMetrics under the result file's key names (benchmark()'s process_one_metric)."""
    keys = {"completed": metrics.completed, "failed": metrics.failed, "total_input_tokens": metrics.total_input,
            "total_output_tokens": metrics.total_output, "request_throughput": metrics.request_throughput,
            "request_goodput": metrics.request_goodput, "output_throughput": metrics.output_throughput,
            "total_token_throughput": metrics.total_token_throughput}
    for name in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std"):
            keys[f"{stat}_{name}_ms"] = getattr(metrics, f"{stat}_{name}_ms")
        for p, value in getattr(metrics, f"percentiles_{name}_ms"):
            keys[f"p{str(int(p)) if int(p) == p else str(p)}_{name}_ms"] = value
    return keys


@pytest.mark.parametrize("seed", range(5))
def test_summary_equals_vllm_bench_serve(seed, capsys):
    outputs = outcomes(seed, 200)
    duration = max(o.start_time + o.latency for o in outputs) - min(o.start_time for o in outputs) + 0.25
    slos = {"ttft": 120.0, "tpot": 15.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics, _ = calculate_metrics([], outputs, duration, None, list(PERCENTILES), dict(slos))
    capsys.readouterr()  # vLLM prints the failed requests
    want = vllm_keys(metrics)
    got = summarize(*bench_requests(detailed_result(outputs, duration)), percentiles=PERCENTILES,
                    goodput_slos_ms=slos, duration_s=duration)
    assert set(want) - set(got) == set()
    diff = {k: (want[k], got[k]) for k in want
            if not math.isclose(float(got[k]), float(want[k]), rel_tol=1e-9, abs_tol=1e-9)}
    assert not diff, diff
