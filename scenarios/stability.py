"""Is an open-loop point stable, and has its run lasted long enough to trust its percentiles?

Two rules a capacity answer must pass before its latencies mean anything (``docs/scenarios.md``,
"Stability and run length"):

* **stability** (:func:`stability_columns`): on the second half of the arrival span
  ``[t_mid, t_last]`` (the first half is the ramp-up from an empty system), the achieved request
  rate (completions in the window / its length) may fall short of the offered rate (arrivals in
  the window / its length) by at most ``tolerance`` (5%) plus ``noise``, and the number of
  requests in the system may grow by at most as much (least-squares slope of
  ``N(t) = arrived(t) - finished(t)`` over the window, over the offered rate).  A stable queue
  returns to its stationary size, so both are ~0 up to chance; an overloaded one (offered
  ``lambda`` above capacity ``mu``) shows both at ``1 - mu / lambda``.  ``noise`` is what chance
  allows: ``z`` (3) x sqrt(2) x the sd of ``N(t)`` around its trend, over the window's arrivals
  (the two ends of a stationary queue differ by about sqrt(2) sd); a queue that grows follows its
  trend closely, so its noise stays small.  A run whose window holds fewer than
  ``min_window_requests`` arrivals is not judged (``stable`` is reported true, ``stability_judged``
  false) because the counts are too small to tell growth from noise.
* **run length** (:class:`ConvergenceRule`, :func:`converged`): a run is long enough when its
  arrival span is at least ``service_multiple`` (20) times the longest request's service time
  (first scheduled to finish) and the confidence interval of every latency percentile the SLOs
  read has a half width within ``relative_half_width`` (10%) of the estimate.  The interval comes
  from *sectioning* (Asmussen & Glynn, *Stochastic Simulation*, 2007, III.5): the requests, in
  arrival order, are cut into ``sections`` (10) consecutive groups; the half width is
  ``t_{sections-1} * sd(section percentiles) / sqrt(sections)``, which accounts for the
  correlation between neighbouring requests that a binomial (i.i.d.) interval ignores.

Pure functions of arrays, so tests drive them with M/M/1 queues whose answers are known.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

DEFAULT_TOLERANCE = 0.05
MIN_WINDOW_REQUESTS = 50


@dataclass(frozen=True)
class StabilityRule:
    """Constants of the stability rule (see the module docstring)."""

    tolerance: float = DEFAULT_TOLERANCE
    min_window_requests: int = MIN_WINDOW_REQUESTS
    z: float = 3.0  # how many chance fluctuations of the queue's size are excused

    def __post_init__(self) -> None:
        if not 0 < self.tolerance < 1:
            raise ValueError(f"stability tolerance must be in (0, 1), got {self.tolerance}")
        if self.min_window_requests < 2:
            raise ValueError(f"min_window_requests must be >= 2, got {self.min_window_requests}")


def stability_columns(arrival_s: np.ndarray, finish_s: np.ndarray, rule: StabilityRule = StabilityRule()) -> dict:
    """``offered_rps, achieved_rps, rate_shortfall, queue_growth, stable, stability_judged`` of one
    open-loop run; ``finish_s`` is NaN for requests that never finished (rejected ones count as not
    served)."""
    arrival = np.sort(np.asarray(arrival_s, dtype=float))
    finish = np.asarray(finish_s, dtype=float)
    finish = np.sort(finish[np.isfinite(finish)])
    out = {"offered_rps": math.nan, "achieved_rps": math.nan, "rate_shortfall": math.nan,
           "queue_growth": math.nan, "stable": True, "stability_judged": False}
    if arrival.size < 2:
        return out
    t0, t1 = float(arrival[0]), float(arrival[-1])
    mid = t0 + (t1 - t0) / 2
    width = t1 - mid
    if width <= 0:  # a burst: no rate to keep up with
        return out
    arrived = int(np.searchsorted(arrival, t1, side="right") - np.searchsorted(arrival, mid, side="right"))
    done = int(np.searchsorted(finish, t1, side="right") - np.searchsorted(finish, mid, side="right"))
    offered, achieved = arrived / width, done / width
    grid = np.linspace(mid, t1, 64)
    in_system = (np.searchsorted(arrival, grid, side="right")
                 - np.searchsorted(finish, grid, side="right")).astype(float)
    fit = np.polyfit(grid, in_system, 1)
    slope = float(fit[0])
    # a stable queue's size at the window's two ends differs by chance: sqrt(2) x its sd around
    # the trend; allowing z of those (as a share of the window's arrivals) keeps short runs of a
    # well-served replica from being called unstable, while a growing queue (whose size follows
    # the trend closely) is not excused
    noise = rule.z * math.sqrt(2) * float(np.std(in_system - np.polyval(fit, grid))) / max(arrived, 1)
    shortfall = 1.0 - achieved / offered if offered > 0 else 0.0
    growth = slope / offered if offered > 0 else 0.0
    judged = arrived >= rule.min_window_requests
    limit = rule.tolerance + noise
    out.update(offered_rps=offered, achieved_rps=achieved, rate_shortfall=shortfall, queue_growth=growth,
               stability_noise=noise, stability_judged=judged,
               stable=bool(not judged or (shortfall <= limit and growth <= limit)))
    return out


def describe_instability(row: dict) -> str:
    """Why a row is unstable, in words (empty when it is stable)."""
    if row.get("stable", True) in (True, 1, 1.0) or (isinstance(row.get("stable"), float)
                                                      and math.isnan(row["stable"])):
        return ""
    return (f"unstable: achieved {row.get('achieved_rps', math.nan):.3g} of {row.get('offered_rps', math.nan):.3g} "
            f"req/s offered ({row.get('rate_shortfall', math.nan):.0%} short), queue growing "
            f"{row.get('queue_growth', math.nan):.0%} of the offered rate")


# ------------------------------------------------------------------------------------ run length


@dataclass(frozen=True)
class ConvergenceRule:
    """When a run is long enough (module docstring); the request count doubles until it is."""

    relative_half_width: float = 0.10
    confidence: float = 0.95
    service_multiple: float = 20.0
    sections: int = 10
    min_requests: int = 400
    max_requests: int = 12800

    def __post_init__(self) -> None:
        if not 0 < self.relative_half_width < 1:
            raise ValueError(f"relative_half_width must be in (0, 1), got {self.relative_half_width}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if self.service_multiple < 0 or self.sections < 3:
            raise ValueError("service_multiple must be >= 0 and sections >= 3")
        if not 1 <= self.min_requests <= self.max_requests:
            raise ValueError(f"need 1 <= min_requests <= max_requests, got {self.min_requests}, "
                             f"{self.max_requests}")


def t_quantile(confidence: float, dof: int, two_sided: bool = True) -> float:
    """Student-t quantile for a ``confidence`` interval (two-sided) or bound (one-sided)."""
    p = 0.5 + confidence / 2 if two_sided else confidence
    return float(stats.t.ppf(p, max(dof, 1)))


def sectioned_percentile(values: np.ndarray, q: float, sections: int = 10,
                         confidence: float = 0.95) -> tuple[float, float]:
    """(estimate, half width) of the ``q``-th percentile (``q`` 0: the mean) of ``values`` (in
    arrival order) by sectioning: the estimate from all values, the spread from ``sections``
    consecutive groups."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]

    def stat(x: np.ndarray) -> float:
        return float(np.mean(x)) if q == 0 else float(np.percentile(x, q))

    if values.size < sections * 2:
        return (stat(values) if values.size else math.nan), math.inf
    estimate = stat(values)
    parts = [stat(p) for p in np.array_split(values, sections)]
    half = t_quantile(confidence, sections - 1) * float(np.std(parts, ddof=1)) / math.sqrt(sections)
    return estimate, half


