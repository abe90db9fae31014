"""The scenario schema: frozen dataclasses, one per section of a scenario YAML file.

A scenario describes one deployment (model, GPU, tensor parallelism, engine and its knobs), the
traffic it serves, the axis to sweep, the seeds, and optionally prices, costs, latency SLOs and
the constants of the region rules.  Variants of a scenario are derived from the base with
``dataclasses.replace`` (:mod:`.loader`), so every variant is again a validated :class:`Scenario`.

Every ``__post_init__`` checks the ranges of its own fields and raises ``ValueError`` naming the
field and what is allowed; :mod:`.loader` prefixes the file and the section.  Units are in field
names (``_s``, ``_ms``, ``_w``, ``_per_gpu_hour``, ``_per_1m_tokens``).  The YAML form of each
section is documented in ``docs/scenarios.md``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum

from ..sim.arg_spec import check_fields, derive_fields
from ..sim.engine_args import EngineArgs
from ..sim.workload import WorkloadSpec
from .schema_fields import ClusterGroupFields, DeploymentFields, EngineKnobsFields, WorkloadFields  # for mypy


class Axis(str, Enum):
    """What a sweep varies.  The first three are demand axes (regions apply); the others are not."""

    BURST = "burst"              # N requests arriving at t = 0 (request rate inf), N = the point
    CONCURRENCY = "concurrency"  # closed loop with N users, N = the point
    RATE = "rate"                # open loop (poisson, gamma or a rescaled trace) at R requests/s
    INPUT_LEN = "input_len"      # prompt tokens of every request
    OUTPUT_LEN = "output_len"    # output tokens of every request

    @property
    def is_demand(self) -> bool:
        return self in (Axis.BURST, Axis.CONCURRENCY, Axis.RATE)

    @property
    def label(self) -> str:
        return {Axis.BURST: "requests in the burst (N)", Axis.CONCURRENCY: "concurrent users (users)",
                Axis.RATE: "request rate (req/s)", Axis.INPUT_LEN: "prompt length (tokens)",
                Axis.OUTPUT_LEN: "output length (tokens)"}[self]


class ArrivalKind(str, Enum):
    """Where a scenario's requests come from (``workload.kind``)."""

    BURST = "burst"
    CLOSED = "closed"
    POISSON = "poisson"
    GAMMA = "gamma"
    TRACE = "trace"


# Which workload kinds each axis can drive.
AXIS_KINDS: dict[Axis, tuple[ArrivalKind, ...]] = {
    Axis.BURST: (ArrivalKind.BURST,),
    Axis.CONCURRENCY: (ArrivalKind.CLOSED,),
    Axis.RATE: (ArrivalKind.POISSON, ArrivalKind.GAMMA, ArrivalKind.TRACE),
    Axis.INPUT_LEN: (ArrivalKind.BURST, ArrivalKind.CLOSED, ArrivalKind.POISSON, ArrivalKind.GAMMA),
    Axis.OUTPUT_LEN: (ArrivalKind.BURST, ArrivalKind.CLOSED, ArrivalKind.POISSON, ArrivalKind.GAMMA),
}

BILLABLE = ("total", "output", "input")
SLO_METRICS = ("ttft", "tpot", "e2el", "itl")
THROUGHPUTS = ("output_throughput", "total_token_throughput", "request_throughput")
CLUSTER_ROLES = ("collocated", "prefill", "decode")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def check_name(value: object, field_name: str) -> None:
    """A scenario or variant name becomes a folder name: letters, digits, '-', '_' and '.', not
    starting with '.' (so neither ``..`` nor a hidden folder), at most 100 characters."""
    _check(isinstance(value, str) and 0 < len(value) <= 100 and not value.startswith(".")
           and all(c.isascii() and (c.isalnum() or c in "-_.") for c in value),
           f"{field_name} must be 1-100 letters, digits, '-', '_' or '.' and not start with '.' "
           f"(it names the output folder), got {value!r}")


