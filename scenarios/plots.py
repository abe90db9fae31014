"""The report's figures, drawn with matplotlib's Agg backend and returned as PNG bytes.

Every function takes the curve (one row per variant, demand and seed, with economics columns) and
the regions, and returns :class:`Figure` records; :mod:`.report` embeds them as base64 in
``report.html`` and writes them to ``plots/`` for ``report.md``.  Seed spreads are drawn as bands
(min to max over seeds); region boundaries as vertical lines with their seed band shaded.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..sim.uncertainty import t_interval  # noqa: E402
from .regions import Boundary, Regions  # noqa: E402
from .schema import Axis, Scenario  # noqa: E402
from .sweep_dir import series_path  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
CURRENCY = "USD"  # prices and costs are read as US dollars (docs/scenarios.md, "Economics")
THROUGHPUT_LABELS = {"output_throughput": "output throughput (tok/s)",
                     "total_token_throughput": "total throughput (tok/s)",
                     "request_throughput": "request throughput (req/s)"}
REGION_SHADES = {"A": "#e6f4ea", "B": "#fff4d6", "C": "#fde2e1"}


@dataclass(frozen=True)
class Figure:
    name: str      # file name in plots/
    title: str
    caption: str
    png: bytes
    axis_labels: tuple[str, ...] = ()   # every axis label drawn, x first (the report lists them)
    clipped: tuple[str, ...] = ()       # labels that would not fit the canvas (empty after _png)


def _texts(fig) -> list:
    """The axis labels, tick labels and titles of ``fig`` (what must not be cut off)."""
    out = []
    for ax in fig.axes:
        out += [ax.xaxis.label, ax.yaxis.label, ax.title]
        out += ax.get_xticklabels() + ax.get_yticklabels()
    if fig._suptitle is not None:
        out.append(fig._suptitle)
    return [t for t in out if t.get_visible() and t.get_text()]


def overflow(fig) -> tuple[float, float, float, float, list[str]]:
    """How far (fractions of the figure) the texts reach beyond each edge, left/right/bottom/top,
    and the texts that do; the figure must have been drawn."""
    renderer = fig.canvas.get_renderer()
    w, h = fig.bbox.width, fig.bbox.height
    left = right = bottom = top = 0.0
    names = []
    for t in _texts(fig):
        bb = t.get_window_extent(renderer)
        over = (max(0.0, -bb.x0) / w, max(0.0, bb.x1 - w) / w, max(0.0, -bb.y0) / h, max(0.0, bb.y1 - h) / h)
        if any(o > 0 for o in over):
            names.append(t.get_text())
        left, right, bottom, top = max(left, over[0]), max(right, over[1]), max(bottom, over[2]), max(top, over[3])
    return left, right, bottom, top, names


def _png(fig) -> tuple[bytes, tuple[str, ...], tuple[str, ...]]:
    """PNG bytes, axis labels and (should any remain) clipped texts of ``fig``.

    Fixed margins first (tight_layout / bbox_inches="tight" draw twice, 2x the time); only when a
    label or tick label overflows an edge are the margins widened by the overflow and the figure
    drawn again."""
    buf = io.BytesIO()
    margins = dict(left=0.08, right=0.92, bottom=0.16, top=0.86)
    fig.subplots_adjust(wspace=0.38, **margins)
    fig.canvas.draw()
    left, right, bottom, top, names = overflow(fig)
    if names:
        fig.subplots_adjust(left=margins["left"] + left + 0.01, right=margins["right"] - right - 0.01,
                            bottom=margins["bottom"] + bottom + 0.01, top=margins["top"] - top - 0.01)
        fig.canvas.draw()
        names = overflow(fig)[4]
    labels = tuple(lab for ax in fig.axes for lab in (ax.get_xlabel(), ax.get_ylabel()) if lab)
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue(), labels, tuple(names)


def _figure(name: str, title: str, caption: str, fig) -> Figure:
    png, labels, clipped = _png(fig)
    return Figure(name, title, caption, png, labels, clipped)


def _stats(part: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seed mean per demand and its 95% confidence band (Student t over the seeds; the mean itself
    with one seed)."""
    g = part.groupby("demand")[column]
    mean = g.mean()
    bands = [t_interval(list(v.dropna()), 0.95) for _, v in g]
    lo = np.array([b[1] for b in bands], dtype=float)
    hi = np.array([b[2] for b in bands], dtype=float)
    return mean.index.to_numpy(float), mean.to_numpy(float), lo, hi


def _unstable_demands(part: pd.DataFrame) -> np.ndarray:
    if "stable" not in part:
        return np.array([])
    stable = part.groupby("demand")["stable"].apply(lambda s: bool(s.fillna(True).astype(bool).all()))
    return stable.index[~stable.to_numpy()].to_numpy(float)


