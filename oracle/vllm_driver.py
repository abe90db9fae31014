"""Drive vLLM's own v1 ``Scheduler`` and ``KVCacheManager`` (CPU only, no weights) with a stream.

This is the oracle: the real ``vllm.v1.core.sched.scheduler.Scheduler`` of the installed vLLM,
constructed as vLLM's own tests do (``tests/v1/core/utils.py::create_scheduler``) over a
``KVCacheConfig`` of ``num_gpu_blocks`` full-attention blocks, stepped with fake model outputs:
every scheduled request whose prompt (or recomputed prefix) is done samples one token.  Sampled
token ids are unique per request and position; prompt token ids are derived from the stream's
block hashes, so prompts with equal leading hashes share exactly those token blocks and vLLM's
chained block hashes hit where servesim's per-block keys do.

Needs ``pip install '.[vllm-oracle]'`` plus vLLM itself without its GPU dependencies
(``oracle/install.sh``); importing this module without vLLM raises ``ImportError``.
"""
from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYTHONHASHSEED", "0")        # vLLM's CBOR block hashes are then reproducible
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

import torch  # noqa: E402
import vllm  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.config import CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig  # noqa: E402
from vllm.utils.hashing import get_hash_fn_by_name  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec  # noqa: E402
from vllm.v1.outputs import ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request, RequestStatus  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

from .records import OracleConfig, RequestSpec, StepLog, StepRecord, is_rejected_for_length  # noqa: E402

VLLM_VERSION = vllm.__version__

# Token-id ranges (all < 2**62): shared prompt blocks, per-request prompt tails, sampled tokens.
_SHARED_BASE = 1
_PROMPT_BASE = 1 << 44
_OUTPUT_BASE = 1 << 52
_PER_REQUEST = 1 << 24


@lru_cache(maxsize=1)
def _model_dir() -> str:
    """A folder holding only a tiny Llama ``config.json`` (the scheduler never loads weights)."""
    path = tempfile.mkdtemp(prefix="servesim-oracle-model-")
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 1,
              "num_hidden_layers": 1, "vocab_size": 32000, "max_position_embeddings": 1 << 20,
              "torch_dtype": "float16", "rms_norm_eps": 1e-5}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return path


def make_scheduler(cfg: OracleConfig) -> Scheduler:
    """vLLM's v1 scheduler over ``cfg.num_gpu_blocks`` blocks, FCFS, synchronous (no async
    scheduling, no speculative decoding, no KV connector)."""
    model_config = ModelConfig(model=_model_dir(), skip_tokenizer_init=True, dtype="float16",
                               max_model_len=cfg.max_model_len, seed=0)
    scheduler_config = SchedulerConfig(
        max_model_len=cfg.max_model_len, is_encoder_decoder=False, max_num_seqs=cfg.max_num_seqs,
        max_num_batched_tokens=cfg.max_num_batched_tokens, enable_chunked_prefill=True,
        long_prefill_token_threshold=cfg.long_prefill_token_threshold,
        scheduler_reserve_full_isl=cfg.scheduler_reserve_full_isl, async_scheduling=False)
    cache_config = CacheConfig(block_size=cfg.block_size, gpu_memory_utilization=0.9,
                               cache_dtype="auto", enable_prefix_caching=cfg.enable_prefix_caching)
    vllm_config = VllmConfig(model_config=model_config, scheduler_config=scheduler_config,
                             cache_config=cache_config, device_config=DeviceConfig(device="cpu"))
    kv_cache_config = KVCacheConfig(
        num_blocks=cfg.num_gpu_blocks, kv_cache_tensors=[],
        kv_cache_groups=[KVCacheGroupSpec(["layer"], FullAttentionSpec(
            block_size=cfg.block_size, num_kv_heads=1, head_size=1, dtype=torch.float32))])
    cache_config.num_gpu_blocks = cfg.num_gpu_blocks
    return Scheduler(vllm_config=vllm_config, kv_cache_config=kv_cache_config, log_stats=False,
                     structured_output_manager=StructuredOutputManager(vllm_config),
                     block_size=cfg.block_size)


