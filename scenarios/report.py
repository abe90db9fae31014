"""``report.html`` (self-contained: plots embedded as base64 PNG, no scripts, no external files)
and ``report.md`` (plots referenced from ``plots/``) for a finished sweep.

Sections: the variants compared, the regions table with uncertainty, the advice, the figures,
the seed-mean curve of every variant, and notes (failed points, engine fallbacks).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..sim.lengths import SHAREGPT_CONVERSATIONS_STATS, SHAREGPT_FIRST_TURN_STATS
from .advice import NodeAdvice, node_advice
from .plots import Figure, metric_panels, regions_figure, timeseries_figure
from .regions import Regions, mean_curve
from .schema import ScenarioFile

TABLE_COLUMNS = ("demand", "output_throughput", "request_throughput", "mean_ttft_ms", "p99_ttft_ms",
                 "mean_tpot_ms", "p99_tpot_ms", "peak_kv_usage", "mean_num_waiting", "num_preemptions",
                 "mean_gpu_power_w", "energy_per_output_token_j", "revenue_per_h", "cost_per_h", "profit_per_h",
                 "cost_per_1m_tokens", "rate_shortfall", "stable_fraction")
BOUNDARY_LABELS = (("equilibrium", "equilibrium (end of A)"), ("saturation", "saturation (end of B)"),
                   ("break_even", "break-even"), ("break_even_upper", "break-even (upper)"),
                   ("max_profit", "maximum profit"), ("slo_limit", "largest demand meeting SLOs"))
CSS = """body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}figure{margin:1.5em 0}figcaption{font-size:13px;color:#555}
img{max-width:100%}.note{color:#a33}code{background:#f5f5f5;padding:0 3px}"""


def _fmt(v) -> str:
    """Numbers for people: thousands separators, no exponent (30,896 not 3.09e+04); four
    significant digits below 1,000."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"{int(v):,d}"
    if isinstance(v, (float, np.floating)):
        if abs(v) >= 1000 or float(v).is_integer():
            return f"{v:,.0f}"
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def workload_text(w) -> str:
    """What a variant's traffic is, with the statistics of its length dataset."""
    if w.trace:
        return f"{w.kind.value}, {w.trace}"
    lengths = {"fixed": f"fixed: in {w.input_len:,} / out {w.output_len:,} tokens",
               "random": f"random: in {w.input_len:,} / out {w.output_len:,} tokens +-{w.range_ratio:.0%}",
               "sharegpt": f"sharegpt first turns ({SHAREGPT_FIRST_TURN_STATS})",
               "sharegpt-conversations": f"sharegpt conversations ({SHAREGPT_CONVERSATIONS_STATS})",
               "dist": f"dist: in {w.input_dist} / out {w.output_dist}"}.get(w.dataset, w.dataset)
    return f"{w.kind.value}, {lengths}"


def variant_rows(sf: ScenarioFile, curve: pd.DataFrame) -> list[dict]:
    rows = []
    for sc in sf.variants:
        d = sc.deployment
        part = curve[curve["variant"] == sc.name] if not curve.empty else curve
        ok = part[part["error"].fillna("") == ""] if "error" in part else part
        kv = ok["kv_capacity_tokens"].iloc[0] if "kv_capacity_tokens" in ok and len(ok) else None
        mns = ok["max_num_seqs"].iloc[0] if "max_num_seqs" in ok and len(ok) else None
        w = sc.workload
        rows.append({"variant": sc.name, "model": d.model, "GPU": f"{d.tp}x {d.gpu}",
                     "weights/KV": f"{d.weight_dtype or 'default'}/{d.kv_cache_dtype}", "engine": d.engine,
                     "max_num_seqs": _fmt(mns), "KV capacity (tokens)": _fmt(float(kv)) if kv is not None else "",
                     "workload": workload_text(w),
                     "axis": f"{sc.sweep.axis.value}: {len(sc.sweep.points)} points x {len(sc.sweep.seeds)} seeds",
                     "points failed": str(int((part["error"].fillna("") != "").sum())) if "error" in part else "0"})
    return rows


def region_rows(sf: ScenarioFile, regions: list[Regions]) -> list[dict]:
    rows = []
    for sc, r in zip(sf.variants, regions):
        row = {"variant": sc.name}
        for key, label in BOUNDARY_LABELS:
            row[label] = getattr(r, key).describe()
        row["peak throughput (tok/s)"] = _fmt(r.peak_throughput)
        row["at"] = _fmt(r.peak_demand)
        rows.append(row)
    return rows


def notes(sf: ScenarioFile, curve: pd.DataFrame, regions: list[Regions]) -> list[str]:
    out: list[str] = []
    for r in regions:
        out.extend(f"{r.variant}: {n}" for n in r.notes)
    if "fast_path_error" in curve:
        fb = curve[curve["fast_path_error"].fillna("") != ""]
        for v, part in fb.groupby("variant"):
            out.append(f"{v}: {len(part)} point(s) hit an engine error on the fast path "
                       f"({part['fast_path_error'].iloc[0][:120]}) and were re-run on the exact path")
    return out


def _html_table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])
    head = "".join(f"<th class='l'>{html.escape(c)}</th>" if i == 0 else f"<th>{html.escape(c)}</th>"
                   for i, c in enumerate(cols))
    body = "".join("<tr>" + "".join(f"<td class='l'>{html.escape(str(r[c]))}</td>" if i == 0 else
                                    f"<td>{html.escape(str(r[c]))}</td>" for i, c in enumerate(cols)) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _md_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]).replace("|", "/") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _curve_rows(mean: pd.DataFrame) -> list[dict]:
    cols = [c for c in TABLE_COLUMNS if c in mean and mean[c].notna().any()]
    return [{c: _fmt(float(v)) for c, v in zip(cols, rec)} for rec in mean[cols].itertuples(index=False)]