def _positive(name: str, value: float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    ok = value >= 0 if allow_zero else value > 0
    _check(ok and math.isfinite(value), f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, "
                                        f"got {value}")


@dataclass(frozen=True)
@derive_fields(EngineArgs, "knobs")
class EngineKnobs(EngineKnobsFields):
    """vLLM engine arguments under vLLM's names (``deployment.knobs``): the ``knobs`` fields of
    :class:`~servesim.sim.engine_args.EngineArgs`, added by :func:`derive_fields`, with its
    defaults and checks; None means vLLM's default for the engine."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
@derive_fields(EngineArgs, "deployment", required=("model",))
class Deployment(DeploymentFields):
    """One replica: a model on ``tp`` GPUs of one type, served by one engine generation.

    The fields before ``knobs`` are the ``deployment`` fields of :class:`EngineArgs` (``tp``:
    ``tensor_parallel_size``; ``model`` required), added by :func:`derive_fields`; ``profile`` is
    a JSON path or a shipped profile name.  ``model_overrides`` replaces fields of the catalogue's
    ``ModelSpec`` (e.g. ``max_position_embeddings`` for a long-context variant) as pairs.
    """

    knobs: EngineKnobs = field(default_factory=EngineKnobs)
    model_overrides: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        check_fields(self)

    def engine_args(self) -> EngineArgs:
        """The :class:`EngineArgs` this deployment and its knobs describe."""
        return EngineArgs.from_scenario_keys({**_values(self.knobs), **_values(self)})

    @property
    def label(self) -> str:
        dtype = self.weight_dtype or "default"
        kv = "" if self.kv_cache_dtype == "auto" else f", KV {self.kv_cache_dtype}"
        return f"{self.model} on {self.tp}x {self.gpu} ({dtype}{kv}, {self.engine})"


# The deployment fields a cluster group may set differently from the scenario's deployment.
GROUP_OVERRIDES = ("gpu", "tp", "profile", "weight_dtype", "kv_cache_dtype")


def _values(section: object) -> dict[str, object]:
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}  # type: ignore[arg-type]


@dataclass(frozen=True)
@derive_fields(WorkloadSpec, "workload", defaults={"dataset": "fixed", "burstiness": 1.0}, types={"dataset": str})
class WorkloadSection(WorkloadFields):
    """The traffic, minus the swept quantity (which the sweep axis sets point by point).

    The lengths, rates and users are the ``workload`` fields of
    :class:`~servesim.sim.workload.WorkloadSpec` (added by :func:`derive_fields`, checked by its
    rules; ``dataset`` defaults to ``fixed`` and ``burstiness`` to 1 here); :meth:`spec` builds the
    spec of one point.  Request counts: ``num_requests`` fixes it; otherwise open loops use
    ``ceil(rate * duration_s)`` and closed loops ``requests_per_user * users``, clamped to
    ``[min_requests, max_requests]``.  ``trace`` is a file path (relative to the scenario file) or
    ``shared:traces/<file>`` for the shared data folder; seed ``s`` replays the window of rows
    ``[s*n, s*n + n)`` of it.
    """

    kind: ArrivalKind
    trace: str | None = None
    duration_s: float | None = None
    requests_per_user: int = 4
    min_requests: int = 1
    max_requests: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _enum(ArrivalKind, self.kind, "kind"))
        check_fields(self)
        _check(self.dataset != "dist" or bool(self.input_dist and self.output_dist),
               "dataset 'dist' needs input_dist and output_dist, e.g. 'lognormal:900:0.5'")
        _check((self.kind is ArrivalKind.TRACE) == bool(self.trace),
               "kind 'trace' needs trace (a path or shared:traces/<file>); other kinds take no trace")
        for name in ("num_requests", "requests_per_user", "min_requests", "max_requests"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"{name} must be >= 1, got {value}")
        _positive("duration_s", self.duration_s)

    def spec(self, **changes: object) -> WorkloadSpec:
        """The :class:`WorkloadSpec` of these fields with ``changes`` (the point's kind, count, ...)."""
        spec_fields = {f.name for f in dataclasses.fields(WorkloadSpec)} - {"kind"}
        values = {k: v for k, v in _values(self).items() if k in spec_fields}
        return WorkloadSpec(**{**values, **changes})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Sweep:
    """The axis swept, its points (ascending, unique) and the seeds run at every point."""

    axis: Axis
    points: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "axis", _enum(Axis, self.axis, "axis"))
        _check(len(self.points) >= 1, "points must hold at least one value")
        _check(all(math.isfinite(p) and p > 0 for p in self.points), f"points must be finite and > 0, "
                                                                     f"got {list(self.points)}")
        _check(list(self.points) == sorted(set(self.points)), "points must be ascending without repeats, "
                                                             f"got {list(self.points)}")
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds) and min(self.seeds) >= 0,
               f"seeds must be distinct integers >= 0, got {list(self.seeds)}")


