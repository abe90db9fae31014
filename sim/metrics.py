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
import operator
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice

import numpy as np
import pandas as pd

from .request import Request, RequestStatus

# The outcome column's codes (``RequestRecords.status``; 0 is unfinished, names in ``STATUS_NAMES``
# below), keyed by the request's final status.
OUTCOME_CODES = {RequestStatus.FINISHED: 1, RequestStatus.FINISHED_REJECTED: 2, RequestStatus.FINISHED_ABORTED: 3}


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
        if len(ends) < 2:
            return
        # The same subtractions as a per-step loop (bit-identical gaps), run by C iterators.
        self._values.extend(map(operator.sub, islice(ends, 1, None), ends))
        self._counts.extend(array("q", (count,)) * (len(ends) - 1))

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
        outcome = request.status  # compared by identity: an Enum's __hash__ is a Python call
        status = (1 if outcome is RequestStatus.FINISHED else 2 if outcome is RequestStatus.FINISHED_REJECTED
                  else 3 if outcome is RequestStatus.FINISHED_ABORTED else OUTCOME_CODES[outcome])
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


# ------------------------------------------------------------------------------ the one summary
#
# Every summary in servesim — a simulated run, a run of ``servesim serve`` recorded by
# ``servesim measure``, a measured sweep folder, a ``vllm bench serve`` result — is
# :func:`summarize` over :class:`RequestColumns`, so simulation and measurement compare key by key.
# The definitions are vLLM 0.27's ``vllm/benchmarks/serve.py:calculate_metrics``.

STATUS_NAMES = ("unfinished", "finished", "rejected", "aborted")
UNFINISHED, FINISHED, REJECTED, ABORTED = range(4)
# A measured request that ended without a complete response (measured sweep folders call it
# "failed") counts like an aborted one: as vLLM's ``failed``.
STATUS_CODES = {**{name: code for code, name in enumerate(STATUS_NAMES)}, "failed": ABORTED}
GOODPUT_METRICS = ("ttft", "tpot", "e2el")


@dataclass(frozen=True)
class RequestColumns:
    """The per-request columns a summary is computed from: ``requests.parquet``'s schema
    (docs/outputs.md) less the columns no summary reads.

    Times are seconds on one clock (any origin); ``status`` holds codes into
    :data:`STATUS_NAMES`.  Invariant: all columns have one length.  A finished request may have
    an unknown (NaN) ``first_token_s`` or ``finish_s`` when its source did not record it (a
    ``vllm bench serve`` file without ``itls``): the metrics that need it are then left out."""

    arrival_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    status: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.status)
        for name in ("arrival_s", "first_token_s", "finish_s", "input_tokens", "output_tokens"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"request column {name} has {len(getattr(self, name))} rows, status has {n}")
        bad = self.status[(self.status < 0) | (self.status >= len(STATUS_NAMES))]
        if bad.size:
            raise ValueError(f"request status code {int(bad[0])} is not one of 0..{len(STATUS_NAMES) - 1} "
                             f"({', '.join(STATUS_NAMES)})")

    def __len__(self) -> int:
        return len(self.status)

    def tail(self, first: int) -> RequestColumns:
        """Rows ``first..``: the counted requests after a warm-up of ``first``."""
        return RequestColumns(self.arrival_s[first:], self.first_token_s[first:], self.finish_s[first:],
                              self.input_tokens[first:], self.output_tokens[first:], self.status[first:])

    @classmethod
    def from_records(cls, records: RequestRecords) -> RequestColumns:
        c = records.cols
        return cls(c["arrival_s"], c["first_token_s"], c["finish_s"], c["input_tokens"], c["output_tokens"],
                   records.status)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> RequestColumns:
        """A frame in the per-request schema (``status`` as names: ``finished``, ``rejected``,
        ``aborted``, ``unfinished``, or ``failed``); raises ``ValueError`` naming what is wrong."""
        needed = ("arrival_s", "first_token_s", "finish_s", "input_tokens", "output_tokens", "status")
        missing = [c for c in needed if c not in frame]
        if missing:
            raise ValueError(f"per-request records lack column(s) {missing}; need {list(needed)}")
        codes = _status_codes(frame["status"])

        def column(name: str, dtype: type) -> np.ndarray:
            try:
                return frame[name].to_numpy(dtype=dtype, na_value=np.nan if dtype is float else 0)
            except (TypeError, ValueError):
                raise ValueError(f"per-request column {name} holds a value that is not a number") from None
        return cls(column("arrival_s", float), column("first_token_s", float), column("finish_s", float),
                   column("input_tokens", float).astype(np.int64), column("output_tokens", float).astype(np.int64),
                   codes)