def build_figures(out: Path, sf: ScenarioFile, curve: pd.DataFrame, regions: list[Regions]) -> list[Figure]:
    by_name = {r.variant: r for r in regions}
    figs: list[Figure] = []
    axes = []
    for sc in sf.variants:
        if sc.sweep.axis not in axes:
            axes.append(sc.sweep.axis)
    for axis in axes:
        group = [sc for sc in sf.variants if sc.sweep.axis is axis]
        tag = f"{axis.value}_" if len(axes) > 1 else ""
        if not curve.empty:
            figs += metric_panels(curve[curve["variant"].isin([s.name for s in group])], group, by_name, axis, tag)
    for sc in sf.variants:
        if sc.sweep.axis.is_demand and not curve.empty:
            fig = regions_figure(curve, sc, by_name[sc.name])
            if fig is not None:
                figs.append(fig)
        fig = timeseries_figure(out, sc, by_name[sc.name])
        if fig is not None:
            figs.append(fig)
    return figs


def write_report(out: Path, sf: ScenarioFile, curve: pd.DataFrame, regions: list[Regions]) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and ``plots/*.png``; return their paths."""
    figs = build_figures(out, sf, curve, regions)
    advice: list[NodeAdvice] = []
    means = {}
    for sc, r in zip(sf.variants, regions):
        part = curve[(curve["variant"] == sc.name)] if not curve.empty else curve
        if "error" in part:
            part = part[part["error"].fillna("") == ""]
        means[sc.name] = mean_curve(part) if not part.empty else pd.DataFrame()
        advice.append(node_advice(sc, r, means[sc.name]))
    variants, region_tbl, note_list = variant_rows(sf, curve), region_rows(sf, regions), notes(sf, curve, regions)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    title = f"servesim sweep: {sf.name}"
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    for f in figs:
        (plots_dir / f.name).write_bytes(f.png)
    # --- HTML
    h = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
         "<link rel='icon' href='data:,'>", f"<style>{CSS}</style></head><body>",
         f"<h1>{html.escape(title)}</h1>",
         f"<p>{html.escape(sf.description)}</p>" if sf.description else "",
         f"<p>Scenario <code>{html.escape(os.path.basename(sf.source))}</code>, generated {stamp} by servesim. "
         "Region rules and economics: <code>docs/scenarios.md</code>.</p>",
         "<h2>Variants</h2>", _html_table(variants), "<h2>Regions</h2>",
         "<p>Values are the rule applied to the seed-mean curve; 'seeds' the range of the rule on each seed's "
         "curve; 'grid' the interval the sweep's grid locates the boundary in.</p>", _html_table(region_tbl),
         "<h2>Advice</h2><ul>"]
    h += [f"<li>{html.escape(line)}</li>" for a in advice for line in a.lines]
    h.append("</ul><h2>Figures</h2>")
    for f in figs:
        data = base64.b64encode(f.png).decode("ascii")
        axes = "; ".join(f.axis_labels)
        h.append(f"<figure><img alt='{html.escape(f.title)}' src='data:image/png;base64,{data}'>"
                 f"<figcaption>{html.escape(f.caption)} <span class='axes'>Axes: {html.escape(axes)}.</span>"
                 "</figcaption></figure>")
    h.append("<h2>Curves (mean over seeds)</h2>")
    for name, mean in means.items():
        h.append(f"<details><summary>{html.escape(name)}</summary>{_html_table(_curve_rows(mean))}</details>"
                 if not mean.empty else f"<p>{html.escape(name)}: no successful points</p>")
    if note_list:
        h.append("<h2>Notes</h2><ul>" + "".join(f"<li class='note'>{html.escape(n)}</li>" for n in note_list)
                 + "</ul>")
    h.append("</body></html>")
    # --- Markdown
    md = [f"# {title}\n", f"{sf.description}\n" if sf.description else "",
          f"Scenario `{os.path.basename(sf.source)}`, generated {stamp}.\n", "## Variants\n", _md_table(variants),
          "## Regions\n", _md_table(region_tbl), "## Advice\n"]
    md += [f"- {line}" for a in advice for line in a.lines]
    md.append("\n## Figures\n")
    md += [f"![{f.title}](plots/{f.name})\n\n{f.caption} Axes: {'; '.join(f.axis_labels)}.\n" for f in figs]
    md.append("## Curves (mean over seeds)\n")
    for name, mean in means.items():
        md += [f"### {name}\n", _md_table(_curve_rows(mean)) if not mean.empty else "no successful points\n"]
    if note_list:
        md += ["## Notes\n"] + [f"- {n}" for n in note_list]
    paths = {"report_html": out / "report.html", "report_md": out / "report.md"}
    paths["report_html"].write_text("\n".join(h))
    paths["report_md"].write_text("\n".join(md) + "\n")
    return paths
