"""Region rules: equilibrium, saturation, break-even, maximum-profit and SLO points of a curve.

Pure functions of a curve DataFrame (one row per demand point and seed; ``docs/scenarios.md``
"Curve").  Each rule works on one curve ``(d, y)`` sorted by demand; :func:`find_regions` applies it
to the seed-mean curve (the reported value) and to every seed's own curve (the uncertainty band).

Rules (constants from :class:`~.schema.RegionRules`; defaults in brackets):

* ``smooth(y)``: 3-point moving average (by index); at each end, the least-squares line through
  the 3 nearest points, evaluated at the end.
* **initial slope** ``s0``: mean of ``y_i / d_i`` over the first ``initial_points`` [3] points
  (throughput is 0 at zero demand, so these are chord slopes from the origin).
* **forward marginal slope** ``m_i``: least-squares slope of ``y`` over points ``i, i+1, i+2``
  (fewer at the end; ``m`` of the last point is that of the last two).
* **pressure** at ``i``: in point ``i`` or ``i+1``, the time-averaged waiting queue exceeds
  ``waiting_pressure`` [0.5 requests], or peak KV usage reaches ``kv_pressure`` [0.95], or a
  request was preempted.  Curves without these columns count as under pressure everywhere.
* **equilibrium** (end of region A): the first ``d_i`` with pressure and ``m_i < slope_ratio * s0``
  [0.5]; capped at the saturation point.
* **saturation** (end of region B, start of C): the smallest ``d_i`` whose smoothed throughput is
  at least ``(1 - saturation_tolerance) * max(smoothed throughput)`` [3%]: beyond it more demand
  buys less than 3% more throughput.  (``peak_demand``, reported beside it, is where the raw
  seed-mean curve peaks next to the smoothed maximum; on a sharp peak the two can differ by a
  grid step.)
* **break-even**: the first crossing of mean profit from < 0 to >= 0, linearly interpolated
  between the two points; the first point if profit is already >= 0 there.  **Upper
  break-even**: the first crossing back below 0 after the maximum-profit point.
* **maximum profit**: the smallest ``d_i`` whose smoothed profit is within
  ``saturation_tolerance * |max|`` of the maximum smoothed profit, among the stable points.
* **SLO limit**: the largest ``d_i`` such that every point up to and including it meets every
  SLO (the seed-mean of each SLO's percentile column at most its bound) and is stable.
* **stability** (open-loop axes, :mod:`.stability`): a demand is unstable when any seed's achieved
  request rate falls short of the offered rate, or its queue grows; the saturation point (end
  of region B) is capped at the first unstable demand, since beyond it the replica cannot keep up.

A boundary reports ``value`` (rule on the seed-mean curve), ``seed_lo``/``seed_hi``/``seed_std``
(the rule on each seed's curve) and ``grid_lo``, the previous grid point: the sweep only locates a
grid boundary to within ``(grid_lo, value]``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from .schema import SLO, RegionRules

PRESSURE_COLUMNS = ("mean_num_waiting", "peak_kv_usage", "num_preemptions")


# ------------------------------------------------------------------------ rules on one curve


def smooth(y: np.ndarray) -> np.ndarray:
    """3-point moving average; each end takes the least-squares line through its 3 nearest points
    (``(5*y0 + 2*y1 - y2) / 6``), so a straight line is left unchanged, ends included."""
    y = np.asarray(y, dtype=float)
    if y.size < 3:
        return y.copy()
    out = np.empty_like(y)
    out[1:-1] = (y[:-2] + y[1:-1] + y[2:]) / 3
    out[0] = (5 * y[0] + 2 * y[1] - y[2]) / 6
    out[-1] = (5 * y[-1] + 2 * y[-2] - y[-3]) / 6
    return out


def initial_slope(d: np.ndarray, y: np.ndarray, k: int) -> float:
    k = max(1, min(k, d.size))
    return float(np.mean(y[:k] / d[:k]))


def forward_slopes(d: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope over points ``i .. i+2`` (the last point reuses the last pair)."""
    n = d.size
    out = np.full(n, np.nan)
    for i in range(n):
        lo = min(i, max(n - 2, 0))
        dd, yy = d[lo:lo + 3], y[lo:lo + 3]
        if dd.size >= 2 and np.ptp(dd) > 0:
            out[i] = np.polyfit(dd, yy, 1)[0]
    return out


