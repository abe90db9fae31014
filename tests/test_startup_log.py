"""The start-up log parser (``measure --launch`` reads the KV lines with it): a hand-written fixture
of each vLLM format, and all 74 real vLLM 0.19 start-up logs of ../shared/data when present."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from servesim.measure.launcher import parse_kv_log
from servesim.measure.startup_log import FailureKind, parse_startup_log
from servesim.sim.data_paths import find_shared_data

# Hand-written in vLLM's formats (not copied from any log).
V1_LOG = """\
(APIServer pid=1) INFO 01-01 00:00:00 [entrypoints/utils.py:1]  ▄▄ ▄█ █     █     █ ▀▄▀ █  version 0.19.0
(APIServer pid=1) INFO 01-01 00:00:00 [entrypoints/utils.py:2] non-default args: {'model': 'x/y', 'tensor_parallel_size': 2, 'gpu_memory_utilization': 0.9}
(EngineCore pid=2) INFO 01-01 00:00:01 [v1/engine/core.py:1] Initializing a V1 LLM engine (v0.19.0) with config: model='x/y'
(Worker pid=3) DEBUG 01-01 00:00:02 [v1/worker/gpu_worker.py:1] worker init memory snapshot: torch_peak=0.0GiB, free_memory=77.66GiB, total_memory=79.19GiB, cuda_memory=1.53GiB, torch_memory=0.0GiB, non_torch_memory=1.51GiB
(Worker pid=3) INFO 01-01 00:00:03 [v1/core/kv_cache_utils.py:1] Overriding num_gpu_blocks=0 with num_gpu_blocks_override=512
(Worker pid=3) DEBUG 01-01 00:00:04 [v1/worker/gpu_worker.py:2] Initial free memory: 77.66 GiB; Requested memory: 0.900000 (util), 71.27 GiB
(Worker pid=3) DEBUG 01-01 00:00:04 [v1/worker/gpu_worker.py:3] Memory profiling takes 9.1 seconds. Total non KV cache memory: 11.00GiB; torch peak memory increase: 2.00GiB; non-torch forward increase memory: 2.00GiB; weights memory: 7.00GiB.
(Worker pid=3) INFO 01-01 00:00:04 [v1/worker/gpu_worker.py:4] Available KV cache memory: 60.27 GiB
(Worker pid=3) INFO 01-01 00:00:04 [v1/core/kv_cache_utils.py:2] GPU KV cache size: 2,256,000 tokens
(Worker pid=3) INFO 01-01 00:00:04 [v1/core/kv_cache_utils.py:3] Maximum concurrency for 8,192 tokens per request: 275.39x
(Worker pid=3) INFO 01-01 00:00:05 [v1/worker/gpu_worker.py:5] CUDA graph pool memory: 0.70 GiB (actual), 0.60 GiB (estimated)
(APIServer pid=1) DEBUG 01-01 00:00:06 [v1/metrics/loggers.py:1] Engine 000: vllm cache_config_info with initialization after num_gpu_blocks is: 141000
(APIServer pid=1) DEBUG 01-01 00:00:06 [renderers/hf.py:1] ValueError: Cannot use chat template functions because tokenizer.chat_template is not set
(APIServer pid=1) INFO:     Application startup complete.
"""
V0_LOG = """\
INFO 01-01 00:00:00 api_server.py:1] vLLM API server version 0.6.3.post1
INFO 01-01 00:00:01 worker.py:1] Memory profiling results: total_gpu_memory=79.22GiB initial_memory_usage=15.5GiB peak_torch_memory=16.2GiB memory_usage_post_profile=17.0GiB non_torch_memory=1.79GiB kv_cache_size=53.29GiB gpu_memory_utilization=0.90
INFO 01-01 00:00:01 gpu_executor.py:1] # GPU blocks: 27284, # CPU blocks: 2048
INFO 01-01 00:00:02 model_runner.py:1] Graph capturing finished in 20 secs.
"""
FAILED_LOG = """\
(APIServer pid=1) INFO 01-01 00:00:00 [entrypoints/utils.py:1]  version 0.19.0
(Worker pid=9) ERROR 01-01 00:00:03 [v1/executor/multiproc_executor.py:1] Traceback (most recent call last):
(Worker pid=9) ERROR 01-01 00:00:03 [v1/executor/multiproc_executor.py:1] ValueError: Free memory on device cuda:1 (60.87/79.19 GiB) on startup is less than desired GPU memory utilization (0.95, 75.23 GiB).
(EngineCore pid=2) Exception: WorkerProc initialization failed due to an exception in a background process. See stack trace for root cause.
(APIServer pid=1) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_v1_log_facts_and_the_profiling_override_trap():
    log = parse_startup_log(V1_LOG)
    assert log.succeeded and log.vllm_version == "0.19.0" and log.engine == "v1"
    assert log.kv_cache_tokens == 2_256_000 and log.num_gpu_blocks == 141_000
    assert (log.weights_gib, log.activation_peak_gib, log.non_torch_gib) == (7.0, 2.0, 2.0)  # not the init snapshot
    assert log.total_memory_gib == 79.19 and log.gpu_memory_utilization == 0.9 and log.available_kv_gib == 60.27
    assert log.non_default_args["tensor_parallel_size"] == 2 and log.cuda_graph_gib == 0.7
    kv = parse_kv_log(V1_LOG)  # what measure --launch stores
    assert kv["num_gpu_blocks"] == 141_000 and kv["kv_cache_tokens"] == 2_256_000 and "failure" not in kv
    assert kv["max_concurrency"] == {"tokens_per_request": 8192, "concurrency": 275.39}


