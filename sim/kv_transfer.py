"""Moving a request's KV cache from a prefill replica to a decode replica (disaggregation).

The sequence, after a prefill replica computed a prompt of ``P`` tokens (as vLLM's P/D proxy does,
the prefill replica runs the request with ``max_tokens = 1``):

1. its KV blocks stay held on the prefill replica (not freed at its finish) until the transfer ends;
2. the decode router picks a decode replica; the request waits there, FIFO, until that replica
   has free blocks for ``P`` tokens, which are then allocated for it (``allocate_slots``) — the
   destination of an RDMA write must exist before the write;
3. the KV, ``P * kv_bytes_per_token`` bytes of the model at the KV dtype, moves over the link:
   ``latency_s + bytes / (bandwidth * min(tp_prefill, tp_decode))`` (each GPU of the TP group sends
   its slice over its own link), after the sender's and receiver's links finish earlier transfers;
   the prefill replica meanwhile runs its next steps (transfers overlap computation);
4. at the end the prefill blocks are freed and the request joins the decode replica's ``waiting``
   with ``num_computed_tokens = P - 1``: the decode replica recomputes the last prompt position
   to obtain its logits and emits the first token, so TTFT includes the transfer (vLLM's
   NixlConnector flow likewise produces the first token on the decode instance).

The hook this needs in the scheduler (``Scheduler._schedule_waiting``): a waiting request whose
``num_computed_tokens`` exceeds its local prefix-cache hits is admitted with those tokens already
computed and its blocks already allocated.  No other waiting request has computed tokens (new
requests start at 0; preemption resets to 0), so the hook changes nothing else.  A decode request
preempted later is recomputed from scratch on its decode replica, as in vLLM.
"""
from __future__ import annotations

from dataclasses import dataclass

from .gpus import LinkSpec
from .models import ModelSpec


def kv_transfer_bytes(model: ModelSpec, kv_dtype: str, num_tokens: int) -> float:
    """Bytes of KV cache of ``num_tokens`` tokens of ``model`` at ``kv_dtype`` (whole model, all
    layers and KV heads: what a TP group holds between all its GPUs, without replication)."""
    return num_tokens * model.kv_bytes_per_token(kv_dtype, 1)


def transfer_time_s(num_bytes: float, link: LinkSpec, num_links: int = 1) -> float:
    """Seconds to move ``num_bytes`` over ``num_links`` parallel links of type ``link``."""
    if num_links < 1:
        raise ValueError(f"num_links must be >= 1 (got {num_links})")
    return link.latency_s + num_bytes / (link.bandwidth_bytes_per_s * num_links)


@dataclass
class LinkSchedule:
    """When each replica's links are free: transfers from one sender (to one receiver) are FIFO.

    Invariant: ``busy_until[r]`` is the end of the last transfer replica ``r`` sends or receives.
    """

    busy_until: list[float]

    def book(self, now: float, sender: int, receiver: int, duration_s: float) -> tuple[float, float]:
        """Reserve both ends for ``duration_s`` from the earliest time both are free; (start, end)."""
        start = max(now, self.busy_until[sender], self.busy_until[receiver])
        end = start + duration_s
        self.busy_until[sender] = self.busy_until[receiver] = end
        return start, end


__all__ = ["LinkSchedule", "kv_transfer_bytes", "transfer_time_s"]