def _line(ax, part: pd.DataFrame, column: str, color: str, label: str, log_x: bool) -> None:
    if column not in part or part[column].isna().all():
        return
    d, m, lo, hi = _stats(part, column)
    ax.plot(d, m, marker="o", ms=3, color=color, label=label)
    if (hi > lo).any():
        ax.fill_between(d, lo, hi, color=color, alpha=0.2, lw=0)
    bad = np.isin(d, _unstable_demands(part))
    if bad.any():
        labels = ax.get_legend_handles_labels()[1]
        ax.plot(d[bad], m[bad], ls="none", marker="x", ms=8, mew=2, color="red",
                label=None if "unstable (cannot keep up)" in labels else "unstable (cannot keep up)")
    if log_x:
        ax.set_xscale("log")


def _mark(ax, b: Boundary, color: str, style: str = "--") -> None:
    """A boundary: a vertical line at its value, its seed band hatched (so region shading shows)."""
    if b.value is None:
        return
    ax.axvline(b.value, color=color, ls=style, lw=1)
    lo = min(v for v in (b.seed_lo, b.value) if v is not None)
    hi = max(v for v in (b.seed_hi, b.value) if v is not None)
    if hi > lo:
        ax.axvspan(lo, hi, facecolor="none", edgecolor=color, hatch="///", lw=0, alpha=0.35)


def _ok(curve: pd.DataFrame) -> pd.DataFrame:
    if "error" in curve:
        curve = curve[curve["error"].fillna("") == ""]
    return curve


def _log_x(scenarios: list[Scenario]) -> bool:
    pts = [p for sc in scenarios for p in sc.sweep.points]
    return min(pts) > 0 and max(pts) / min(pts) >= 50


def metric_panels(curve: pd.DataFrame, scenarios: list[Scenario], regions: dict[str, Regions],
                  axis: Axis, tag: str) -> list[Figure]:
    """Throughput, latency, KV/queue, energy and (with economics) profit against the axis."""
    curve = _ok(curve)
    log_x = _log_x(scenarios)
    figs = []
    panels = [
        ("throughput", "Throughput", [("output_throughput", "output throughput (tok/s)"),
                                      ("total_token_throughput", "total throughput (tok/s)")]),
        ("latency", "Latency", [("p99_ttft_ms", "p99 TTFT (ms)"), ("mean_ttft_ms", "mean TTFT (ms)"),
                                ("p99_tpot_ms", "p99 TPOT (ms)"), ("p99_e2el_ms", "p99 E2E latency (ms)")]),
        ("kv_queue", "KV cache and queue", [("peak_kv_usage", "peak KV usage (fraction)"),
                                            ("mean_kv_usage", "mean KV usage (fraction)"),
                                            ("mean_num_waiting", "mean waiting (requests)"),
                                            ("num_preemptions", "preemptions (count)")]),
        ("energy", "Power and energy", [("mean_gpu_power_w", "mean GPU power (W)"),
                                        ("energy_per_output_token_j", "energy per output token (J)")]),
        # cluster points only (docs/cluster.md): how evenly the router spread the work
        ("balance", "Load balance across replicas", [("replica_completed_cv", "CV of requests per replica"),
                                                     ("replica_busy_min", "least busy replica"),
                                                     ("replica_busy_max", "busiest replica")]),
    ]
    if curve.get("profit_per_h") is not None and curve["profit_per_h"].notna().any():
        panels.append(("economics", "Revenue, cost and profit",
                       [("revenue_per_h", f"revenue ({CURRENCY}/h)"), ("cost_per_h", f"cost ({CURRENCY}/h)"),
                        ("profit_per_h", f"profit ({CURRENCY}/h)"),
                        ("cost_per_1m_tokens", f"cost ({CURRENCY} per 1M tokens)")]))
    slo_by_col = {s.column: s.max_ms for sc in scenarios for s in sc.slos}
    for key, title, cols in panels:
        cols = [(c, lab) for c, lab in cols if c in curve and curve[c].notna().any()]
        if not cols:
            continue
        fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.4), squeeze=False)
        for ax, (col, lab) in zip(axes[0], cols):
            for i, sc in enumerate(scenarios):
                part = curve[curve["variant"] == sc.name]
                color = COLORS[i % len(COLORS)]
                _line(ax, part, col, color, sc.name, log_x)
                r = regions.get(sc.name)
                if r is not None and key == "throughput":
                    _mark(ax, r.equilibrium, color, ":")
                    _mark(ax, r.saturation, color, "--")
                if r is not None and key == "economics" and col == "profit_per_h":
                    _mark(ax, r.break_even, color, ":")
                    _mark(ax, r.max_profit, color, "--")
            if col in slo_by_col:
                ax.axhline(slo_by_col[col], color="red", lw=1, ls="-.", label="SLO")
            if col == "profit_per_h":
                ax.axhline(0, color="black", lw=0.8)
            if col.endswith("_ms") and (curve[col] > 0).all() and curve[col].max() / max(curve[col].min(), 1e-9) > 100:
                ax.set_yscale("log")
            ax.set_xlabel(axis.label)
            ax.set_ylabel(lab)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(title)
        caption = (f"{title} against {axis.label}; lines are seed means, bands their 95% confidence interval "
                   "(Student t over the seeds); red crosses mark unstable points (the replica falls behind the "
                   "offered rate)."
                   + (" Dotted/dashed verticals: equilibrium/saturation." if key == "throughput" else "")
                   + (" Dotted/dashed verticals: break-even/maximum profit." if key == "economics" else ""))
        figs.append(_figure(f"{tag}{key}.png", title, caption, fig))
    return figs