class _TokenIds:
    """Prompt token ids from block hashes: one fixed run of ``block_size`` ids per distinct key."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.key_index: dict[object, int] = {}

    def prompt(self, spec: RequestSpec) -> list[int]:
        bs = self.block_size
        ids: list[int] = []
        for key in spec.block_hashes[: spec.num_prompt_tokens // bs]:
            k = self.key_index.setdefault(key, len(self.key_index))
            ids.extend(range(_SHARED_BASE + k * bs, _SHARED_BASE + (k + 1) * bs))
        base = _PROMPT_BASE + spec.request_id * _PER_REQUEST
        ids.extend(range(base + len(ids), base + spec.num_prompt_tokens))
        return ids


def _sampled_token(request: Request) -> int:
    return _OUTPUT_BASE + int(request.request_id) * _PER_REQUEST + request.num_output_tokens


class VllmOracle:
    """Runs a stream through vLLM's scheduler, one :class:`StepRecord` per tick."""

    def __init__(self, cfg: OracleConfig) -> None:
        self.cfg = cfg
        self.scheduler = make_scheduler(cfg)
        self.block_hasher = None
        if cfg.enable_prefix_caching:
            hash_fn = get_hash_fn_by_name(self.scheduler.cache_config.prefix_caching_hash_algo)
            init_none_hash(hash_fn)
            self.block_hasher = get_request_block_hasher(cfg.block_size, hash_fn)
        self.tokens = _TokenIds(cfg.block_size)

    def _make_request(self, spec: RequestSpec) -> Request:
        params = SamplingParams(max_tokens=spec.max_tokens, ignore_eos=True)
        return Request(str(spec.request_id), self.tokens.prompt(spec), params, None,
                       arrival_time=float(spec.request_id), block_hasher=self.block_hasher)

    def run(self, stream: list[RequestSpec], max_steps: int = 10_000_000) -> StepLog:
        sched, cfg, log = self.scheduler, self.cfg, StepLog()
        pending = sorted(stream, key=lambda s: (s.arrival_step, s.request_id))
        requests: dict[str, Request] = {}
        i, step = 0, 0
        while i < len(pending) or sched.has_unfinished_requests():
            if step >= max_steps:
                raise RuntimeError(f"vLLM oracle: no end after {max_steps} steps")
            while i < len(pending) and pending[i].arrival_step <= step:
                spec = pending[i]
                i += 1
                if is_rejected_for_length(spec, cfg):
                    log.rejected[spec.request_id] = step
                    continue
                request = self._make_request(spec)
                requests[request.request_id] = request
                sched.add_request(request)
            status_before = {rid: r.status for rid, r in requests.items()}
            out = sched.schedule()
            num_sched = out.num_scheduled_tokens
            new = sorted(int(d.req_id) for d in out.scheduled_new_reqs)
            resumed = sorted(int(r) for r in out.scheduled_cached_reqs.req_ids
                             if status_before[r] is RequestStatus.PREEMPTED)
            admitted = [str(r) for r in new + resumed]
            hits = sorted((int(r), requests[r].num_computed_tokens - num_sched[r]) for r in admitted
                          if requests[r].num_computed_tokens - num_sched[r] > 0)
            preempted = sorted(int(rid) for rid, r in requests.items()
                               if status_before[rid] is RequestStatus.RUNNING
                               and r.status is RequestStatus.PREEMPTED)
            free = sched.kv_cache_manager.block_pool.get_num_free_blocks()
            # Fake model: a request whose scheduled tokens reach its last token samples one token.
            req_ids = list(num_sched)
            sampled = []
            for rid in req_ids:
                r = requests[rid]
                sampled.append([_sampled_token(r)] if r.num_computed_tokens >= r.num_tokens else [])
            runner_out = ModelRunnerOutput(req_ids=req_ids, req_id_to_index={r: k for k, r in enumerate(req_ids)},
                                           sampled_token_ids=sampled, logprobs=None, prompt_logprobs_dict={},
                                           pooler_output=[])
            sched.update_from_output(out, runner_out)
            finished = sorted(int(rid) for rid in req_ids if requests[rid].is_finished())
            for rid in finished:
                log.finish_step[rid] = step
                del requests[str(rid)]
            log.records.append(StepRecord(
                step=step, scheduled=tuple(sorted((int(r), n) for r, n in num_sched.items())),
                new=tuple(new), resumed=tuple(resumed), prefix_hits=tuple(hits), preempted=tuple(preempted),
                finished=tuple(finished), num_blocks_used=cfg.num_gpu_blocks - free, num_blocks_free=free))
            step += 1
        return log


def run_vllm(cfg: OracleConfig, stream: list[RequestSpec]) -> StepLog:
    """The oracle's :class:`StepLog` for ``stream`` under ``cfg``."""
    return VllmOracle(cfg).run(stream)


__all__ = ["VLLM_VERSION", "VllmOracle", "make_scheduler", "run_vllm"]