def pressure_flags(frame: pd.DataFrame, rules: RegionRules) -> np.ndarray:
    """Pressure at each point of a (seed-mean or one-seed) curve frame, see the module docstring."""
    n = len(frame)
    if not any(c in frame for c in PRESSURE_COLUMNS):
        return np.ones(n, dtype=bool)
    here = np.zeros(n, dtype=bool)
    if "mean_num_waiting" in frame:
        here |= frame["mean_num_waiting"].fillna(0).to_numpy() > rules.waiting_pressure
    if "peak_kv_usage" in frame:
        here |= frame["peak_kv_usage"].fillna(0).to_numpy() >= rules.kv_pressure
    if "num_preemptions" in frame:
        here |= frame["num_preemptions"].fillna(0).to_numpy() > 0
    nxt = np.concatenate((here[1:], here[-1:])) if n else here
    return here | nxt


def saturation_index(y: np.ndarray, tolerance: float) -> int | None:
    ys = smooth(y)
    if not np.isfinite(ys).any():
        return None
    peak = np.nanmax(ys)
    return int(np.flatnonzero(ys >= (1 - tolerance) * peak)[0])


def peak_demand(d: np.ndarray, y: np.ndarray) -> float:
    """Where the raw curve peaks, searched next to the smoothed curve's maximum (for information)."""
    i = int(np.nanargmax(smooth(y)))
    lo, hi = max(i - 1, 0), min(i + 2, y.size)
    return float(d[lo + int(np.nanargmax(y[lo:hi]))])


def equilibrium_index(d: np.ndarray, y: np.ndarray, pressure: np.ndarray, rules: RegionRules) -> int | None:
    s0 = initial_slope(d, y, rules.initial_points)
    slopes = forward_slopes(d, y)
    hits = np.flatnonzero(pressure & (slopes < rules.slope_ratio * s0))
    sat = saturation_index(y, rules.saturation_tolerance)
    if hits.size == 0:
        return None
    return int(min(hits[0], sat)) if sat is not None else int(hits[0])


def break_even(d: np.ndarray, profit: np.ndarray) -> tuple[float | None, float | None]:
    """(lower, upper) demands where profit crosses zero, interpolated (None where absent)."""
    ok = np.isfinite(profit)
    d, p = d[ok], profit[ok]
    if p.size == 0 or (p < 0).all():
        return None, None
    i = int(np.flatnonzero(p >= 0)[0])
    lower = float(d[0]) if i == 0 else float(d[i - 1] + (d[i] - d[i - 1]) * (-p[i - 1]) / (p[i] - p[i - 1]))
    best = int(np.nanargmax(p))
    below = np.flatnonzero(p[best:] < 0)
    upper = None
    if below.size:
        j = best + int(below[0])
        upper = float(d[j - 1] + (d[j] - d[j - 1]) * p[j - 1] / (p[j - 1] - p[j]))
    return lower, upper


def max_profit_index(profit: np.ndarray, tolerance: float) -> int | None:
    ps = smooth(profit)
    if not np.isfinite(ps).any():
        return None
    peak = np.nanmax(ps)
    return int(np.flatnonzero(ps >= peak - tolerance * abs(peak))[0])


def slo_limit_index(frame: pd.DataFrame, slos: Sequence[SLO]) -> tuple[int | None, str]:
    """Index of the largest demand meeting every SLO at it and below, and the SLO that binds."""
    n = len(frame)
    ok = np.ones(n, dtype=bool)
    first_bad: dict[int, str] = {}
    for slo in slos:
        if slo.column not in frame:
            raise ValueError(f"SLO {slo} needs column {slo.column!r}, absent from the curve")
        meets = frame[slo.column].to_numpy(dtype=float) <= slo.max_ms
        bad = np.flatnonzero(~meets)
        if bad.size:
            first_bad.setdefault(int(bad[0]), str(slo))
        ok &= meets
    if "stable_fraction" in frame:  # an unstable point meets no SLO: its percentiles grow with the run
        stable = frame["stable_fraction"].to_numpy(dtype=float) >= 1
        bad = np.flatnonzero(~stable)
        if bad.size:
            first_bad.setdefault(int(bad[0]), "stability (achieved rate < offered)")
        ok &= stable
    bad = np.flatnonzero(~ok)
    if bad.size == 0:
        return n - 1, ""
    binding = first_bad.get(int(bad[0]), "")
    return (int(bad[0]) - 1 if bad[0] > 0 else None), binding


# ------------------------------------------------------------------------ seeds and bands


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


