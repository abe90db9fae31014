"""What a simulated run records, in the schemas a measured run uses.

* per-request records (:class:`RequestRecords`): arrival, first scheduled, first token, finish,
  input/output tokens, preemptions, cached tokens — numpy columns, so a million requests stay
  small (token-by-token times are not kept; their distribution is, below);
* inter-token latencies (:class:`InterTokenLatencies`): every gap between two tokens of one
  request, kept as (value, count) pairs because a decode step gives the same gap to the whole
  batch — exact percentiles at a fraction of the memory;
* time series (:class:`TimeSeries`) sampled every ``interval_s`` of simulated time under vLLM's
  Prometheus names;
* :func:`summarize`: the keys of ``vllm bench serve --save-result`` plus servesim's own.
"""
from __future__ import annotations

import math
from array import array

import numpy as np
import pandas as pd

from .request import Request, RequestStatus

# The outcome column's codes (``RequestRecords.status``; names in ``to_frame``): 0 is unfinished.
STATUS_CODES = {RequestStatus.FINISHED: 1, RequestStatus.FINISHED_REJECTED: 2, RequestStatus.FINISHED_ABORTED: 3}


def weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The q-th percentile (0..100) of values repeated ``weights`` times, with numpy's default
    linear interpolation between order statistics (what ``np.percentile`` gives on the expansion)."""
    if len(values) == 0 or weights.sum() == 0:
        return 0.0
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    n = cum[-1]
    pos = q / 100.0 * (n - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    v_lo = v[np.searchsorted(cum, lo + 1)]
    v_hi = v[np.searchsorted(cum, hi + 1)]
    return float(v_lo + (v_hi - v_lo) * (pos - lo))


class InterTokenLatencies:
    """Gaps between consecutive tokens of the same request, as (seconds, count) pairs."""

    def __init__(self) -> None:
        # array.array: 16 bytes a pair, so millions of decode steps stay small
        self._values = array("d")
        self._counts = array("q")

    def add(self, seconds: float, count: int) -> None:
        self._values.append(seconds)
        self._counts.append(count)

    def add_steps(self, ends: list[float], count: int) -> None:
        """Gaps between consecutive step ends, each occurring ``count`` times (bulk decode steps)."""
        values, counts = self._values, self._counts
        for j in range(1, len(ends)):
            values.append(ends[j] - ends[j - 1])
            counts.append(count)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.frombuffer(self._values, dtype=np.float64), np.frombuffer(self._counts, dtype=np.int64)


class NoLatencies(InterTokenLatencies):
    """Records nothing: for long-running live engines (``servesim serve``) whose memory must stay bounded."""

    def add(self, seconds: float, count: int) -> None:
        pass

    def add_steps(self, ends: list[float], count: int) -> None:
        pass


class RequestRecords:
    """One row per request of the workload, filled as requests finish."""

    COLUMNS = ("arrival_s", "first_scheduled_s", "first_token_s", "finish_s")
    INT_COLUMNS = ("input_tokens", "output_tokens", "num_preemptions", "num_cached_tokens")

    def __init__(self, n: int) -> None:
        self.n = n
        self.cols = {c: np.full(n, np.nan) for c in self.COLUMNS}
        self.cols.update({c: np.zeros(n, dtype=np.int64) for c in self.INT_COLUMNS})
        self.status = np.zeros(n, dtype=np.int8)  # 0 not arrived/unfinished, 1 finished, 2 rejected, 3 aborted

    def record(self, request: Request) -> None:
        """Record an ended request; its outcome is its status (finished, rejected or aborted)."""
        status = STATUS_CODES[request.status]
        i, c = request.request_id, self.cols
        c["arrival_s"][i] = request.arrival_time
        c["first_scheduled_s"][i] = request.first_scheduled_time if request.first_scheduled_time >= 0 else np.nan
        c["first_token_s"][i] = request.first_token_time if request.first_token_time >= 0 else np.nan
        c["finish_s"][i] = request.last_token_time if status == 1 else np.nan
        c["input_tokens"][i] = request.num_prompt_tokens
        c["output_tokens"][i] = request.num_output_tokens
        c["num_preemptions"][i] = request.num_preemptions
        c["num_cached_tokens"][i] = request.num_cached_tokens
        self.status[i] = status

    def to_frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.cols)
        df.insert(0, "request_id", np.arange(self.n))
        df["status"] = pd.Categorical.from_codes(self.status, ["unfinished", "finished", "rejected", "aborted"])
        return df


class TimeSeries:
    """Engine state sampled every ``interval_s`` simulated seconds, under vLLM's metric names.

    Samples sit on the grid ``k * interval_s``.  A stretch in which the state cannot change (an
    idle gap between arrivals, or one long step) that spans more than :attr:`MAX_RUN_SAMPLES`
    grid points is recorded by its first and last grid samples only, so a trace with a gap of
    1e7 s (or 1e300 s) costs two rows, not one per interval; ``time_s`` says where each row is.
    """

    NAMES = ("time_s", "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
             "vllm:num_preemptions_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total")
    MAX_RUN_SAMPLES = 10_000

    def __init__(self, interval_s: float) -> None:
        if not (interval_s > 0 and math.isfinite(interval_s)):
            raise ValueError(f"sample interval must be a finite number of seconds > 0 (got {interval_s})")
        self.interval_s = interval_s
        self.next_t = 0.0
        self._index = 0  # grid index of next_t
        self.rows: list[tuple] = []

    def _advance(self, index: int) -> None:
        self._index = index
        self.next_t = index * self.interval_s

    def sample_before(self, t: float, state: tuple) -> None:
        """Record ``state`` at every sample instant before ``t`` not yet sampled: the engine calls
        this just before the state changes at ``t`` (a step's end), so each sample sees the state
        left by the last step that ended at or before it, as a Prometheus scrape would."""
        if not self.next_t < t:
            return
        last = math.ceil(t / self.interval_s) - 1  # the last grid index strictly before t
        if last * self.interval_s >= t:
            last -= 1
        if last - self._index >= self.MAX_RUN_SAMPLES:
            self.rows.append((self.next_t, *state))
            self.rows.append((last * self.interval_s, *state))
            self._advance(last + 1)
        else:
            for _ in range(last - self._index + 2):  # bounded: float rounding can never loop forever
                if not self.next_t < t:
                    break
                self.rows.append((self.next_t, *state))
                self._advance(self._index + 1)
        if self.next_t < t:  # rounding at astronomic times: the next sample is at t, not before it
            self.next_t = t

    def sample_next(self, state: tuple) -> None:
        """Record ``state`` at the next sample instant."""
        self.rows.append((self.next_t, *state))
        self._advance(self._index + 1)

    def close(self, t: float, state: tuple) -> None:
        """Samples up to and including ``t``, the end of the run."""
        self.sample_before(t, state)
        if self.next_t == t:
            self.rows.append((t, *state))
            self._advance(self._index + 1)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(self.NAMES))


def latency_stats(prefix: str, values_ms: np.ndarray, weights: np.ndarray | None = None,
           percentiles: tuple[float, ...] = (99,)) -> dict[str, float]:
    """``mean_/median_/std_/p99_<prefix>_ms`` of (optionally weighted) values in ms."""
    if weights is None:
        weights = np.ones(len(values_ms), dtype=np.int64)
    n = weights.sum()
    if n == 0:
        out = {f"mean_{prefix}_ms": 0.0, f"median_{prefix}_ms": 0.0, f"std_{prefix}_ms": 0.0}
        out.update({f"p{q:g}_{prefix}_ms": 0.0 for q in percentiles})
        return out
    mean = float((values_ms * weights).sum() / n)
    std = float(math.sqrt(max((weights * (values_ms - mean) ** 2).sum() / n, 0.0)))
    out = {f"mean_{prefix}_ms": mean, f"median_{prefix}_ms": weighted_percentile(values_ms, weights, 50),
           f"std_{prefix}_ms": std}
    out.update({f"p{q:g}_{prefix}_ms": weighted_percentile(values_ms, weights, q) for q in percentiles})
    return out


def summarize(records: RequestRecords, itl: InterTokenLatencies, percentiles: tuple[float, ...] = (99,),
              first_counted: int = 0) -> dict:
    """Summary with the keys of ``vllm bench serve --save-result`` (latencies in ms).

    Requests with ids below ``first_counted`` (a client's warm-up) are left out of every key but
    the ITL ones (inter-token gaps are kept per step, not per request)."""
    c = records.cols
    done = records.status == 1
    if first_counted:
        done = done & (np.arange(records.n) >= first_counted)
        c = {k: np.where(np.arange(records.n) >= first_counted, v, np.nan) if v.dtype.kind == "f" else v
             for k, v in c.items()}
    arrival, first, finish = c["arrival_s"][done], c["first_token_s"][done], c["finish_s"][done]
    n_in, n_out = c["input_tokens"][done], c["output_tokens"][done]
    start = float(np.nanmin(c["arrival_s"])) if records.n and not np.all(np.isnan(c["arrival_s"])) else 0.0
    duration = float(finish.max() - start) if done.any() else 0.0
    completed = int(done.sum())
    total_in, total_out = int(n_in.sum()), int(n_out.sum())
    def rate(x: float) -> float:
        return x / duration if duration > 0 else 0.0
    summary: dict = {
        "duration": duration, "completed": completed,
        "failed": int((records.status[first_counted:] == 2).sum()),
        "total_input_tokens": total_in, "total_output_tokens": total_out,
        "request_throughput": rate(completed), "output_throughput": rate(total_out),
        "total_token_throughput": rate(total_in + total_out),
    }
    summary.update(latency_stats("ttft", (first - arrival) * 1e3, percentiles=percentiles))
    multi = n_out > 1
    tpot = (finish[multi] - first[multi]) / (n_out[multi] - 1) * 1e3
    summary.update(latency_stats("tpot", tpot, percentiles=percentiles))
    values, counts = itl.arrays()
    summary.update(latency_stats("itl", values * 1e3, counts, percentiles=percentiles))
    summary.update(latency_stats("e2el", (finish - arrival) * 1e3, percentiles=percentiles))
    return summary