@dataclass(frozen=True)
class Prices:
    """What a token earns: per 1M input/output tokens, or per 1k billable tokens (the study's form)."""

    input_per_1m_tokens: float = 0.0
    output_per_1m_tokens: float = 0.0
    per_1k_billable_tokens: float | None = None
    billable: str = "total"

    def __post_init__(self) -> None:
        _positive("input_per_1m_tokens", self.input_per_1m_tokens, allow_zero=True)
        _positive("output_per_1m_tokens", self.output_per_1m_tokens, allow_zero=True)
        _positive("per_1k_billable_tokens", self.per_1k_billable_tokens, allow_zero=True)
        _check(self.billable in BILLABLE, f"billable must be one of {list(BILLABLE)}, got {self.billable!r}")
        _check(self.per_1k_billable_tokens is None or not (self.input_per_1m_tokens or self.output_per_1m_tokens),
               "give per_1k_billable_tokens or input/output_per_1m_tokens, not both")


@dataclass(frozen=True)
class Costs:
    """What a replica costs.  Fixed terms are per GPU; the replica has ``tp`` GPUs.

    The GPU is rented (``gpu_rental_per_gpu_hour``) or bought (``gpu_capex_per_gpu`` spread over
    ``amortisation_years`` of 8,760 h); monthly terms use 730 h a month.  Energy is the simulated
    GPU power plus ``host_power_w_per_gpu`` (CPU, fans, NICs), times ``pue``, at
    ``energy_price_per_kwh``.
    """

    gpu_rental_per_gpu_hour: float | None = None
    gpu_capex_per_gpu: float | None = None
    amortisation_years: float = 4.0
    rack_power_delivery_per_gpu_month: float = 0.0
    facility_per_gpu_month: float = 0.0
    staff_per_gpu_month: float = 0.0
    other_fixed_per_gpu_month: float = 0.0
    energy_price_per_kwh: float = 0.0
    pue: float = 1.0
    host_power_w_per_gpu: float = 0.0
    other_variable_per_1m_tokens: float = 0.0

    def __post_init__(self) -> None:
        for name in ("gpu_rental_per_gpu_hour", "gpu_capex_per_gpu", "rack_power_delivery_per_gpu_month",
                     "facility_per_gpu_month", "staff_per_gpu_month", "other_fixed_per_gpu_month",
                     "energy_price_per_kwh", "host_power_w_per_gpu", "other_variable_per_1m_tokens"):
            _positive(name, getattr(self, name), allow_zero=True)
        _positive("amortisation_years", self.amortisation_years)
        _check(self.pue >= 1 and math.isfinite(self.pue), f"pue must be >= 1, got {self.pue}")
        _check(self.gpu_rental_per_gpu_hour is None or self.gpu_capex_per_gpu is None,
               "give gpu_rental_per_gpu_hour or gpu_capex_per_gpu (with amortisation_years), not both")


@dataclass(frozen=True)
class Economics:
    prices: Prices = field(default_factory=Prices)
    costs: Costs = field(default_factory=Costs)


