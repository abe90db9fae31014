"""Uncertainty of a prediction: independent replications (seeds) and the profile's coefficients.

Two sources, kept apart because they behave differently:

* **workload** (aleatory): the same replica on another sample of the traffic. Replications with
  independent seeds are i.i.d., so the seed mean of a metric has the Student-t interval
  ``mean +- t_{R-1} * sd / sqrt(R)`` (:func:`t_interval`); it shrinks as seeds are added.
* **profile** (epistemic): the fitted coefficients are known only to their ``stderr``. A
  parametric bootstrap (:func:`perturb_profile`) draws every coefficient that has a stderr from
  ``Normal(value, stderr)`` (independently: the profiles carry no covariances), truncated to its
  valid range (efficiencies in [0.01, 1.5], times and bytes >= 0), and re-simulates. The spread of
  the metric over draws does *not* shrink with more seeds: the true coefficients are one fixed
  unknown, so its interval is ``+- t_{M-1} * sd(draws)`` over ``M`` draws.

:func:`combine` joins them into one interval, ``mean +- sqrt(w^2 + p^2)`` (``w``, ``p`` the two
half widths), and states the share of the variance each contributes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from .profile import MemoryCoefficients, PowerCoefficients, Profile, StepCoefficients

PROFILE_STREAM = 7919  # spawn key of the profile-draw stream, apart from the workload's streams
EFFICIENCY_BOUNDS = (0.01, 1.5)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi) of the two-sided Student-t interval of the mean of i.i.d. ``values``;
    (v, v, v) for one value (no spread can be estimated)."""
    from scipy import stats
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half


def profile_rng(seed: int, draw: int) -> np.random.Generator:
    """The generator of profile draw ``draw`` under ``seed`` (deterministic, independent of the
    workload streams)."""
    return np.random.default_rng(np.random.SeedSequence([seed, PROFILE_STREAM, draw]))


def _draw(section: Any, uncertainty: dict[str, float], rng: np.random.Generator) -> Any:
    changes = {}
    for f in fields(section):
        se = uncertainty.get(f.name)
        if not se:
            continue
        value = getattr(section, f.name) + se * rng.standard_normal()
        if f.name.startswith("eff_"):
            value = min(max(value, EFFICIENCY_BOUNDS[0]), EFFICIENCY_BOUNDS[1])
        else:
            value = max(value, 0.0)
        changes[f.name] = value
    return replace(section, **changes)


def perturb_profile(profile: Profile, rng: np.random.Generator) -> Profile:
    """One parametric-bootstrap draw of ``profile``: every coefficient with a stderr redrawn
    (in field order, so a draw is reproducible from ``rng``)."""
    u = profile.uncertainty
    step = _draw(profile.step, u, rng)
    memory = _draw(profile.memory, u, rng)
    power = _draw(profile.power, u, rng)
    assert isinstance(step, StepCoefficients) and isinstance(memory, MemoryCoefficients)
    assert isinstance(power, PowerCoefficients)
    return replace(profile, step=step, memory=memory, power=power, name=f"{profile.name}*")


def uncertain_terms(profile: Profile) -> dict[str, float]:
    """The coefficients a bootstrap draw varies, with their stderr."""
    return {k: v for k, v in profile.uncertainty.items() if v}


@dataclass(frozen=True)
class Interval:
    """A prediction with its interval and where the uncertainty comes from.

    ``workload_share`` + ``profile_share`` = 1 when both were measured (``nan`` otherwise)."""

    value: float
    lo: float
    hi: float
    workload_half: float
    profile_half: float
    confidence: float

    @property
    def workload_share(self) -> float:
        total = self.workload_half ** 2 + self.profile_half ** 2
        return self.workload_half ** 2 / total if total > 0 else math.nan

    @property
    def profile_share(self) -> float:
        share = self.workload_share
        return 1 - share if math.isfinite(share) else math.nan

    def to_dict(self) -> dict:
        return {"value": self.value, "ci": [self.lo, self.hi], "confidence": self.confidence,
                "workload_share": self.workload_share, "profile_share": self.profile_share}


def combine(seed_values: Sequence[float], draw_values: Sequence[float] = (), confidence: float = 0.95,
            center: float | None = None, floor: float | None = None) -> Interval:
    """One interval from the seed replications (nominal profile) and the profile draws (one seed).

    ``value`` is the seed mean (or ``center``); the workload half width is the t half width of the
    mean; the profile half width is ``t_{M-1} * sd(draws)`` over the ``M`` draws: under the
    parametric bootstrap the prediction at the true coefficients differs from the nominal one by
    a normal error whose sd the draws estimate, so the ratio is Student-t with ``M - 1`` degrees
    of freedom (a normal quantile would under-cover with few draws).  ``floor`` clips the lower
    end (0 for latencies and rates, which cannot be negative)."""
    from scipy import stats
    mean, lo, hi = t_interval(seed_values, confidence)
    w = (hi - lo) / 2 if math.isfinite(hi) else math.nan
    d = np.asarray([v for v in draw_values if v is not None and math.isfinite(v)], dtype=float)
    p = float(stats.t.ppf(0.5 + confidence / 2, d.size - 1)) * float(d.std(ddof=1)) if d.size >= 2 else 0.0
    value = mean if center is None else center
    half = math.sqrt((w if math.isfinite(w) else 0.0) ** 2 + p ** 2)
    lo = value - half if floor is None else max(value - half, floor)
    return Interval(value, lo, value + half, w, p, confidence)


NOT_REPLICATED = ("seed", "kv_capacity_tokens", "num_gpu_blocks")


def replicate_summary(summaries: Sequence[dict], confidence: float = 0.95,
                      draws: Sequence[dict] = ()) -> dict:
    """The seed mean of every numeric key of ``summaries`` with ``<key>_ci: [lo, hi]`` beside it
    (from :func:`combine`; ``draws`` are summaries of profile draws), plus the seeds and the
    variance shares of the TTFT/TPOT percentiles."""
    out: dict = {}
    for key, first in summaries[0].items():
        if not isinstance(first, (int, float)) or isinstance(first, bool):
            continue
        values = [s[key] for s in summaries]
        if key in NOT_REPLICATED:
            out[key] = first
            continue
        iv = combine(values, [d[key] for d in draws], confidence)
        out[key] = iv.value
        out[f"{key}_ci"] = [iv.lo, iv.hi]
        if key in ("p99_ttft_ms", "p99_tpot_ms", "request_throughput", "output_throughput") and draws:
            out[f"{key}_uncertainty_share"] = {"workload": iv.workload_share, "profile": iv.profile_share}
    out["seeds"] = [s.get("seed") for s in summaries]
    out["num_profile_draws"] = len(draws)
    out["confidence"] = confidence
    return out