def _status_codes(status: pd.Series) -> np.ndarray:
    """Status names as codes (a categorical column is mapped per category, not per row)."""
    if not isinstance(status.dtype, pd.CategoricalDtype):
        status = status.astype(str).astype("category")
    names = [str(c) for c in status.cat.categories]
    lookup = np.array([STATUS_CODES.get(name, -1) for name in names] + [-1], dtype=np.int8)
    codes = lookup[status.cat.codes.to_numpy()]  # code -1 (a missing status) reads the last entry
    if (codes < 0).any():
        bad = status[codes < 0].iloc[0]
        raise ValueError(f"per-request status {str(bad)!r} is not one of {sorted(STATUS_CODES)}")
    return codes


def itl_from_gaps(per_request_gaps_s) -> InterTokenLatencies:
    """Measured inter-token latencies: one list of gaps (s) per request, as ``vllm bench serve``
    records them (``itls``: time between consecutive streamed chunks)."""
    itl = InterTokenLatencies()
    for gaps in per_request_gaps_s:
        if gaps is not None and not isinstance(gaps, float):  # a request without recorded gaps: NaN / None
            itl._values.extend(float(g) for g in gaps)
    itl._counts.extend([1] * len(itl._values))
    return itl


def _weighted_percentiles(values: np.ndarray, weights: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Percentiles ``qs`` (0..100) of ``values`` repeated ``weights`` times, with one sort: the
    linear interpolation between order statistics that ``np.percentile`` gives on the expansion."""
    order = np.argsort(values)  # tie order is irrelevant: tied values are equal, so is any rank among them
    cum = weights[order].astype(np.int64, copy=False)
    np.cumsum(cum, out=cum)
    pos = qs / 100.0 * (cum[-1] - 1)
    lo, hi = np.floor(pos), np.ceil(pos)
    # Only the order statistics asked for are gathered (a sorted copy of ``values`` would be one
    # more array as long as the ITL pairs: a million-request run's peak memory is here).
    v_lo = values[order[np.searchsorted(cum, lo + 1)]]
    v_hi = values[order[np.searchsorted(cum, hi + 1)]]
    return v_lo + (v_hi - v_lo) * (pos - lo)


def latency_stats(prefix: str, values_ms: np.ndarray, weights: np.ndarray | None = None,
                  percentiles: tuple[float, ...] = (99,)) -> dict[str, float]:
    """``mean_/median_/std_/p<q>_<prefix>_ms`` of (optionally weighted) values in ms, as
    ``vllm bench serve`` computes them: ``np.mean``, ``np.median``, ``np.std`` (population, ddof
    0), ``np.percentile`` (linear); all 0 when there are none (vLLM's ``np.mean(x or 0)``).
    One sort (or one ``np.percentile`` call) per metric, whatever the number of percentiles."""
    values_ms = np.asarray(values_ms, dtype=np.float64)
    qs = np.array((50.0, *percentiles), dtype=np.float64)
    if weights is None:
        n = values_ms.size
        if n:
            mean = float(values_ms.mean())
            std = float(values_ms.std())
            points = np.percentile(values_ms, qs)
    else:
        n = int(weights.sum())
        if n:
            mean = float(np.dot(values_ms, weights) / n)
            dev = values_ms - mean
            np.multiply(dev, dev, out=dev)  # (values - mean) ** 2 without a second temporary
            std = float(math.sqrt(max(float(np.dot(weights, dev)) / n, 0.0)))
            del dev
            points = _weighted_percentiles(values_ms, weights, qs)
    if not n:
        mean = std = 0.0
        points = np.zeros(len(qs))
    out = {f"mean_{prefix}_ms": mean, f"median_{prefix}_ms": float(points[0]), f"std_{prefix}_ms": std}
    out.update({f"p{q:g}_{prefix}_ms": float(p) for q, p in zip(percentiles, points[1:])})
    return out


def _as_columns(requests: RequestColumns | RequestRecords | pd.DataFrame) -> RequestColumns:
    if isinstance(requests, RequestColumns):
        return requests
    if isinstance(requests, RequestRecords):
        return RequestColumns.from_records(requests)
    return RequestColumns.from_frame(requests)


def request_latencies_s(requests: RequestColumns | RequestRecords | pd.DataFrame) -> dict[str, np.ndarray]:
    """``ttft``, ``tpot`` and ``e2el`` (seconds) of every finished request, in row order: the
    per-request values a summary's statistics are taken over.  TPOT is ``(e2el - ttft) /
    (output_tokens - 1)``, and 0 for a single-token request (vLLM's goodput rule; the TPOT
    statistics leave such requests out); NaN where the records lack a time."""
    cols = _as_columns(requests)
    done = cols.status == FINISHED
    arrival, first, finish, n_out = cols.arrival_s[done], cols.first_token_s[done], cols.finish_s[done], \
        cols.output_tokens[done]
    return {"ttft": first - arrival, "tpot": np.where(n_out > 1, (finish - first) / np.maximum(n_out - 1, 1), 0.0),
            "e2el": finish - arrival}


def summarize(requests: RequestColumns | RequestRecords | pd.DataFrame, itl: InterTokenLatencies | None = None,
              percentiles: tuple[float, ...] = (99,), first_counted: int = 0,
              goodput_slos_ms: Mapping[str, float] | None = None, duration_s: float | None = None) -> dict:
    """The bench summary of a run (keys of ``vllm bench serve --save-result``; latencies in ms).

    * ``completed``: finished requests; ``failed``: rejected or aborted ones (vLLM: unsuccessful);
      token totals and every latency are over the finished requests only;
    * ``duration``: ``duration_s`` when given (a bench file's own wall clock), else first arrival
      (of any counted request) to last finish; throughputs are per second of it;
    * TTFT: first token - arrival; E2EL: finish - arrival; TPOT: ``(e2el - ttft) /
      (output_tokens - 1)`` over requests with more than one output token; ITL: every gap in
      ``itl`` (left out when ``itl`` is None: per-request records alone do not hold token times);
    * ``request_goodput`` (only with ``goodput_slos_ms``, keys among ttft/tpot/e2el): finished
      requests meeting every SLO (TPOT 0 for a single-token request), per second;
    * requests with index below ``first_counted`` (a warm-up) are left out of every key but ITL.

    A metric whose inputs the records lack for every finished request (no finish times) is left
    out rather than reported as 0."""
    cols = _as_columns(requests)
    if first_counted:
        cols = cols.tail(first_counted)
    done = cols.status == FINISHED
    first, finish = cols.first_token_s[done], cols.finish_s[done]
    n_in, n_out = cols.input_tokens[done], cols.output_tokens[done]
    completed = int(done.sum())
    has_first, has_finish = np.isfinite(first), np.isfinite(finish)
    duration = duration_s
    if duration is None and (has_finish.any() or not completed):
        arrived = cols.arrival_s[np.isfinite(cols.arrival_s)]
        duration = float(finish[has_finish].max() - arrived.min()) if completed else 0.0
    summary: dict = {} if duration is None else {"duration": float(duration)}
    total_in, total_out = int(n_in.sum()), int(n_out.sum())
    summary.update({"completed": completed, "failed": int(((cols.status == REJECTED) | (cols.status == ABORTED)).sum()),
                    "total_input_tokens": total_in, "total_output_tokens": total_out})
    if duration is not None:
        seconds = duration
        summary.update({key: count / seconds if seconds > 0 else 0.0 for key, count in (
            ("request_throughput", completed), ("output_throughput", total_out),
            ("total_token_throughput", total_in + total_out))})
    per_request = request_latencies_s(cols)
    ttft_s, tpot_s, e2el_s = per_request["ttft"], per_request["tpot"], per_request["e2el"]
    if goodput_slos_ms and duration is not None:
        summary["request_goodput"] = _goodput(goodput_slos_ms, per_request, duration)
    both = has_first & has_finish
    if has_first.any() or not completed:
        summary.update(latency_stats("ttft", ttft_s[has_first] * 1e3, percentiles=percentiles))
    if both.any() or not completed:
        summary.update(latency_stats("tpot", tpot_s[both & (n_out > 1)] * 1e3, percentiles=percentiles))
    if itl is not None:
        values, counts = itl.arrays()
        summary.update(latency_stats("itl", values * 1e3, counts, percentiles=percentiles))
    if has_finish.any() or not completed:
        summary.update(latency_stats("e2el", e2el_s[has_finish] * 1e3, percentiles=percentiles))
    return summary


def _goodput(slos_ms: Mapping[str, float], per_request_s: dict[str, np.ndarray], duration_s: float) -> float:
    unknown = sorted(set(slos_ms) - set(GOODPUT_METRICS))
    if unknown:
        raise ValueError(f"goodput SLO on {unknown[0]!r}: SLOs apply to {', '.join(GOODPUT_METRICS)}")
    good = np.ones(len(per_request_s["ttft"]), dtype=bool)
    for metric, slo_ms in slos_ms.items():
        good &= per_request_s[metric] <= slo_ms / 1e3  # NaN (not recorded) is never good
    return int(good.sum()) / duration_s if duration_s > 0 else 0.0