@dataclass(frozen=True)
class SLO:
    """A latency objective: the ``percentile`` (0 = mean) of ``metric`` at most ``max_ms``."""

    metric: str
    max_ms: float
    percentile: float = 99.0

    def __post_init__(self) -> None:
        _check(self.metric in SLO_METRICS, f"metric must be one of {list(SLO_METRICS)}, got {self.metric!r}")
        _positive("max_ms", self.max_ms)
        _check(0 <= self.percentile < 100, f"percentile must be in [0, 100) (0 = mean), got {self.percentile}")
        _check(self.metric != "itl" or self.percentile in (0, 50, 99),
               "itl SLOs support percentile 0 (mean), 50 or 99 only (the inter-token distribution "
               "is summarised, not stored per request)")

    @property
    def column(self) -> str:
        """The curve column this SLO reads, e.g. ``p99_ttft_ms`` or ``mean_tpot_ms``."""
        if self.percentile == 0:
            return f"mean_{self.metric}_ms"
        return f"p{self.percentile:g}_{self.metric}_ms"

    def __str__(self) -> str:
        return f"{self.column} <= {self.max_ms:g}"


@dataclass(frozen=True)
class RegionRules:
    """Constants of the region rules (:mod:`.regions`, ``docs/scenarios.md`` "Region rules")."""

    throughput: str = "output_throughput"
    initial_points: int = 3
    slope_ratio: float = 0.5
    saturation_tolerance: float = 0.03
    kv_pressure: float = 0.95
    waiting_pressure: float = 0.5

    def __post_init__(self) -> None:
        _check(self.throughput in THROUGHPUTS, f"throughput must be one of {list(THROUGHPUTS)}, "
                                               f"got {self.throughput!r}")
        _check(self.initial_points >= 1, f"initial_points must be >= 1, got {self.initial_points}")
        _check(0 < self.slope_ratio < 1, f"slope_ratio must be in (0, 1), got {self.slope_ratio}")
        _check(0 <= self.saturation_tolerance < 0.5,
               f"saturation_tolerance must be in [0, 0.5), got {self.saturation_tolerance}")
        _check(0 < self.kv_pressure <= 1, f"kv_pressure must be in (0, 1], got {self.kv_pressure}")
        _positive("waiting_pressure", self.waiting_pressure, allow_zero=True)


@dataclass(frozen=True)
class Advice:
    """``target_demand``: the total demand (in the axis's unit) to size a fleet for."""

    target_demand: float | None = None

    def __post_init__(self) -> None:
        _positive("target_demand", self.target_demand)


@dataclass(frozen=True)
@derive_fields(EngineArgs, "deployment", names=GROUP_OVERRIDES, inherit=True)
class ClusterGroupSection(ClusterGroupFields):
    """One replica group of a heterogeneous cluster: its role and count, and what differs from the
    scenario's deployment: the :data:`GROUP_OVERRIDES` fields of the deployment (added from
    :class:`~servesim.sim.engine_args.EngineArgs`, None: as the deployment) and engine ``knobs``."""

    replicas: int
    role: str = "collocated"
    name: str = ""
    knobs: tuple = ()
    power_cap_w: float | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        _check(self.replicas >= 1, f"replicas must be >= 1, got {self.replicas}")
        _check(self.role in CLUSTER_ROLES, f"role must be one of {list(CLUSTER_ROLES)}, got {self.role!r}")
        _check(self.tp is None or self.tp >= 1, f"tp must be >= 1, got {self.tp}")
        knobs = self.knobs.items() if isinstance(self.knobs, dict) else self.knobs
        knobs = tuple(sorted((str(k), v) for k, v in knobs))
        allowed = [f.name for f in dataclasses.fields(EngineKnobs)]
        bad = [k for k, _ in knobs if k not in allowed]
        _check(not bad, f"unknown engine knob {bad[0] if bad else ''!r}; allowed: {allowed}")
        EngineKnobs(**dict(knobs))  # the values, by EngineArgs' rules
        object.__setattr__(self, "knobs", knobs)
        _positive("power_cap_w", self.power_cap_w)


