"""Run a cluster end to end and summarise it, per replica and as a whole, in today's schemas.

``simulate_cluster(cfg, workload, options)`` returns a :class:`ClusterResult` whose ``summary`` has
every key of :func:`servesim.sim.runner.simulate`'s summary for the whole cluster (latencies from
:func:`~servesim.sim.metrics.summarize` over all requests; capacities, preemptions, steps and
energy summed over replicas; fractions averaged) plus ``num_replicas``, ``num_gpus``,
``energy_per_request_j``, KV-transfer statistics and ``per_replica``: one summary per replica from
the same ``summarize`` over the requests it served (a prefill replica: the requests it prefilled),
with its ``role`` and ``completed``.  Every replica is powered for the whole run: its idle time is
the cluster's duration less its busy time.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .cluster import Cluster, Replica
from .cluster_config import ClusterConfig, ReplicaRole
from .metrics import InterTokenLatencies, RequestRecords, latency_stats, summarize
from .power import replica_energy_j
from .runner import SimOptions


class _Frame:
    """A ready table with the ``to_frame()`` that :func:`~servesim.sim.runner.write_results` calls."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def to_frame(self) -> pd.DataFrame:
        return self.frame


@dataclass
class ClusterResult:
    summary: dict
    records: _Frame
    series: _Frame
    config: dict
    wall_s: float
    num_steps: int
    cluster: Cluster


def _subset(records: RequestRecords, mask: np.ndarray) -> RequestRecords:
    sub = RequestRecords(0)
    sub.n = int(mask.sum())
    sub.cols = {k: v[mask] for k, v in records.cols.items()}
    sub.status = records.status[mask]
    return sub


def _merged_itl(replicas: list[Replica]) -> InterTokenLatencies:
    merged = InterTokenLatencies()
    for rep in replicas:
        values, counts = rep.engine.itl.arrays()
        merged._values.frombytes(values.tobytes())
        merged._counts.frombytes(counts.tobytes())
    return merged


def _engine_stats(replicas: list[Replica], duration: float, energy: list[float]) -> dict:
    """The engine-side keys of ``simulate``'s summary over ``replicas`` (one replica: identical)."""
    engines = [r.engine for r in replicas]
    gpus = sum(r.group.engine.parallel.tensor_parallel_size for r in replicas)
    total_energy = sum(energy)
    busy = sum(e.busy_s for e in engines)
    prefill = sum(e.prefill_busy_s for e in engines)
    return {
        "kv_capacity_tokens": sum(e.memory.kv_capacity_tokens for e in engines),
        "num_gpu_blocks": sum(e.memory.num_gpu_blocks for e in engines),
        "num_preemptions": sum(e.scheduler.num_preemptions for e in engines),
        "peak_kv_usage": max(e.peak_kv_usage for e in engines),
        "mean_num_running": sum(e.running_integral for e in engines) / duration if duration > 0 else 0.0,
        "num_steps": sum(e.num_steps for e in engines),
        "busy_fraction": busy / duration / len(engines) if duration > 0 else 0.0,
        "prefill_fraction": prefill / duration / len(engines) if duration > 0 else 0.0,
        "gpu_energy_j": total_energy,
        "mean_gpu_power_w": total_energy / duration / gpus if duration > 0 else 0.0,
    }


def _energy_keys(summary: dict, energy: float) -> dict:
    out, done = summary["total_output_tokens"], summary["completed"]
    return {"energy_per_output_token_j": energy / out if out else 0.0,
            "energy_per_request_j": energy / done if done else 0.0}


def simulate_cluster(cfg: ClusterConfig, workload, options: SimOptions = SimOptions()) -> ClusterResult:
    """Simulate ``workload`` on the cluster ``cfg`` (raises ``ValueError`` if it cannot run)."""
    t0 = time.perf_counter()
    cluster = Cluster(cfg, workload, options.sample_interval_s, options.exact)
    cluster.run()
    wall = time.perf_counter() - t0
    records, reps = cluster.records, cluster.replicas
    summary = summarize(records, _merged_itl(reps))
    duration = summary["duration"]
    energy = [replica_energy_j(r.group.engine.profile.power, r.cap, r.group.engine.parallel.tensor_parallel_size,
                               duration, r.engine.busy_s, r.engine.prefill_busy_s) for r in reps]
    summary.update(_engine_stats(reps, duration, energy))
    summary.update(_energy_keys(summary, summary["gpu_energy_j"]))
    summary["seed"] = options.seed
    per_replica = []
    for rep, joules in zip(reps, energy):
        column = cluster.prefill_replica_of if rep.role is ReplicaRole.PREFILL else cluster.replica_of
        s = summarize(_subset(records, column == rep.index), rep.engine.itl)
        s.update(_engine_stats([rep], duration, [joules]))
        s.update(_energy_keys(s, joules))
        s.update({"replica": rep.index, "role": rep.role.value, "group": rep.group.name,
                  "gpu_power_cap_w": rep.cap.cap_w, "num_finished_on_replica": rep.engine.num_finished})
        per_replica.append(s)
    transferred = ~np.isnan(cluster.transfer_s)
    summary.update({
        "num_replicas": len(reps), "num_gpus": cfg.num_gpus, "disaggregated": cfg.disaggregated,
        "router": cfg.router.kind.value, "router_staleness_s": cfg.router.staleness_s,
        "num_kv_transfers": int(transferred.sum()),
        "failed_at_router": cluster.num_rejected_at_router,
    })
    if cfg.disaggregated:
        summary.update(latency_stats("kv_transfer", cluster.transfer_s[transferred] * 1e3))
        summary.update(latency_stats("kv_wait", cluster.kv_wait_s[transferred] * 1e3))
    summary["per_replica"] = per_replica
    unfinished = int((records.status == 0).sum())
    if unfinished:
        raise RuntimeError(f"{unfinished} requests neither finished nor were rejected: a cluster bug")
    frame = records.to_frame()
    frame["replica"] = cluster.replica_of
    frame["prefill_replica"] = cluster.prefill_replica_of
    frame["kv_wait_s"] = cluster.kv_wait_s
    frame["transfer_s"] = cluster.transfer_s
    series = []
    for rep in reps:
        f = rep.engine.series.to_frame()
        f["replica"] = rep.index
        series.append(f)
    config = {"cluster": cfg.to_dict(), "seed": options.seed}
    return ClusterResult(summary, _Frame(frame), _Frame(pd.concat(series, ignore_index=True)), config, wall,
                         summary["num_steps"], cluster)


__all__ = ["ClusterResult", "simulate_cluster"]