def regions_figure(curve: pd.DataFrame, sc: Scenario, r: Regions) -> Figure | None:
    """One variant: throughput with regions A/B/C shaded, the SLO limit, and profit on a second axis."""
    part = _ok(curve[curve["variant"] == sc.name])
    tcol = sc.regions.throughput
    if part.empty or tcol not in part:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    d, m, lo, hi = _stats(part, tcol)
    xmin, xmax = d.min(), d.max()
    eq = r.equilibrium.value
    sat = r.saturation.value
    edges = [xmin, eq if eq is not None else (sat if sat is not None else xmax),
             sat if sat is not None else xmax, xmax]
    for (a, b), name in zip(zip(edges[:-1], edges[1:]), "ABC"):
        if b > a:
            ax.axvspan(a, b, color=REGION_SHADES[name], lw=0)
            ax.text((a * b) ** 0.5 if _log_x([sc]) else (a + b) / 2, 0.02, name, transform=ax.get_xaxis_transform(),
                    ha="center", fontsize=12, color="grey")
    _line(ax, part, tcol, COLORS[0], tcol.replace("_", " "), False)
    _mark(ax, r.equilibrium, "green", ":")
    _mark(ax, r.saturation, "darkorange", "--")
    _mark(ax, r.slo_limit, "red", "-.")
    if _log_x([sc]):
        ax.set_xscale("log")
    ax.set_xlabel(sc.sweep.axis.label)
    ax.set_ylabel(THROUGHPUT_LABELS.get(tcol, tcol))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if "profit_per_h" in part and part["profit_per_h"].notna().any():
        ax2 = ax.twinx()
        d2, p, plo, phi = _stats(part, "profit_per_h")
        ax2.plot(d2, p, color="purple", marker="s", ms=3, label=f"profit ({CURRENCY}/h)")
        ax2.fill_between(d2, plo, phi, color="purple", alpha=0.15, lw=0)
        ax2.axhline(0, color="purple", lw=0.6, ls="-")
        _mark(ax2, r.break_even, "purple", ":")
        _mark(ax2, r.max_profit, "purple", "--")
        ax2.set_ylabel(f"profit ({CURRENCY}/h)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=7, loc="upper left")
    ax.set_title(f"{sc.name}: operating regions")
    caption = ("Regions A (green), B (yellow), C (red). Verticals: equilibrium (green dotted), saturation "
               "(orange dashed), SLO limit (red dash-dot), break-even (purple dotted), maximum profit "
               "(purple dashed); hatched bands are the seed spread of each boundary; red crosses mark "
               "unstable points (region B ends at the first).")
    return _figure(f"regions_{sc.name}.png", f"{sc.name}: regions", caption, fig)


def timeseries_figure(out: Path, sc: Scenario, r: Regions) -> Figure | None:
    """Running, waiting and KV usage over time at up to four points of the sweep (first seed)."""
    pts = list(sc.sweep.points)
    picks = [pts[0]] + [b.value for b in (r.equilibrium, r.saturation) if b.value is not None] + [pts[-1]]
    chosen = []
    for p in picks:
        if p not in chosen and series_path(out, sc.name, p, sc.sweep.axis.value).exists():
            chosen.append(p)
    if not chosen:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    cols = (("vllm:num_requests_running", "running requests"), ("vllm:num_requests_waiting", "waiting requests"),
            ("vllm:kv_cache_usage_perc", "KV cache usage (fraction)"))
    for i, p in enumerate(sorted(chosen)):
        frame = pd.read_parquet(series_path(out, sc.name, p, sc.sweep.axis.value))
        if "replica" in frame:  # a cluster: requests summed over replicas, KV usage averaged
            frame = frame.groupby("time_s", as_index=False).agg(
                {"vllm:num_requests_running": "sum", "vllm:num_requests_waiting": "sum",
                 "vllm:kv_cache_usage_perc": "mean"})
        for ax, (col, lab) in zip(axes, cols):
            ax.plot(frame["time_s"], frame[col], color=COLORS[i % len(COLORS)], lw=1,
                    label=f"{sc.sweep.axis.value}={p:g}")
            ax.set_xlabel("simulated time (s)")
            ax.set_ylabel(lab if col.endswith("perc") else f"{lab} (count)")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{sc.name}: engine state over time (seed {sc.sweep.seeds[0]})")
    caption = ("vLLM's Prometheus gauges as servesim samples them, at the first and last points and at the "
               "equilibrium and saturation points.")
    return _figure(f"timeseries_{sc.name}.png", f"{sc.name}: over time", caption, fig)