def test_v0_log_facts():
    log = parse_startup_log(V0_LOG)
    assert log.vllm_version == "0.6.3.post1" and log.num_gpu_blocks == 27284 and log.num_cpu_blocks == 2048
    assert (log.total_memory_gib, log.non_torch_gib, log.available_kv_gib) == (79.22, 1.79, 53.29)


def test_a_failed_start_names_its_root_cause():
    log = parse_startup_log(FAILED_LOG)
    assert not log.succeeded and log.failure is not None
    assert log.failure.kind is FailureKind.INSUFFICIENT_FREE_MEMORY and log.failure.exception == "ValueError"
    assert "60.87/79.19 GiB" in log.failure.message and log.failure.line == 3
    assert parse_kv_log(FAILED_LOG)["failure"]["kind"] == "insufficient_free_memory"


# ----- the 74 real logs -----------------------------------------------------------------------
def _logs_dir() -> Path | None:
    try:
        return find_shared_data("kv_capacity/vllm_0.19_startup_logs")
    except FileNotFoundError:
        return None


LOGS = _logs_dir()
needs_logs = pytest.mark.skipif(LOGS is None, reason="needs ../shared/data/kv_capacity/vllm_0.19_startup_logs")
# The root cause each failed start shows (by file-name prefix), read off the logs by hand.
EXPECTED_FAILURES = {
    "codellama-codellama-34b": FailureKind.INSUFFICIENT_FREE_MEMORY, "google-gemma-2": FailureKind.MODEL_UNAVAILABLE,
    "google-gemma-3": FailureKind.MODEL_UNAVAILABLE, "google-gemma-4": FailureKind.UNSUPPORTED_MODEL,
    "meta-llama-llama-3-1-8b": FailureKind.INVALID_PARALLEL_CONFIG,
    "meta-llama-llama-4-scout": FailureKind.INSUFFICIENT_FREE_MEMORY, "microsoft-phi-2": FailureKind.MAX_MODEL_LEN,
    "moonshotai-kimi-dev-72b": FailureKind.INSUFFICIENT_FREE_MEMORY, "openai-gpt-oss-20b": FailureKind.OUT_OF_MEMORY,
    "qwen-qwen3-14b": FailureKind.INVALID_PARALLEL_CONFIG,
}


