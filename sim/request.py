"""A request as the engine sees it, named as vLLM names it.

``num_tokens`` is the prompt plus the output generated so far; ``num_computed_tokens`` is how many
of those already have KV entries.  A request is decoding when only the newest token is left to
compute (``num_tokens - num_computed_tokens == 1``).  While a request decodes inside the
scheduler's vectorised batch, its counters live in that batch's arrays and the fields here are
brought up to date when it leaves the batch (see :class:`servesim.sim.decode_batch.DecodeBatch`).
"""
from __future__ import annotations

import enum


class RequestStatus(enum.Enum):
    """Where a request is, named as vLLM's ``RequestStatus``; the three ``FINISHED*`` members are
    the outcomes a run records (``docs/outputs.md``: ``finished``, ``aborted``, ``rejected``)."""

    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    FINISHED = enum.auto()           # produced its max_tokens (vLLM: FINISHED_LENGTH_CAPPED / _STOPPED)
    FINISHED_ABORTED = enum.auto()   # its client went away (vLLM: FINISHED_ABORTED)
    FINISHED_REJECTED = enum.auto()  # refused: too long for the engine, or can never fit (vLLM: FINISHED_IGNORED, a 400)

    @property
    def is_finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset((RequestStatus.FINISHED, RequestStatus.FINISHED_ABORTED, RequestStatus.FINISHED_REJECTED))


class Request:
    """One generation request: ``max_tokens`` outputs for a ``num_prompt_tokens`` prompt.

    Invariants: ``0 <= num_computed_tokens <= num_tokens``; ``num_output_tokens <= max_tokens``;
    a finished request has produced exactly ``max_tokens`` tokens.
    """

    __slots__ = ("request_id", "arrival_time", "num_prompt_tokens", "max_tokens", "num_output_tokens",
                 "num_computed_tokens", "status", "in_batch", "off_c", "off_o", "join_seq", "block_hashes",
                 "num_cached_tokens", "num_preemptions", "first_scheduled_time", "first_token_time",
                 "last_token_time", "user", "blocks")

    def __init__(self, request_id: int, arrival_time: float, num_prompt_tokens: int, max_tokens: int,
                 block_hashes: tuple | None = None, user: int = -1) -> None:
        if num_prompt_tokens < 1 or max_tokens < 1:
            raise ValueError(f"request {request_id}: prompt and output lengths must be >= 1 "
                             f"(got {num_prompt_tokens}, {max_tokens})")
        self.request_id = request_id
        self.arrival_time = arrival_time
        self.num_prompt_tokens = num_prompt_tokens
        self.max_tokens = max_tokens
        self.num_output_tokens = 0
        self.num_computed_tokens = 0
        self.status = RequestStatus.WAITING
        self.in_batch = False        # decoding inside the DecodeBatch (counters relative to its step)
        self.off_c = 0               # while in_batch: num_computed_tokens - batch step counter
        self.off_o = 0               # while in_batch: num_output_tokens - batch step counter
        self.join_seq = 0            # which stay in the batch its finish-heap entry belongs to
        self.block_hashes = block_hashes  # per full prompt block, for prefix caching (None: unique)
        self.num_cached_tokens = 0   # prompt tokens served from the prefix cache at first admission
        self.num_preemptions = 0
        self.first_scheduled_time = -1.0
        self.first_token_time = -1.0
        self.last_token_time = -1.0
        self.user = user             # closed-loop user that sent it (-1: open loop)
        self.blocks: list[int] | None = None  # its KV blocks (the list KVCacheManager.req_to_blocks holds)

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens

    @property
    def is_finished(self) -> bool:
        return self.status in _FINISHED

    def __repr__(self) -> str:
        return (f"Request({self.request_id}, prompt={self.num_prompt_tokens}, out={self.num_output_tokens}/"
                f"{self.max_tokens}, computed={self.num_computed_tokens}, {self.status.name})")