def converged(latencies_ms: dict[str, np.ndarray], percentiles: dict[str, float], arrival_span_s: float,
              longest_service_s: float, rule: ConvergenceRule) -> tuple[bool, dict[str, float], str]:
    """Whether a run satisfies ``rule``; the relative half width per metric; what is still lacking.

    ``latencies_ms`` maps a metric (``ttft``, ``tpot``, ``e2el``) to its per-request values in
    arrival order; ``percentiles`` maps the same metric to the percentile the SLO reads."""
    widths: dict[str, float] = {}
    lacking = []
    if arrival_span_s < rule.service_multiple * longest_service_s:
        lacking.append(f"arrival span {arrival_span_s:.0f} s < {rule.service_multiple:g} x the longest service "
                       f"time {longest_service_s:.1f} s")
    for metric, q in percentiles.items():
        est, half = sectioned_percentile(latencies_ms[metric], q, rule.sections, rule.confidence)
        widths[metric] = half / est if est > 0 else (0.0 if half == 0 else math.inf)
        if widths[metric] > rule.relative_half_width:
            lacking.append(f"{'mean' if q == 0 else f'p{q:g}'} {metric} CI +-{widths[metric]:.0%} > {rule.relative_half_width:.0%}")
    return not lacking, widths, "; ".join(lacking)