@dataclass(frozen=True)
class Boundary:
    """A region boundary with its uncertainty (see the module docstring); ``value`` None = not found."""

    name: str
    value: float | None
    seed_lo: float | None = None
    seed_hi: float | None = None
    seed_std: float | None = None
    grid_lo: float | None = None
    n_found: int = 0
    n_seeds: int = 0
    note: str = ""

    def describe(self, unit: str = "") -> str:
        if self.value is None:
            return f"not found ({self.note})" if self.note else "not found"
        text = f"{_num(self.value)}{unit}"
        if self.seed_lo is not None and self.seed_hi is not None and self.n_seeds > 1 and self.seed_hi != self.seed_lo:
            text += f" (seeds {_num(self.seed_lo)}-{_num(self.seed_hi)})"
        if self.grid_lo is not None:
            text += f", grid ({_num(self.grid_lo)}, {_num(self.value)}]"
        return text + (f"; {self.note}" if self.note else "")


@dataclass
class Regions:
    """Every boundary of one variant's curve, plus the quantities the rules used."""

    variant: str
    equilibrium: Boundary
    saturation: Boundary
    break_even: Boundary
    break_even_upper: Boundary
    max_profit: Boundary
    slo_limit: Boundary
    initial_slope: float
    peak_throughput: float
    peak_demand: float = math.nan
    binding_slo: str = ""
    notes: list[str] = field(default_factory=list)

    def boundaries(self) -> list[Boundary]:
        return [self.equilibrium, self.saturation, self.break_even, self.break_even_upper, self.max_profit,
                self.slo_limit]

    def to_dict(self) -> dict:
        return asdict(self)


def mean_curve(curve: pd.DataFrame) -> pd.DataFrame:
    """Numeric columns averaged over seeds, one row per demand, ascending; ``stable_fraction`` is
    the share of a demand's seeds that kept up with their offered rate (:mod:`.stability`)."""
    numeric = curve.select_dtypes("number").drop(columns=["seed"], errors="ignore")
    if "stable" in curve:
        numeric = numeric.assign(stable_fraction=curve["stable"].fillna(True).astype(float))
    return numeric.groupby("demand", as_index=False).mean().sort_values("demand").reset_index(drop=True)


def first_unstable(frame: pd.DataFrame) -> float | None:
    """The smallest demand of a (seed-mean or one-seed) curve at which some seed fell behind its
    offered rate; None when every point kept up (or the curve has no stability columns)."""
    if "stable_fraction" not in frame:
        return None
    bad = frame.loc[frame["stable_fraction"].to_numpy(float) < 1, "demand"]
    return float(bad.min()) if len(bad) else None


def _grid_lo(d: np.ndarray, value: float | None) -> float | None:
    if value is None:
        return None
    below = d[d < value]
    return float(below.max()) if below.size else None


def _boundary(name: str, rule: Callable[[pd.DataFrame], float | None], mean: pd.DataFrame,
              per_seed: list[pd.DataFrame], grid: bool = True, note: str = "") -> Boundary:
    value = rule(mean)
    found = [v for v in (rule(f) for f in per_seed) if v is not None]
    d = mean["demand"].to_numpy(dtype=float)
    return Boundary(name, value, min(found) if found else None, max(found) if found else None,
                    float(np.std(found)) if found else None, _grid_lo(d, value) if grid else None,
                    len(found), len(per_seed), note if value is None else "")


