"""Turning a variant's regions into operating advice (docs/design.md, "Economics").

The **best point** of a node is the maximum-profit point when the scenario has prices and costs,
else the saturation point (most throughput for the hardware), in both cases capped by the largest
demand meeting the SLOs.  From it follow:

* the **per-node admission limit**: the concurrency a node should admit (``max_num_seqs`` or a
  router's per-node cap).  On burst and concurrency axes it is the best point itself; on a rate
  axis it is the 95th percentile of running requests observed at the best point (rounded up);
* the **replicas** for ``advice.target_demand``: ``ceil(target / best point)``, which keeps every
  node at or below its best point.

When the scenario has a ``cluster:`` section the unit that was simulated is the whole cluster
(its replicas, pools and router, docs/cluster.md), and the lines say so (:class:`_Unit`): the cost
is the cluster's (every GPU of it), the admission limit is per replica (the time series pools
every replica's samples), and a target demand is met by copies of the cluster, or, when the
swept demand is per replica (``demand_per_replica``), by that many replicas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .regions import Regions
from .schema import Axis, Scenario


@dataclass(frozen=True)
class NodeAdvice:
    variant: str
    best_demand: float | None
    basis: str
    admission_limit: int | None
    replicas: int | None
    throughput: float | None
    cost_per_1m_tokens: float | None
    profit_per_h: float | None
    lines: tuple[str, ...]


@dataclass(frozen=True)
class _Unit:
    """What one point of the sweep simulated, in words: one replica (a node) or a whole cluster."""

    cluster: bool
    noun: str             # "a node" / "the cluster (6 replicas, 24 GPUs, least-outstanding-tokens router)"
    per: str              # where the admission limit applies: "per node" / "per replica"
    scale_noun: str       # what a target demand is met with: "replica(s)" / "copies of the cluster"
    gpus_per_scale: float  # GPUs of one of those
    per_replica_demand: bool = False


def _unit(sc: Scenario, row: pd.Series) -> _Unit:
    c = sc.cluster
    tp = sc.deployment.tp
    if c is None:
        return _Unit(False, "a node", "per node", "replica(s)", tp)
    replicas = c.num_replicas
    gpus = row.get("num_gpus_total", math.nan)
    gpus = float(gpus) if pd.notna(gpus) else float(replicas * tp)
    prefill = c.prefill_replicas + sum(g.replicas for g in c.groups if g.role == "prefill")
    decode = c.decode_replicas + sum(g.replicas for g in c.groups if g.role == "decode")
    pools = f"{prefill} prefill + {decode} decode replicas" if prefill else f"{replicas} replicas"
    noun = f"the cluster ({pools}, {gpus:g} GPUs, {c.router} router)"
    per = "per replica (prefill and decode samples pooled)" if prefill else "per replica"
    if c.demand_per_replica:
        return _Unit(True, noun, per, "replica(s) of this cluster's kind", gpus / replicas, True)
    return _Unit(True, noun, per, "copies of the cluster", gpus)


def _row_at(mean: pd.DataFrame, demand: float) -> pd.Series:
    i = (mean["demand"] - demand).abs().idxmin()
    return mean.loc[i]


def node_advice(sc: Scenario, regions: Regions, mean: pd.DataFrame) -> NodeAdvice:
    """Advice for one variant from its regions and seed-mean curve."""
    axis = sc.sweep.axis
    unit = {Axis.RATE: " req/s", Axis.CONCURRENCY: " users", Axis.BURST: " requests"}.get(axis, "")
    name = sc.name
    if mean.empty or "output_throughput" not in mean or mean["output_throughput"].isna().all():
        note = regions.notes[0] if regions.notes else "no successful points"
        return NodeAdvice(name, None, "", None, None, None, None, None, (f"{name}: cannot run: {note}",))
    if not axis.is_demand:
        slo = regions.slo_limit
        text = (f"{name}: SLOs hold up to {axis.label} {slo.value:g}" if slo.value is not None
                else f"{name}: {slo.note}") if sc.slos else f"{name}: {axis.label} sweep (no demand regions)"
        return NodeAdvice(name, None, "", None, None, None, None, None, (text,))
    candidates = []
    if regions.max_profit.value is not None:
        candidates.append((regions.max_profit.value, "maximum profit"))
    elif regions.saturation.value is not None:
        candidates.append((regions.saturation.value, "saturation (peak throughput)"))
    if sc.slos:
        if regions.slo_limit.value is None:
            return NodeAdvice(name, None, "", None, None, None, None, None,
                              (f"{name}: no point of the sweep meets the SLOs "
                               f"({', '.join(map(str, sc.slos))}); use faster hardware or fewer requests per "
                               + ("node" if sc.cluster is None else "replica (more replicas)"),))
        candidates.append((regions.slo_limit.value, "largest demand meeting the SLOs"))
    best, basis = min(candidates)
    row = _row_at(mean, best)
    if axis is Axis.RATE:
        running = row.get("p95_num_running", row.get("mean_num_running", math.nan))
        admission = int(math.ceil(running)) if pd.notna(running) else None
    else:
        admission = int(best)
    target = sc.advice.target_demand
    replicas = int(math.ceil(target / best - 1e-9)) if target else None
    u = _unit(sc, row)
    lines = []
    eq, sat = regions.equilibrium, regions.saturation
    if sat.value is not None:
        a_text = (f"region A up to the equilibrium point {eq.describe(unit)}" if eq.value is not None
                  else "no equilibrium point (no queue or KV pressure with a falling slope before saturation)")
        lines.append(f"{name}: {a_text}; region B up to the saturation point {sat.describe(unit)}; "
                     f"region C beyond (peak {regions.peak_throughput:,.0f} tok/s at {regions.peak_demand:g}{unit}).")
    where = "" if not u.cluster else (" per replica" if u.per_replica_demand else " into the whole cluster")
    lines.append(f"{name}: best point {best:g}{unit}{where} ({basis}): {row['output_throughput']:,.0f} output tok/s, "
                 f"p99 TTFT {row.get('p99_ttft_ms', math.nan):,.0f} ms, "
                 f"p99 TPOT {row.get('p99_tpot_ms', math.nan):.1f} ms.")
    cost = row.get("cost_per_1m_tokens", math.nan)
    profit = row.get("profit_per_h", math.nan)
    if pd.notna(cost):
        revenue = row.get("revenue_per_h", math.nan)
        lines.append(f"{name}: at the best point {u.noun} costs {row['cost_per_h']:,.2f} USD/h "
                     f"({cost:.3f} USD per 1M tokens), takes in {revenue:,.2f} USD/h and so "
                     f"{'makes a profit of' if profit >= 0 else 'loses'} {abs(profit):,.2f} USD/h.")
    if admission is not None:
        lines.append(f"{name}: admit at most {admission} concurrent requests {u.per} "
                     f"(max_num_seqs={admission}" + (f" on each of its {sc.cluster.num_replicas} replicas)."
                                                     if u.cluster and sc.cluster is not None else ")."))
    if replicas is not None and target:
        lines.append(f"{name}: for a demand of {target:g}{unit}, run {replicas} {u.scale_noun} "
                     f"({replicas * u.gpus_per_scale:g} GPUs), each at {target / replicas:.3g}{unit}.")
        if axis is Axis.RATE and not u.cluster:
            lines.append(f"{name}: this count divides the target by one replica's best point on this sweep's grid; "
                         f"`servesim plan --demand {target:g}` answers the cheapest fleet whose replicas meet the "
                         "SLOs with 95% confidence at target / replicas (rental prices, its own run lengths), so "
                         "the two differ when the best point is profit- rather than SLO-bound or falls between "
                         "grid points.")
    return NodeAdvice(name, best, basis, admission, replicas, float(row["output_throughput"]),
                      float(cost) if pd.notna(cost) else None, float(profit) if pd.notna(profit) else None,
                      tuple(lines))
