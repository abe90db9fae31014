"""The API server in front of the engine: a burst reaches the scheduler only once it is ingested.

vLLM's OpenAI server parses each request and tokenises its prompt on its event loop before the
engine's loop gets the request.  While requests keep coming the loop stays busy with them, and the
engine starts its next step only when the API server has caught up.  The Lambda bursts show this
plainly: the *earliest* first token of a burst of N requests comes after about N x 2-5 ms,
whatever the model and TP (September, 8B and 70B, TP 1-8: 55 ms at N=10, 0.8-1.0 s at N=320;
August likewise), and at N=10 the requests of one prefill share their first-token time to a
millisecond.

Modelled as one server with a fixed service time ``api_server_request_s`` per request that hands
requests over when its queue drains: requests arriving while it is busy extend its busy period,
and all requests of a busy period become visible to the scheduler at its end.  A burst of N
requests at t=0 is visible at ``N * api_server_request_s``; sparse arrivals each one service time
after they arrive.  (At N=10 vLLM 0.5.4 sometimes ran the first request alone before the rest,
which this does not reproduce.)  With ``api_server_request_s == 0`` (the default) it is not
inserted at all.

A request keeps its client send time as ``arrival_time`` (TTFT is measured from it, as the
client measures); only the time the engine first sees it moves.
"""
from __future__ import annotations

from collections import deque

from .request import Request


class ApiServerQueue:
    """Wraps a request source (``next_time``/``pop_until``/``on_finish``): requests are ingested in
    arrival order, ``service_s`` each, and handed over together when the server becomes idle."""

    def __init__(self, source, service_s: float) -> None:
        if service_s <= 0:
            raise ValueError(f"api_server_request_s must be > 0 to queue requests (got {service_s})")
        self.inner = source
        self.service_s = service_s
        self.ready: deque[tuple[float, Request]] = deque()
        self.free_at = 0.0
        self.has_prefix_hashes = getattr(source, "has_prefix_hashes", False)

    def __len__(self) -> int:
        return len(self.inner)

    def _next_busy_period(self) -> None:
        """Ingest the next busy period: its first arrival and every arrival before the server is done."""
        t = self.inner.next_time()
        if t is None:
            return
        finish = max(t, self.free_at)
        pending = deque(self.inner.pop_until(finish))
        batch = []
        while pending:
            request = pending.popleft()
            finish = max(finish, request.arrival_time) + self.service_s
            batch.append(request)
            if not pending:
                pending.extend(self.inner.pop_until(finish))
        self.free_at = finish
        self.ready.extend((finish, r) for r in batch)

    def next_time(self) -> float | None:
        if not self.ready:
            self._next_busy_period()
        return self.ready[0][0] if self.ready else None

    def pop_until(self, now: float) -> list[Request]:
        if not self.ready:
            self._next_busy_period()
        out = []
        while self.ready and self.ready[0][0] <= now:
            out.append(self.ready.popleft()[1])
        return out

    def on_finish(self, request: Request, now: float) -> None:
        self.inner.on_finish(request, now)