def find_regions(curve: pd.DataFrame, rules: RegionRules | None = None, slos: Sequence[SLO] = (),
                 variant: str = "", demand_axis: bool = True) -> Regions:
    """All boundaries of one variant's curve (rows with a non-empty ``error`` are left out)."""
    rules = rules or RegionRules()
    notes: list[str] = []
    if "error" in curve:
        bad = curve["error"].fillna("").astype(str) != ""
        if bad.any():
            notes.append(f"{int(bad.sum())} point(s) failed and were left out: "
                         f"{curve.loc[bad, 'error'].iloc[0][:400]}")
        curve = curve[~bad]
    tcol = rules.throughput
    curve = curve[np.isfinite(curve[tcol].astype(float))] if tcol in curve else curve.iloc[0:0]
    if curve.empty:
        eq, sat, be, beu, mp, slo = (Boundary(n, None, note="no successful points") for n in
                                     ("equilibrium", "saturation", "break_even", "break_even_upper", "max_profit",
                                      "slo_limit"))
        return Regions(variant, eq, sat, be, beu, mp, slo, math.nan, math.nan, notes=notes or ["no successful points"])
    if not any(c in curve for c in PRESSURE_COLUMNS):
        notes.append("no queue/KV columns: the equilibrium rule uses the slope condition alone")
    mean = mean_curve(curve)
    seeds = sorted(curve["seed"].unique()) if "seed" in curve else [0]
    per_seed = [mean_curve(curve[curve["seed"] == s]) for s in seeds] if "seed" in curve else [mean]

    def at(frame: pd.DataFrame, i: int | None) -> float | None:
        return None if i is None else float(frame["demand"].iloc[i])

    def sat_rule(f: pd.DataFrame) -> float | None:
        value = at(f, saturation_index(f[tcol].to_numpy(float), rules.saturation_tolerance))
        unstable = first_unstable(f)  # on a rate axis region B ends where the replica stops keeping up
        return unstable if unstable is not None and (value is None or unstable < value) else value

    def eq_rule(f: pd.DataFrame) -> float | None:
        d, y = f["demand"].to_numpy(float), f[tcol].to_numpy(float)
        value = at(f, equilibrium_index(d, y, pressure_flags(f, rules), rules))
        sat = sat_rule(f)
        return min(value, sat) if value is not None and sat is not None else value

    has_profit = "profit_per_h" in curve and curve["profit_per_h"].notna().any()

    def be_rule(f: pd.DataFrame, upper: bool = False) -> float | None:
        if not has_profit:
            return None
        return break_even(f["demand"].to_numpy(float), f["profit_per_h"].to_numpy(float))[int(upper)]

    def mp_rule(f: pd.DataFrame) -> float | None:
        if not has_profit:
            return None
        unstable = first_unstable(f)  # profit a replica cannot sustain is no operating point
        f = f[f["demand"] < unstable].reset_index(drop=True) if unstable is not None else f
        return at(f, max_profit_index(f["profit_per_h"].to_numpy(float), rules.saturation_tolerance)) \
            if len(f) else None

    def slo_rule(f: pd.DataFrame) -> float | None:
        return at(f, slo_limit_index(f, slos)[0]) if slos else None

    no_econ = "no prices/costs in the scenario"
    first_d = float(mean["demand"].iloc[0])
    if demand_axis:
        equilibrium = _boundary("equilibrium", eq_rule, mean, per_seed, note="no pressure with a falling slope "
                                "in the sweep: region A extends over it")
        saturation = _boundary("saturation", sat_rule, mean, per_seed)
    else:
        equilibrium = Boundary("equilibrium", None, note="not a demand axis")
        saturation = Boundary("saturation", None, note="not a demand axis")
    break_even_b = _boundary("break_even", be_rule, mean, per_seed, grid=False,
                             note=no_econ if not has_profit else "never profitable in the sweep")
    if has_profit and break_even_b.value == first_d and float(mean["profit_per_h"].iloc[0]) >= 0:
        # profitable already at the first point: the crossing lies below the sweep, not at its first point
        break_even_b = Boundary(**{**asdict(break_even_b),
                                   "note": f"already profitable at the lowest demand swept ({first_d:g}); "
                                           "the break-even point lies at or below it"})
    upper = _boundary("break_even_upper", lambda f: be_rule(f, True), mean, per_seed, grid=False,
                      note=no_econ if not has_profit else "profit stays >= 0 up to the last point of the sweep")
    max_profit = _boundary("max_profit", mp_rule, mean, per_seed, note=no_econ)
    slo_note = "no SLOs in the scenario" if not slos else "SLOs violated at the lowest demand"
    slo_limit = _boundary("slo_limit", slo_rule, mean, per_seed, note=slo_note)
    last = float(mean["demand"].iloc[-1])
    unstable = first_unstable(mean)
    if unstable is not None:
        notes.append(f"from {unstable:g} on, at least one seed's achieved request rate falls short of the offered "
                     "rate (or its queue grows): those points are unstable, region B ends there, and their "
                     "latencies only say the queue grew over the run")
    if saturation.value is not None and saturation.value == last and len(mean) > 1:
        notes.append(f"the saturation point is the last point of the sweep ({last:g}): throughput was still "
                     "rising by more than the tolerance, so the peak may lie beyond; extend the sweep")
    binding = slo_limit_index(mean, slos)[1] if slos else ""
    if slo_limit.value is not None and slo_limit.value == float(mean["demand"].iloc[-1]):
        slo_limit = Boundary(**{**asdict(slo_limit), "note": "SLOs met at every point of the sweep"})
    y, d = mean[tcol].to_numpy(float), mean["demand"].to_numpy(float)
    return Regions(variant, equilibrium, saturation, break_even_b, upper, max_profit, slo_limit,
                   initial_slope(d, y, rules.initial_points), float(np.nanmax(y)), peak_demand(d, y), binding,
                   notes)


def regions_frame(results: Sequence[Regions]) -> pd.DataFrame:
    """One row per variant and boundary, for ``regions.csv``."""
    rows = []
    for r in results:
        for b in r.boundaries():
            rows.append({"variant": r.variant, **asdict(b)})
    return pd.DataFrame(rows)
