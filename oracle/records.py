"""The shared vocabulary of the oracle: a request stream, a scheduler configuration, and the
per-step record both schedulers (vLLM's and servesim's) are reduced to.

A stream is a list of :class:`RequestSpec`: prompt length, ``max_tokens``, the step at which the
request reaches the scheduler, and its prompt's block hashes (equal leading keys mean a shared
prompt prefix, as servesim's ``Request.block_hashes``).  Time is counted in scheduler steps
("ticks"): tick ``k`` adds the requests whose ``arrival_step <= k`` that are not yet added, then
runs one ``schedule`` / ``update_from_output`` round, recorded as one :class:`StepRecord` even if
nothing was scheduled.  Both drivers follow exactly this protocol, so two schedulers agree
decision for decision iff their record lists are equal.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class OracleConfig:
    """The scheduler knobs the two sides share, under vLLM's names.

    ``num_gpu_blocks`` includes vLLM v1's null block (block 0, never handed out), as vLLM's
    ``cache_config.num_gpu_blocks`` and servesim's ``--num-gpu-blocks`` both do.
    """

    num_gpu_blocks: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    block_size: int = 16
    enable_prefix_caching: bool = False
    long_prefill_token_threshold: int = 0
    # vLLM 0.27 admits a waiting request only if its whole prompt fits in the free blocks
    # (``SchedulerConfig.scheduler_reserve_full_isl``, default True there); earlier v1 releases
    # checked only the first chunk.
    scheduler_reserve_full_isl: bool = True

    def __post_init__(self) -> None:
        if self.num_gpu_blocks < 2:
            raise ValueError(f"num_gpu_blocks must be >= 2 (the null block and one more), got {self.num_gpu_blocks}")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(f"need 1 <= max_num_seqs <= max_num_batched_tokens, got {self.max_num_seqs}, "
                             f"{self.max_num_batched_tokens}")
        if self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if not 0 <= self.long_prefill_token_threshold <= self.max_model_len:
            raise ValueError(f"long_prefill_token_threshold must be in [0, max_model_len={self.max_model_len}] "
                             f"(as vLLM requires), got {self.long_prefill_token_threshold}")


@dataclass(frozen=True)
class RequestSpec:
    """One request of a stream.  ``block_hashes`` keys the prompt's full blocks (``()``: unique)."""

    request_id: int
    num_prompt_tokens: int
    max_tokens: int
    arrival_step: int = 0
    block_hashes: tuple = ()

    def __post_init__(self) -> None:
        if self.num_prompt_tokens < 1 or self.max_tokens < 1 or self.arrival_step < 0:
            raise ValueError(f"request {self.request_id}: need prompt >= 1, max_tokens >= 1, arrival_step >= 0 "
                             f"(got {self.num_prompt_tokens}, {self.max_tokens}, {self.arrival_step})")


def is_rejected_for_length(spec: RequestSpec, cfg: OracleConfig) -> bool:
    """vLLM's OpenAI server answers 400 when prompt plus ``max_tokens`` exceed ``max_model_len``
    (``OpenAIServing._validate_input``: "'max_tokens' or 'max_completion_tokens' is too large");
    such a request never reaches the scheduler."""
    return spec.num_prompt_tokens + spec.max_tokens > cfg.max_model_len


@dataclass(frozen=True)
class StepRecord:
    """What one scheduler tick decided, in a form both sides produce identically.

    ``scheduled`` is ``(request_id, num_scheduled_tokens)`` sorted by id; ``new`` are first
    admissions, ``resumed`` re-admissions after preemption; ``prefix_hits`` the
    ``(request_id, num_computed_tokens)`` of admitted requests that started from cached blocks;
    ``preempted`` and ``finished`` happened in this tick's ``schedule`` and ``update_from_output``.
    Block counts are taken right after
    ``schedule`` (vLLM's null block counts as used, cached free blocks as free).
    """

    step: int
    scheduled: tuple[tuple[int, int], ...]
    new: tuple[int, ...] = ()
    resumed: tuple[int, ...] = ()
    prefix_hits: tuple[tuple[int, int], ...] = ()
    preempted: tuple[int, ...] = ()
    finished: tuple[int, ...] = ()
    num_blocks_used: int = 0
    num_blocks_free: int = 0

    @property
    def num_scheduled_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)


@dataclass
class StepLog:
    """Records of a whole stream, each request's finish tick, and the arrival tick of each request
    refused for length (those never reach the scheduler)."""

    records: list[StepRecord] = field(default_factory=list)
    finish_step: dict[int, int] = field(default_factory=dict)
    rejected: dict[int, int] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return len(self.records)


def first_mismatch(a: StepLog, b: StepLog, names: tuple[str, str] = ("vllm", "servesim")) -> str | None:
    """``None`` if the two logs agree decision for decision, else a description of the first
    differing step (each differing field with both values)."""
    for ra, rb in zip(a.records, b.records):
        if ra != rb:
            lines = [f"step {ra.step}:"]
            for name in ("scheduled", "new", "resumed", "prefix_hits", "preempted", "finished",
                         "num_blocks_used", "num_blocks_free"):
                va, vb = getattr(ra, name), getattr(rb, name)
                if va != vb:
                    lines.append(f"  {name}: {names[0]}={va!r} {names[1]}={vb!r}")
            return "\n".join(lines)
    if a.num_steps != b.num_steps:
        return f"step counts differ: {names[0]}={a.num_steps} {names[1]}={b.num_steps}"
    if a.finish_step != b.finish_step:
        diff = sorted(k for k in a.finish_step.keys() | b.finish_step.keys()
                      if a.finish_step.get(k) != b.finish_step.get(k))
        return f"finish steps differ for requests {diff[:10]}"
    if a.rejected != b.rejected:
        return f"rejected requests differ: {names[0]}={a.rejected} {names[1]}={b.rejected}"
    return None


__all__ = ["OracleConfig", "RequestSpec", "StepLog", "StepRecord", "first_mismatch", "is_rejected_for_length"]
