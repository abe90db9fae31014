"""The decoding part of the running batch, stepped in O(1) per step.

Most of a busy replica's requests are decoding: each step every one of them gains one token and,
each ``block_size`` tokens, one KV block.  Touching each of them every step would cost
O(batch) interpreter work per step.  Instead every member keeps its counters *relative to a
shared step counter* ``g`` (the number of batch steps run so far):

* ``num_computed_tokens = off_c + g`` and ``num_output_tokens = off_o + g``;
* a member needs a new block at the step taking ``g`` to ``g+1`` iff ``(off_c + g) % block_size
  == 0``, so members are bucketed by ``off_c % block_size`` and the bucket ``-g % block_size`` is
  exactly the set needing a block now;
* the member finishing first is the top of a heap keyed by ``max_tokens - off_o``;
* the summed context of the batch is ``sum(off_c) + size * (g + 1)``.

A step is then a counter increment plus work proportional to what changed (blocks handed out,
requests finishing).  Whenever something per-request must happen to a decoder (a token budget
smaller than the batch, preemption while other requests run too) the scheduler takes every
member out (:meth:`Scheduler.materialize`) and runs the exact per-request path; ``exact=True``
always does.  Preemption when only the batch runs removes just the victims
(:meth:`Scheduler._preempt_from_tail`).
``tests/test_engine.py::test_fast_path_matches_exact`` shows both give identical results.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from .request import Request


@dataclass(slots=True)
class DecodeRun:
    """A scheduler output of several steps: the whole batch decoding, nothing else in the steps.

    :meth:`Scheduler.schedule_bulk` returns it with ``max_steps``, the steps free of events by the
    scheduler's account (the first finish runs alone on the per-step path); the cost model gives
    the steps' end times up to the next arrival (``ends``), and
    :meth:`Scheduler.update_from_decode_run` applies them, cutting the run where the free blocks
    run out.  Invariant once applied: ``num_steps == len(ends) >= 2``.
    """

    num_seqs: int
    context_tokens: int             # summed context of the first step
    max_steps: int
    first_step: int                 # the batch's step counter ``g`` before the run
    free_blocks_before: int = 0
    generation_tokens_before: int = 0
    ends: list[float] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        return len(self.ends)

    @property
    def num_tokens(self) -> int:
        """Tokens of each of its steps (one per sequence)."""
        return self.num_seqs

    @property
    def is_empty(self) -> bool:
        return False


class DecodeBatch:
    """Decoding requests stepped together.

    Invariants: a request is in ``members`` iff ``request.in_batch``; it is in exactly one bucket,
    ``off_c % block_size``; ``sum_off_c`` is the sum of members' ``off_c``; every member has a live
    heap entry ``(max_tokens - off_o, join_seq, request_id)`` (stale entries of removed members are
    skipped).
    """

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.g = 0
        self.members: dict[int, Request] = {}
        self.buckets: list[dict[int, Request]] = [{} for _ in range(block_size)]
        self.sum_off_c = 0
        self._joins = 0
        self._finish_heap: list[tuple[int, int, int]] = []
        self.fresh: list[Request] = []  # joined since the last batch step (their own last-token time)
        self.last_step_end = 0.0        # end time of the last step that decoded this batch
        # (arrival_time, request_id) of the latest-arriving request that joined since the batch was
        # last empty: at least the latest member's (v0 chunked prefill lets the batch lead a step
        # only when every other running request arrived after it)
        self.max_arrival: tuple[float, int] = (float("-inf"), -1)

    @property
    def size(self) -> int:
        return len(self.members)

    def add(self, request: Request) -> None:
        g = self.g
        request.in_batch = True
        request.off_c = request.num_computed_tokens - g
        request.off_o = request.num_output_tokens - g
        rid = request.request_id
        self.members[rid] = request
        self.buckets[request.off_c % self.block_size][rid] = request
        self.sum_off_c += request.off_c
        self._joins += 1
        request.join_seq = self._joins
        heapq.heappush(self._finish_heap, (request.max_tokens - request.off_o, self._joins, rid))
        self.fresh.append(request)
        key = (request.arrival_time, rid)
        if key > self.max_arrival:
            self.max_arrival = key

    def sync(self, request: Request) -> None:
        """Write the member's true counters into its fields (it stays a member)."""
        request.num_computed_tokens = request.off_c + self.g
        request.num_output_tokens = request.off_o + self.g

    def remove(self, request: Request) -> None:
        """Bring the request's fields up to date and take it out of the batch."""
        self.sync(request)
        rid = request.request_id
        del self.members[rid]
        del self.buckets[request.off_c % self.block_size][rid]
        self.sum_off_c -= request.off_c
        request.in_batch = False
        if request in self.fresh:
            self.fresh.remove(request)
        else:
            request.last_token_time = self.last_step_end
        if not self.members:  # every heap entry is stale now
            self._finish_heap.clear()
            self.max_arrival = (float("-inf"), -1)

    def needing_blocks(self) -> dict[int, Request]:
        """Members whose blocks are full: each needs one more block in the coming step."""
        return self.buckets[-self.g % self.block_size]

    def context_sum(self) -> int:
        """Tokens the batch attends to this step: each member's computed tokens plus the new one."""
        return self.sum_off_c + len(self.members) * (self.g + 1)

    def advance(self, now: float, itl) -> list[Request]:
        """One decode step ended at ``now``: every member gains a token; return those now done.

        Inter-token latencies go to ``itl``: members that decoded in the previous batch step all
        waited ``now - last_step_end``; members that joined since wait from their own last token.
        """
        n_fresh = len(self.fresh)
        if len(self.members) > n_fresh:
            itl.add(now - self.last_step_end, len(self.members) - n_fresh)
        for request in self.fresh:
            itl.add(now - request.last_token_time, 1)
        self.fresh = []
        self.last_step_end = now
        self.g += 1
        g, heap, members = self.g, self._finish_heap, self.members
        done = []
        while heap and heap[0][0] <= g:
            _, join_seq, rid = heapq.heappop(heap)
            member = members.get(rid)
            if member is not None and member.join_seq == join_seq:
                done.append(member)
        return done

    def advance_run(self, ends: list[float], itl) -> None:
        """``len(ends)`` decode steps ending at ``ends`` (none finishing a member): as many
        :meth:`advance` calls, the gaps recorded in one go."""
        size, fresh = len(self.members), self.fresh
        if size > len(fresh):
            itl.add(ends[0] - self.last_step_end, size - len(fresh))
        for request in fresh:
            itl.add(ends[0] - request.last_token_time, 1)
        itl.add_steps(ends, size)
        self.fresh = []
        self.g += len(ends)
        self.last_step_end = ends[-1]

    def steps_to_next_finish(self) -> int:
        """Batch steps until the first member finishes (drops stale heap entries on the way)."""
        heap, members = self._finish_heap, self.members
        while heap:
            fin, join_seq, rid = heap[0]
            request = members.get(rid)
            if request is not None and request.join_seq == join_seq:
                return fin - self.g
            heapq.heappop(heap)
        return 1 << 62