@needs_logs
def test_all_real_logs_parse():
    logs = sorted(LOGS.glob("*.log"))
    ok = [p for p in logs if not p.name.endswith(".FAILED.log")]
    failed = [p for p in logs if p.name.endswith(".FAILED.log")]
    assert (len(logs), len(ok), len(failed)) == (74, 59, 15)
    for path in ok:
        log = parse_startup_log(path.read_text(errors="replace"))
        assert log.succeeded and log.vllm_version == "0.19.0" and log.engine == "v1", path.name
        # one KV-cache group, or a hybrid pool shared by n groups (sliding-window layers): blocks = n x tokens/16
        per_group = log.kv_cache_tokens // 16
        assert log.kv_cache_tokens % 16 == 0 and log.num_gpu_blocks % per_group < log.num_gpu_blocks // per_group, \
            path.name
        assert log.total_memory_gib == 79.19 and log.gpu_memory_utilization in (0.9, 0.95), path.name
        # vLLM's own arithmetic: available = requested - weights - activation peak - non-torch (0.01 GiB logs)
        budget = log.requested_memory_gib - log.weights_gib - log.activation_peak_gib - log.non_torch_gib
        assert abs(budget - log.available_kv_gib) <= 0.025, path.name
        assert log.max_concurrency["concurrency"] > 0 and "model" in log.non_default_args
    for path in failed:
        log = parse_startup_log(path.read_text(errors="replace"))
        assert not log.succeeded and log.failure is not None, path.name
        kind = next(k for prefix, k in EXPECTED_FAILURES.items() if path.name.startswith(prefix))
        assert log.failure.kind is kind and log.failure.message, (path.name, log.failure)


@needs_logs
def test_real_logs_agree_with_the_independently_collected_records():
    """The records CSV was transcribed from the same logs; every parsed value matches its row."""
    rows = list(csv.DictReader(find_shared_data("kv_capacity/vllm_kv_capacity_records.csv").open()))
    by_log = {r["source_url_or_repo_path"].rsplit("/", 1)[-1]: r for r in rows}
    matched = 0
    for path in sorted(LOGS.glob("*.log")):
        row = by_log.get(path.name)
        if row is None:
            continue
        log = parse_startup_log(path.read_text(errors="replace"))
        matched += 1
        assert log.kv_cache_tokens == int(row["kv_cache_tokens"]) == int(row["num_gpu_blocks"]) * 16, path.name
        if "pp1" not in path.name:
            continue  # pipeline stages log different profiles: the parser keeps the reporting stage's,
            # the CSV transcribed the first line of any stage
        for key, col in (("weights_gib", "weights_gib"), ("activation_peak_gib", "activation_peak_gib"),
                         ("non_torch_gib", "non_torch_gib"), ("available_kv_gib", "available_kv_cache_gib"),
                         ("cuda_graph_gib", "cuda_graph_gib")):
            assert getattr(log, key) == pytest.approx(float(row[col]), abs=1e-9), (path.name, key)
    assert matched == 59


def test_a_launched_server_that_fails_to_start_is_reported_with_its_root_cause(tmp_path):
    """measure --launch: a server that exits while starting is an error naming vLLM's root cause."""
    import asyncio
    import socket
    import sys

    import aiohttp

    from servesim.measure.launcher import Launcher

    script = tmp_path / "fake_vllm.py"
    script.write_text("import sys\nsys.stdout.write(" + repr(FAILED_LOG) + ")\nsys.exit(1)\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = Launcher(f"{sys.executable} {script}", tmp_path / "server.log", f"http://127.0.0.1:{port}")

    async def start() -> None:
        async with aiohttp.ClientSession() as session:
            await launcher.ensure_running(session, timeout_s=30)

    with pytest.raises(ValueError, match=r"insufficient_free_memory: Free memory on device cuda:1"):
        asyncio.run(start())
    assert launcher.kv_facts()["failure"]["kind"] == "insufficient_free_memory"
