"""A sweep point on a cluster: the scenario's ``cluster:`` section turned into a
:class:`~servesim.sim.cluster_config.ClusterConfig` and simulated (``docs/cluster.md``).

:func:`point_demand` is the demand the workload is built for (the point's value, times the number
of replicas when ``demand_per_replica``); :func:`simulate_point` runs one replica as before, or the
cluster; :func:`cluster_columns` adds the cluster's own columns to a curve row.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..sim.cluster_config import ClusterConfig, ReplicaGroup, ReplicaRole
from ..sim.config import EngineConfig
from ..sim.gpus import get_link
from ..sim.power import PowerCap
from ..sim.router import RouterConfig
from ..sim.runner import SimOptions, simulate
from .schema import ClusterSection, Scenario

CLUSTER_COLUMNS = ("num_replicas", "num_gpus", "energy_per_request_j", "num_kv_transfers", "mean_kv_transfer_ms",
                   "p99_kv_transfer_ms", "mean_kv_wait_ms")


def as_cluster(sc: Scenario, replicas: int, router: str, staleness_s: float = 1.0) -> Scenario:
    """``sc`` as ``replicas`` collocated replicas behind ``router``, offered ``replicas`` times a
    point's rate (``demand_per_replica``): how ``plan --router`` simulates a candidate."""
    return replace(sc, cluster=ClusterSection(replicas=replicas, router=router, router_staleness_s=staleness_s,
                                              demand_per_replica=True))


def as_disaggregated(sc: Scenario, prefill: int, decode: int, router: str, staleness_s: float = 1.0,
                     link: str = "infiniband") -> Scenario:
    """``sc`` as a pool of ``prefill`` prefill and ``decode`` decode replicas behind ``router`` (both
    pools), KV over ``link``, offered ``prefill + decode`` times a point's rate: how
    ``plan --disaggregated`` simulates a candidate (``scenarios/plan_disagg.py``)."""
    return replace(sc, cluster=ClusterSection(prefill_replicas=prefill, decode_replicas=decode, router=router,
                                              router_staleness_s=staleness_s, kv_link=link,
                                              demand_per_replica=True))


def point_demand(sc: Scenario, demand: float) -> float:
    c = sc.cluster
    return demand * c.num_replicas if c is not None and c.demand_per_replica else demand


def _group_config(sc: Scenario, g, engine_config) -> EngineConfig:
    dep = sc.deployment
    changes = {k: v for k, v in (("gpu", g.gpu), ("tp", g.tp), ("profile", g.profile),
                                 ("weight_dtype", g.weight_dtype), ("kv_cache_dtype", g.kv_cache_dtype))
               if v is not None}
    if g.knobs:
        changes["knobs"] = replace(dep.knobs, **dict(g.knobs))
    return engine_config(replace(dep, **changes), sc.base_dir)


def cluster_config(sc: Scenario, engine_config) -> ClusterConfig:
    """The cluster of ``sc`` (``engine_config(deployment, base_dir)`` builds each replica)."""
    c: ClusterSection = sc.cluster
    base = engine_config(sc.deployment, sc.base_dir)
    if c.groups:
        groups = tuple(ReplicaGroup(_group_config(sc, g, engine_config), g.replicas, ReplicaRole(g.role),
                                    g.name or f"group{i}", g.power_cap_w) for i, g in enumerate(c.groups))
    elif c.replicas:
        groups = (ReplicaGroup(base, c.replicas, ReplicaRole.COLLOCATED, "replicas"),)
    else:
        groups = (ReplicaGroup(base, c.prefill_replicas, ReplicaRole.PREFILL, "prefill"),
                  ReplicaGroup(base, c.decode_replicas, ReplicaRole.DECODE, "decode"))
    router = RouterConfig(c.router, staleness_s=c.router_staleness_s)
    decode = RouterConfig(c.decode_router, staleness_s=c.router_staleness_s) if c.decode_router else None
    power = PowerCap(c.power_cap_w, c.power_clock_exponent, c.memory_clock_sensitivity)
    return ClusterConfig(groups, router, decode, get_link(c.kv_link), power, c.server_power_cap_w,
                         c.gpus_per_server, c.power_budget_w)


def simulate_point(sc: Scenario, cfg: EngineConfig, workload, options: SimOptions, engine_config):
    """``simulate`` for a single replica, ``simulate_cluster`` when the scenario has a cluster."""
    if sc.cluster is None:
        return simulate(cfg, workload, options)
    from ..sim.cluster_runner import simulate_cluster
    return simulate_cluster(cluster_config(sc, engine_config), workload, options)


def cluster_columns(summary: dict) -> dict:
    """The cluster's columns of a curve row (NaN where a key does not apply), and load balance:
    ``replica_completed_cv``, the coefficient of variation of requests completed per serving
    replica, and ``replica_busy_min``/``max``."""
    if "per_replica" not in summary:
        return {}
    row = {k: summary.get(k, math.nan) for k in CLUSTER_COLUMNS}
    row["num_gpus_total"] = summary["num_gpus"]
    serving = [r for r in summary["per_replica"] if r["role"] != "prefill"]
    done = np.array([r["completed"] for r in serving], dtype=float)
    row["replica_completed_cv"] = float(done.std() / done.mean()) if done.mean() > 0 else math.nan
    busy = [r["busy_fraction"] for r in summary["per_replica"]]
    row["replica_busy_min"], row["replica_busy_max"] = min(busy), max(busy)
    caps = [r["gpu_power_cap_w"] for r in summary["per_replica"] if r["gpu_power_cap_w"] is not None]
    row["gpu_power_cap_w"] = min(caps) if caps else math.nan
    return row


def power_headroom(curve, baseline: str, metric: str = "p99_e2el_ms", max_slowdown: float = 0.1,
                   max_demand: float | None = None):
    """The POLCA question on a sweep of cluster variants under one power budget: for each variant,
    the worst slowdown of ``metric`` against ``baseline`` at the same demand (seed means, demands up
    to ``max_demand``), and whether it stays within ``max_slowdown``.  Returns (table, answer): the
    answer is the variant with the most servers (GPUs) that fits, or ``None``."""
    import pandas as pd
    if metric not in curve:
        raise ValueError(f"metric {metric!r} is not a curve column; try p99_e2el_ms, p99_ttft_ms, p99_tpot_ms")
    ok = curve[curve["error"].isna() | (curve["error"].astype(str) == "")] if "error" in curve else curve
    means = ok.groupby(["variant", "demand"], sort=False)[[metric, "num_gpus_total"]].mean().reset_index()
    if max_demand is not None:
        means = means[means["demand"] <= max_demand]
    base = means[means["variant"] == baseline].set_index("demand")[metric]
    if base.empty:
        raise ValueError(f"no baseline variant {baseline!r}; variants: {sorted(curve['variant'].unique())}")
    rows = []
    for variant, part in means.groupby("variant", sort=False):
        part = part.set_index("demand")
        common = part.index.intersection(base.index)
        slow = part.loc[common, metric] / base.loc[common] - 1.0
        worst = float(slow.max()) if len(slow) else math.nan
        rows.append({"variant": variant, "num_gpus": int(part["num_gpus_total"].iloc[0]),
                     "worst_slowdown": worst, "at_demand": float(slow.idxmax()) if len(slow) else math.nan,
                     "fits": bool(worst <= max_slowdown)})
    table = pd.DataFrame(rows)
    fits = table[table["fits"]]
    answer = None if fits.empty else str(fits.sort_values("num_gpus").iloc[-1]["variant"])
    return table, answer