@dataclass(frozen=True)
class ClusterSection:
    """Many replicas behind a router (``docs/cluster.md``): ``replicas`` collocated ones, or
    ``prefill_replicas`` + ``decode_replicas``, or explicit ``groups``; power limits; and whether the
    swept demand is per replica (``demand_per_replica``: a point's rate or burst is multiplied by
    the number of replicas, so variants of different sizes see the same load per replica)."""

    replicas: int = 0
    prefill_replicas: int = 0
    decode_replicas: int = 0
    groups: tuple = ()
    router: str = "round-robin"
    router_staleness_s: float = 1.0
    decode_router: str | None = None
    kv_link: str = "infiniband"
    power_cap_w: float | None = None
    server_power_cap_w: float | None = None
    gpus_per_server: int = 8
    power_budget_w: float | None = None
    power_clock_exponent: float = 1.0
    memory_clock_sensitivity: float = 0.1
    demand_per_replica: bool = False

    def __post_init__(self) -> None:
        groups = tuple(g if isinstance(g, ClusterGroupSection) else ClusterGroupSection(**g) for g in self.groups)
        object.__setattr__(self, "groups", groups)
        for name in ("replicas", "prefill_replicas", "decode_replicas"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        ways = sum((bool(self.replicas), bool(self.prefill_replicas or self.decode_replicas), bool(groups)))
        _check(ways == 1, "give exactly one of replicas, prefill_replicas + decode_replicas, or groups")
        _check(bool(self.prefill_replicas) == bool(self.decode_replicas),
               "prefill_replicas and decode_replicas go together (both >= 1)")
        from ..sim.gpus import get_link
        from ..sim.router import RouterKind
        RouterKind.parse(self.router)
        if self.decode_router is not None:
            RouterKind.parse(self.decode_router)
        get_link(self.kv_link)
        _positive("router_staleness_s", self.router_staleness_s, allow_zero=True)
        _check(self.gpus_per_server >= 1, f"gpus_per_server must be >= 1, got {self.gpus_per_server}")
        for name in ("power_cap_w", "server_power_cap_w", "power_budget_w"):
            _positive(name, getattr(self, name))

    @property
    def num_replicas(self) -> int:
        return self.replicas + self.prefill_replicas + self.decode_replicas + sum(g.replicas for g in self.groups)


@dataclass(frozen=True)
class Scenario:
    """One sweep to run: a deployment, its traffic, the axis, and how to judge the results."""

    name: str
    deployment: Deployment
    workload: WorkloadSection
    sweep: Sweep
    economics: Economics | None = None
    slos: tuple[SLO, ...] = ()
    regions: RegionRules = field(default_factory=RegionRules)
    advice: Advice = field(default_factory=Advice)
    description: str = ""
    exact: bool = False
    sample_interval_s: float = 0.2
    base_dir: str = "."
    cluster: ClusterSection | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        allowed = AXIS_KINDS[self.sweep.axis]
        _check(self.workload.kind in allowed,
               f"sweep axis {self.sweep.axis.value!r} needs workload kind one of "
               f"{[k.value for k in allowed]}, got {self.workload.kind.value!r}")
        kind = self.workload.kind
        if kind is ArrivalKind.CLOSED and self.sweep.axis is not Axis.CONCURRENCY:
            _check(self.workload.num_users is not None, "workload kind 'closed' needs num_users when the "
                                                        "sweep axis is not 'concurrency'")
        if kind in (ArrivalKind.POISSON, ArrivalKind.GAMMA) and self.sweep.axis is not Axis.RATE:
            _check(self.workload.rate is not None, f"workload kind {kind.value!r} needs rate when the sweep "
                                                   "axis is not 'rate'")
        if self.sweep.axis is Axis.INPUT_LEN or self.sweep.axis is Axis.OUTPUT_LEN:
            _check(self.workload.dataset == "fixed", "length axes need workload dataset 'fixed'")
        _positive("sample_interval_s", self.sample_interval_s)


@dataclass(frozen=True)
class ScenarioFile:
    """What one YAML file holds: its variants (the base first), compared in one report."""

    name: str
    description: str
    variants: tuple[Scenario, ...]
    source: str = ""

    def variant(self, name: str) -> Scenario:
        for sc in self.variants:
            if sc.name == name:
                return sc
        raise ValueError(f"no variant {name!r}; variants: {[v.name for v in self.variants]}")


def _enum(cls: type[Enum], value: object, name: str) -> Enum:
    try:
        return cls(value)
    except ValueError:
        raise ValueError(f"{name} must be one of {[m.value for m in cls]}, got {value!r}") from None
