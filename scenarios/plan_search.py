"""The planner's pieces: the request, a candidate's evaluation (seeds x profile draws, each run
as long as the stability rule asks), the replica search (doubling, then bisection) and the options
it yields.  :func:`.plan.plan` drives them over the deployment space, for collocated replicas and
(:mod:`.plan_disagg`) prefill/decode pools; both import from here, so neither imports the other."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..sim.uncertainty import Interval, combine
from .assumptions import finite
from .cluster_point import as_cluster, as_disaggregated
from .economics import add_economics
from .plan_space import _scenario
from .points import PointTask, run_converged, run_point
from .schema import SLO, ArrivalKind, Costs, Economics, Scenario, WorkloadSection
from .stability import ConvergenceRule, describe_instability, t_quantile

# Illustrative on-demand rental prices, USD per GPU-hour (2025 public cloud list prices, rounded);
# override with --gpu-price or a scenario's costs.
DEFAULT_GPU_PRICES = {"h100-sxm": 2.50, "h100-nvl": 2.30, "h100-pcie": 2.00, "h200": 3.20, "a100-80gb": 1.50,
                      "a100-40gb": 1.10, "b200": 4.50, "l40s": 0.90}
PROBE_MARGIN = 1.25  # the burst probe may understate the sustainable rate a little (ramp and drain)


@dataclass(frozen=True)
class PlanRequest:
    """What to plan for: a model, a demand in requests/s, the traffic, SLOs and the search space."""

    model: str
    demand_rps: float
    workload: WorkloadSection
    slos: tuple[SLO, ...]
    gpus: tuple[str, ...] = ("h100-sxm", "h200")
    tps: tuple[int, ...] = (1, 2, 4, 8)
    max_num_seqs: tuple[int, ...] = (64, 128, 256, 512)
    engine: str = "vllm-v1"
    weight_dtype: str | None = None
    kv_cache_dtype: str = "auto"
    costs: dict[str, Costs] = field(default_factory=dict)
    seed: int = 0
    probe_requests: int = 600
    max_replicas: int = 512
    slack: float = 0.3
    workers: int | None = None
    base_dir: str = "."
    max_model_len: int | None = None    # None: what the workload needs (see model_len)
    confidence: float = 0.95            # the SLOs must hold with this confidence
    seeds: int = 3                      # independent replications per candidate (workload uncertainty)
    profile_draws: int = 3              # parametric-bootstrap draws of the profile (0: nominal only)
    convergence: ConvergenceRule = field(default_factory=ConvergenceRule)
    # None: the ideal split (one replica simulated at demand / r).  A router name (sim/router.py):
    # the whole cluster of r replicas behind that router is simulated at the full demand, so
    # routing imbalance counts (docs/cluster.md); r times the simulation work per candidate.
    router: str | None = None
    router_staleness_s: float = 1.0
    # Also search prefill/decode pools (scenarios/plan_disagg.py): at each replica count the
    # prefill:decode splits of DISAGG_RATIOS, behind ``router`` (default round-robin), KV over ``kv_link``.
    disaggregated: bool = False
    kv_link: str = "infiniband"
    progress: bool = False              # one line per searched candidate on stderr

    def __post_init__(self) -> None:
        if not (self.demand_rps > 0 and math.isfinite(self.demand_rps)):
            raise ValueError(f"--demand must be a positive request rate (req/s), got {self.demand_rps}")
        if not self.slos:
            raise ValueError("plan needs at least one SLO, e.g. --slo 'p99_ttft_ms<=2000,p99_tpot_ms<=100'")
        if self.workload.kind not in (ArrivalKind.POISSON, ArrivalKind.GAMMA, ArrivalKind.TRACE):
            raise ValueError(f"plan needs open-loop traffic (poisson, gamma or trace), got {self.workload.kind.value}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"--confidence must be in [0.5, 1), got {self.confidence}")
        if self.seeds < 1 or self.profile_draws < 0:
            raise ValueError(f"--seeds must be >= 1 and --profile-draws >= 0, got {self.seeds}, {self.profile_draws}")
        if self.disaggregated and self.engine != "vllm-v1":
            raise ValueError(f"--disaggregated needs --engine vllm-v1 (vLLM's P/D connectors are v1-only), "
                             f"got {self.engine}")
        from ..sim.gpus import get_link
        get_link(self.kv_link)

    def costs_for(self, gpu: str) -> Costs:
        if gpu in self.costs:
            return self.costs[gpu]
        if gpu not in DEFAULT_GPU_PRICES:
            raise ValueError(f"no price for GPU {gpu!r}; give --gpu-price {gpu}=USD_PER_GPU_HOUR")
        return Costs(gpu_rental_per_gpu_hour=DEFAULT_GPU_PRICES[gpu])


@dataclass
class Evaluation:
    """``seeds`` replications (nominal profile) and ``profile_draws`` bootstrap draws of one
    candidate: a (GPU, TP, ``max_num_seqs``) with ``replicas`` replicas.

    ``meets``: every replication ran, rejected nothing and kept up with its offered rate, and the
    one-sided upper ``confidence`` bound of every SLO's metric is within the SLO; ``may_meet``:
    stable, and the one-sided *lower* bound is within every SLO (meeting cannot be ruled out).
    ``intervals`` hold the two-sided ``confidence`` interval of each SLO column and throughput."""

    replicas: int
    rows: list[dict]
    draws: list[dict]
    reason: str
    intervals: dict[str, Interval] = field(default_factory=dict)
    meets: bool = False
    may_meet: bool = False
    early: bool = False  # stopped after a seed over an SLO, before the others ran (may_meet unknown)

    @property
    def num_simulations(self) -> int:
        return len(self.rows) + len(self.draws)

    def mean_row(self) -> dict:
        """Seed mean of every numeric column (the first row's value for the others)."""
        out = dict(self.rows[0])
        for key, value in self.rows[0].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                vals = [r.get(key, math.nan) for r in self.rows]
                out[key] = float(np.mean(vals))
        return out


@dataclass
class PlanOption:
    """A deployment meeting the SLOs with ``confidence``: ``replicas`` (the count chosen) within
    ``replicas_range`` (the fewest that may meet them .. the fewest that meet them with confidence)."""

    gpu: str
    tp: int
    max_num_seqs: int
    replicas: int
    replicas_range: tuple[int, int]
    cost_per_h: float
    cost_per_h_range: tuple[float, float]
    cost_per_1m_tokens: float
    cost_per_1m_output_tokens: float
    per_replica_rps: float
    row: dict
    evaluation: Evaluation
    prefill_replicas: int = 0           # > 0: disaggregated, replicas = prefill + decode
    decode_replicas: int = 0

    @property
    def num_gpus(self) -> int:
        return self.replicas * self.tp

    @property
    def layout(self) -> str:
        return f"{self.prefill_replicas}P+{self.decode_replicas}D" if self.prefill_replicas else "collocated"

    def to_dict(self) -> dict:
        """The option for machines (``servesim plan --json``): figures with their intervals."""
        ivs = {k: iv.to_dict() for k, iv in self.evaluation.intervals.items()}
        return {"gpu": self.gpu, "tp": self.tp, "max_num_seqs": self.max_num_seqs, "replicas": self.replicas,
                "layout": "disaggregated" if self.prefill_replicas else "collocated",
                "prefill_replicas": self.prefill_replicas, "decode_replicas": self.decode_replicas,
                "replicas_range": list(self.replicas_range), "num_gpus": self.num_gpus,
                "num_gpus_range": [r * self.tp for r in self.replicas_range],
                "cost_per_hour": self.cost_per_h, "cost_per_hour_range": list(self.cost_per_h_range),
                "cost_per_1m_tokens": self.cost_per_1m_tokens,
                "cost_per_1m_output_tokens": self.cost_per_1m_output_tokens,
                "per_replica_rps": self.per_replica_rps, "predictions": ivs,
                "stable": bool(all(r.get("stable", True) for r in self.evaluation.rows)),
                "rate_shortfall": finite(self.row.get("rate_shortfall", math.nan)),
                "num_requests_per_run": [int(r.get("num_requests", 0)) for r in self.evaluation.rows],
                "converged": [bool(r.get("converged", True)) for r in self.evaluation.rows]}


@dataclass
class PlanResult:
    options: list[PlanOption]
    infeasible: list[tuple[str, int, str]]
    pruned: list[tuple[str, int, float]]
    num_simulations: int
    wall_s: float
    assumptions: dict = field(default_factory=dict)
    rejected: list[tuple[str, int, int, int, str]] = field(default_factory=list)  # gpu, tp, mns, replicas, why
    unmet: list[tuple[str, int, int, int, str]] = field(default_factory=list)  # searched, no answer up to replicas


def rejection(row: dict) -> str:
    """Why one simulated point cannot be an answer (empty: it can): an engine refusal, rejected
    requests, or an unstable run (the achieved rate falls short of the offered one)."""
    if row.get("error"):
        return str(row["error"])
    if row.get("failed", 0) > 0:
        return f"{int(row['failed'])} request(s) rejected"
    return describe_instability(row)


def meets(row: dict, slos: tuple[SLO, ...]) -> bool:
    """The simulated point ran, rejected nothing, kept up with its offered rate and meets every SLO."""
    if rejection(row):
        return False
    return all(row.get(s.column, math.inf) <= s.max_ms for s in slos)


INTERVAL_COLUMNS = ("request_throughput", "output_throughput", "mean_gpu_power_w", "energy_per_output_token_j")


def evaluate(req: PlanRequest, sc: Scenario, r: int, stop_early: bool = True,
             split: tuple[int, int] | None = None) -> Evaluation:
    """Replications of ``sc`` at ``demand / r`` per replica (see :class:`Evaluation`): one replica,
    with ``req.router`` the whole cluster of ``r``, with ``split = (P, D)`` (``P + D = r``) a
    prefill pool of P and a decode pool of D; stops at the first seed that cannot be an answer,
    since one unstable replication already refuses the candidate (and, with ``stop_early``, at the
    first seed whose SLO metric alone decides it)."""
    rate = req.demand_rps / r
    if split is not None:
        assert sum(split) == r
        sc = as_disaggregated(sc, split[0], split[1], req.router or "round-robin", req.router_staleness_s,
                              req.kv_link)
    elif req.router is not None:  # the whole cluster of r replicas at r times a replica's rate
        sc = as_cluster(sc, r, req.router, req.router_staleness_s)
    fixed = bool(req.workload.num_requests or req.workload.duration_s)
    rule = req.convergence
    if sc.workload.kind is ArrivalKind.TRACE:  # seeds replay disjoint windows of the trace, or they are not independent
        from .points import _full_trace, trace_file
        rows = len(_full_trace(str(trace_file(sc.workload.trace, sc.base_dir))))
        cap = max(rule.min_requests, rows // req.seeds)
        rule = replace(rule, max_requests=min(rule.max_requests, cap), min_requests=min(rule.min_requests, cap))

    def run(seed: int, draw: int | None) -> dict:
        task = PointTask(sc, rate, seed, profile_draw=draw)
        return run_point(task).row if fixed else run_converged(task, rule).row

    # With t_{c, R-1} >= R - 1 (R <= 3 seeds at 95%), the one-sided upper bound is at least the
    # largest seed's value (no sample lies more than (R-1)/sqrt(R) sd from the mean), so one seed
    # over an SLO already decides that the candidate does not meet it with confidence.
    decisive = t_quantile(req.confidence, req.seeds - 1, two_sided=False) >= req.seeds - 1
    rows: list[dict] = []
    for i in range(req.seeds):
        rows.append(run(req.seed + i, None))
        why = rejection(rows[-1])
        if not why and stop_early and decisive and req.seeds > 1:
            over = [s for s in req.slos if rows[-1].get(s.column, math.inf) > s.max_ms]
            why = f"{over[0]} fails ({rows[-1].get(over[0].column, math.nan):,.0f})" if over else ""
        if why:
            return Evaluation(r, rows, [], f"seed {req.seed + i}: {why}", early=not rejection(rows[-1]))
    draws = [run(req.seed, j) for j in range(req.profile_draws)]
    bad = [d for d in draws if rejection(d)]
    one_sided = 2 * req.confidence - 1  # the ends of this two-sided interval are one-sided bounds
    meets_all, may_all, intervals = True, True, {}
    for s in req.slos:
        seeds_v = [row.get(s.column, math.nan) for row in rows]
        draws_v = [d.get(s.column, math.nan) for d in draws]
        bound = combine(seeds_v, draws_v, one_sided)
        intervals[s.column] = combine(seeds_v, draws_v, req.confidence, floor=0.0)
        meets_all &= bound.hi <= s.max_ms
        may_all &= bound.lo <= s.max_ms
    for col in INTERVAL_COLUMNS:
        intervals[col] = combine([row.get(col, math.nan) for row in rows], [d.get(col, math.nan) for d in draws],
                                 req.confidence, floor=0.0)
    reason = ""
    if bad:
        meets_all = False
        reason = f"{len(bad)} of {len(draws)} profile draws cannot serve it ({rejection(bad[0])})"
    elif not meets_all:
        reason = f"SLOs not met with {req.confidence:.0%} confidence"
    return Evaluation(r, rows, draws, reason, intervals, meets_all, may_all)


def search_replicas(args: tuple[PlanRequest, str, int, int, int, int]
                    ) -> tuple[int | None, int | None, dict[int, Evaluation]]:
    """Fewest replicas in ``[r_lo, r_cap]`` meeting the SLOs with confidence, the fewest that may
    meet them (the optimistic end of the range), and every evaluation made.

    The first is None when even ``r_cap`` replicas fail (``r_cap``: the most replicas that could
    still be within the slack of the best cost found so far, or ``max_replicas``)."""
    req, gpu, tp, mns, r_lo, r_cap = args
    sc = _scenario(req, gpu, tp, mns)
    evals: dict[int, Evaluation] = {}

    def ok(r: int) -> bool:
        if r not in evals:
            evals[r] = evaluate(req, sc, r)
        return evals[r].meets

    hi = fewest(ok, r_lo, r_cap, lambda r: bool(evals[r].rows[0].get("error")))
    if hi is None:
        return None, None, evals
    r_may = hi
    while r_may > 1:
        if r_may - 1 not in evals or evals[r_may - 1].early:
            evals[r_may - 1] = evaluate(req, sc, r_may - 1, stop_early=False)
        if not evals[r_may - 1].may_meet:
            break
        r_may -= 1
    return hi, r_may, evals


def fewest(ok, r_lo: int, r_cap: int, hopeless) -> int | None:
    """Fewest ``r`` in ``[r_lo, r_cap]`` with ``ok(r)`` (monotone): doubling steps from ``r_lo``,
    then bisection; None when ``r_cap`` fails or ``hopeless(r)`` (an engine refusal) stops it."""
    if ok(r_lo):
        return r_lo
    lo, step = r_lo, 1
    while True:
        cand = min(lo + step, r_cap)
        if cand <= lo:
            return None
        if ok(cand):
            hi = cand
            break
        if cand >= r_cap or hopeless(cand):
            return None
        lo, step = cand, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _option(req: PlanRequest, gpu: str, tp: int, mns: int, r: int, r_may: int, ev: Evaluation,
            split: tuple[int, int] = (0, 0)) -> PlanOption:
    import pandas as pd
    row = ev.mean_row()
    priced = add_economics(pd.DataFrame([row]), Economics(costs=req.costs_for(gpu)), tp=tp).iloc[0]
    # A cluster row (plan --router, --disaggregated) is priced for all its GPUs (num_gpus_total).
    cost = float(priced["cost_per_h"]) * (1 if "num_gpus_total" in row else r)
    per_replica = cost / r
    per_req_tokens = (row["total_input_tokens"] + row["total_output_tokens"]) / max(row["completed"], 1)
    per_req_out = row["total_output_tokens"] / max(row["completed"], 1)
    tokens_m_per_h = req.demand_rps * 3600 / 1e6
    return PlanOption(gpu, tp, mns, r, (r_may, r), cost, (per_replica * r_may, cost),
                      cost / (tokens_m_per_h * per_req_tokens), cost / (tokens_m_per_h * per_req_out),
                      req.demand_rps / r, row, ev, *split)


def _progress(req: PlanRequest, text: str) -> None:
    if req.progress:
        import sys
        print(f"[plan] {text}", file=sys.stderr, flush=True)


def add_economics_fixed(req: PlanRequest, gpu: str, tp: int) -> float:
    """Fixed cost per hour of one replica (the energy term is added once simulated)."""
    from .economics import fixed_cost_per_gpu_hour
    return tp * fixed_cost_per_gpu_hour(req.costs_for(gpu))
