"""Configuration of a cluster: replica groups, their roles, routers, the KV link and power limits.

A cluster is one or more :class:`ReplicaGroup` (replicas of one :class:`EngineConfig`), either all
collocated (each replica prefills and decodes its requests) or split into prefill and decode pools
(disaggregation, :mod:`servesim.sim.kv_transfer`).  Groups may differ in GPU, TP, engine knobs and
profile.  Power: a per-GPU cap, a per-server cap (split evenly over its GPUs) and a cluster budget
(split evenly over all GPUs) may be given; each GPU runs under the lowest that applies
(:mod:`servesim.sim.power`).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from .config import EngineConfig, EngineVersion
from .gpus import LINK_CATALOG, LinkSpec
from .power import PowerCap
from .router import RouterConfig


class ReplicaRole(enum.Enum):
    COLLOCATED = "collocated"
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(frozen=True)
class ReplicaGroup:
    """``num_replicas`` identical replicas with one role; ``power_cap_w`` caps each of their GPUs."""

    engine: EngineConfig
    num_replicas: int = 1
    role: ReplicaRole = ReplicaRole.COLLOCATED
    name: str = ""
    power_cap_w: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", ReplicaRole(self.role))
        if self.num_replicas < 1:
            raise ValueError(f"replica group {self.name or self.role.value}: num_replicas must be >= 1 "
                             f"(got {self.num_replicas})")
        if self.power_cap_w is not None and not self.power_cap_w > 0:
            raise ValueError(f"replica group {self.name or self.role.value}: power_cap_w must be > 0 "
                             f"(got {self.power_cap_w})")
        if self.role is not ReplicaRole.COLLOCATED and self.engine.engine is not EngineVersion.V1:
            raise ValueError(f"replica group {self.name or self.role.value}: prefill/decode disaggregation "
                             f"needs engine vllm-v1 (vLLM's P/D connectors are v1-only), got "
                             f"{self.engine.engine.value}")

    @property
    def num_gpus(self) -> int:
        return self.num_replicas * self.engine.parallel.tensor_parallel_size


@dataclass(frozen=True)
class ClusterConfig:
    """Everything that defines a simulated cluster (invariants checked at construction: roles are
    all collocated or a non-empty prefill pool with a non-empty decode pool)."""

    groups: tuple[ReplicaGroup, ...]
    router: RouterConfig = field(default_factory=RouterConfig)
    decode_router: RouterConfig | None = None
    link: LinkSpec = LINK_CATALOG["infiniband"]
    power: PowerCap = field(default_factory=PowerCap)
    server_power_cap_w: float | None = None
    gpus_per_server: int = 8
    power_budget_w: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))
        if not self.groups:
            raise ValueError("a cluster needs at least one replica group")
        roles = {g.role for g in self.groups}
        if ReplicaRole.COLLOCATED in roles and len(roles) > 1:
            raise ValueError("a cluster is either collocated or disaggregated: do not mix collocated "
                             "groups with prefill/decode groups")
        if roles & {ReplicaRole.PREFILL, ReplicaRole.DECODE} and roles != {ReplicaRole.PREFILL, ReplicaRole.DECODE}:
            raise ValueError("a disaggregated cluster needs at least one prefill and one decode replica")
        if self.gpus_per_server < 1:
            raise ValueError(f"gpus_per_server must be >= 1 (got {self.gpus_per_server})")
        for name in ("server_power_cap_w", "power_budget_w"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be > 0 W (got {value})")
        for g in self.groups:
            cap = self.gpu_cap_w(g)
            if cap is not None:
                PowerCap(cap).check(g.engine.profile.power, g.engine.gpu.name)

    @property
    def disaggregated(self) -> bool:
        return any(g.role is ReplicaRole.PREFILL for g in self.groups)

    @property
    def num_replicas(self) -> int:
        return sum(g.num_replicas for g in self.groups)

    @property
    def num_gpus(self) -> int:
        return sum(g.num_gpus for g in self.groups)

    def gpu_cap_w(self, group: ReplicaGroup) -> float | None:
        """The power cap each GPU of ``group`` runs under: the lowest of the group's, the global
        per-GPU one, the server cap over its GPUs and the cluster budget over all GPUs."""
        caps = [c for c in (group.power_cap_w, self.power.cap_w) if c is not None]
        if self.server_power_cap_w is not None:
            caps.append(self.server_power_cap_w / self.gpus_per_server)
        if self.power_budget_w is not None:
            caps.append(self.power_budget_w / self.num_gpus)
        return min(caps) if caps else None

    def to_dict(self) -> dict:
        return {
            "groups": [{"name": g.name, "role": g.role.value, "num_replicas": g.num_replicas,
                        "power_cap_w": g.power_cap_w, "gpu_cap_w": self.gpu_cap_w(g), "engine": g.engine.to_dict()}
                       for g in self.groups],
            "router": {"kind": self.router.kind.value, "staleness_s": self.router.staleness_s,
                       "seed": self.router.seed, "prefix_balance_threshold": self.router.prefix_balance_threshold},
            "decode_router": None if self.decode_router is None else
            {"kind": self.decode_router.kind.value, "staleness_s": self.decode_router.staleness_s},
            "link": {"name": self.link.name, "bandwidth_bytes_per_s": self.link.bandwidth_bytes_per_s,
                     "latency_s": self.link.latency_s},
            "power": {"cap_w": self.power.cap_w, "exponent": self.power.exponent,
                      "memory_clock_sensitivity": self.power.memory_clock_sensitivity,
                      "min_clock_ratio": self.power.min_clock_ratio,
                      "server_power_cap_w": self.server_power_cap_w, "gpus_per_server": self.gpus_per_server,
                      "power_budget_w": self.power_budget_w},
        }


def homogeneous_cluster(engine: EngineConfig, replicas: int = 0, prefill_replicas: int = 0,
                        decode_replicas: int = 0, router: RouterConfig | None = None,
                        link: str = "infiniband", power_cap_w: float | None = None,
                        power_budget_w: float | None = None) -> ClusterConfig:
    """``replicas`` collocated replicas, or ``prefill_replicas`` + ``decode_replicas`` of ``engine``."""
    from .gpus import get_link
    if replicas and (prefill_replicas or decode_replicas):
        raise ValueError("give --replicas (collocated) or --prefill-replicas with --decode-replicas, not both")
    if replicas:
        groups: tuple[ReplicaGroup, ...] = (ReplicaGroup(engine, replicas, ReplicaRole.COLLOCATED, "replicas"),)
    else:
        if prefill_replicas < 1 or decode_replicas < 1:
            raise ValueError(f"disaggregation needs --prefill-replicas >= 1 and --decode-replicas >= 1 "
                             f"(got {prefill_replicas}, {decode_replicas})")
        groups = (ReplicaGroup(engine, prefill_replicas, ReplicaRole.PREFILL, "prefill"),
                  ReplicaGroup(engine, decode_replicas, ReplicaRole.DECODE, "decode"))
    return ClusterConfig(groups, router or RouterConfig(), link=get_link(link),
                         power=PowerCap(power_cap_w), power_budget_w=power_budget_w)


__all__ = ["ClusterConfig", "ReplicaGroup", "ReplicaRole", "homogeneous_cluster"]
