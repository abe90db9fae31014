"""The capacity planner: the cheapest deployment meeting the SLOs at a target request rate.

``plan(PlanRequest(...))`` searches GPU type x tensor parallelism x ``max_num_seqs`` x replicas.
A deployment of ``r`` replicas behind a router sees ``demand / r`` requests/s per replica, so one
replica is simulated at that rate (Poisson or gamma arrivals, or a rescaled trace) and the option
is feasible when the simulated latencies meet every SLO and no request is rejected.

Pruning keeps it interactive:

1. **memory**: a (GPU, TP) whose weights do not fit, or whose TP does not divide the attention
   heads, is dropped without simulating (the reason is listed);
2. **throughput bound**: one saturated probe per (GPU, TP) (a burst of ``probe_requests`` at the
   largest ``max_num_seqs``) gives the peak request rate ``mu``; no fewer than
   ``r_lo = ceil(demand / (PROBE_MARGIN * mu))`` replicas can work, so ``r_lo`` replicas bound
   its cost from below;
3. **branch and bound**: (GPU, TP) pairs are searched cheapest bound first; a pair whose bound
   exceeds ``(1 + slack)`` times the best cost found is not searched;
4. **replica search**: from ``r_lo``, replicas double until the SLOs hold, then bisect (latency is
   monotone in the per-replica rate), never beyond the replicas that would cost more than
   ``(1 + slack)`` times the best found; every ``max_num_seqs`` of a pair runs in its own process.

Costs come from :class:`~.schema.Costs` per GPU (default: :data:`DEFAULT_GPU_PRICES`, illustrative
on-demand rental prices) plus the simulated energy (:mod:`.economics`).
"""
from __future__ import annotations

import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace

from .economics import add_economics
from .points import PointTask, engine_config, run_point
from .schema import SLO, ArrivalKind, Axis, Costs, Deployment, Economics, EngineKnobs, Scenario, Sweep, WorkloadSection

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

    def __post_init__(self) -> None:
        if not (self.demand_rps > 0 and math.isfinite(self.demand_rps)):
            raise ValueError(f"--demand must be a positive request rate (req/s), got {self.demand_rps}")
        if not self.slos:
            raise ValueError("plan needs at least one SLO, e.g. --slo 'p99_ttft_ms<=2000,p99_tpot_ms<=100'")
        if self.workload.kind not in (ArrivalKind.POISSON, ArrivalKind.GAMMA, ArrivalKind.TRACE):
            raise ValueError(f"plan needs open-loop traffic (poisson, gamma or trace), got {self.workload.kind.value}")

    def costs_for(self, gpu: str) -> Costs:
        if gpu in self.costs:
            return self.costs[gpu]
        if gpu not in DEFAULT_GPU_PRICES:
            raise ValueError(f"no price for GPU {gpu!r}; give --gpu-price {gpu}=USD_PER_GPU_HOUR")
        return Costs(gpu_rental_per_gpu_hour=DEFAULT_GPU_PRICES[gpu])


@dataclass
class PlanOption:
    gpu: str
    tp: int
    max_num_seqs: int
    replicas: int
    cost_per_h: float
    cost_per_1m_tokens: float
    cost_per_1m_output_tokens: float
    per_replica_rps: float
    row: dict

    @property
    def num_gpus(self) -> int:
        return self.replicas * self.tp


@dataclass
class PlanResult:
    options: list[PlanOption]
    infeasible: list[tuple[str, int, str]]
    pruned: list[tuple[str, int, float]]
    num_simulations: int
    wall_s: float


LONG_WORKLOAD_LEN = 16384  # max_model_len for workloads whose longest request is not known up front


def model_len(req: PlanRequest, context: int) -> int:
    """``max_model_len`` for the search: the workload's longest request (fixed or random lengths),
    else :data:`LONG_WORKLOAD_LEN`, capped at the model's context.  vLLM refuses a replica whose KV
    cache cannot hold one ``max_model_len`` sequence, so the model's full context (e.g. 128k)
    would wrongly rule out small GPUs."""
    if req.max_model_len:
        return req.max_model_len
    w = req.workload
    if w.dataset == "fixed" and w.kind is not ArrivalKind.TRACE:
        need = w.input_len + w.output_len
    elif w.dataset == "random":
        need = math.ceil((w.input_len + w.output_len) * (1 + w.range_ratio)) + 2
    else:
        need = LONG_WORKLOAD_LEN
    return min(context, max(1024, need))


def _deployment(req: PlanRequest, gpu: str, tp: int, mns: int | None) -> Deployment:
    from ..sim.model_catalog import get_model
    return Deployment(model=req.model, gpu=gpu, tp=tp, engine=req.engine, weight_dtype=req.weight_dtype,
                      kv_cache_dtype=req.kv_cache_dtype,
                      knobs=EngineKnobs(max_num_seqs=mns,
                                        max_model_len=model_len(req, get_model(req.model).max_position_embeddings)))


def _scenario(req: PlanRequest, gpu: str, tp: int, mns: int | None) -> Scenario:
    dep = _deployment(req, gpu, tp, mns)
    return Scenario(name=f"{gpu}-tp{tp}-mns{mns}", deployment=dep, workload=req.workload,
                    sweep=Sweep(Axis.RATE, (1.0,), (req.seed,)), slos=req.slos, base_dir=req.base_dir)


def meets(row: dict, slos: tuple[SLO, ...]) -> bool:
    """The simulated point ran, rejected nothing and meets every SLO."""
    if row.get("error") or row.get("failed", 0) > 0:
        return False
    return all(row.get(s.column, math.inf) <= s.max_ms for s in slos)


def probe(args: tuple[PlanRequest, str, int]) -> tuple[str, int, float, str]:
    """Peak request rate of one (GPU, TP) at its largest ``max_num_seqs`` (a saturated burst)."""
    req, gpu, tp = args
    sc = _scenario(req, gpu, tp, max(req.max_num_seqs))
    sc = replace(sc, workload=replace(sc.workload, num_requests=req.probe_requests))
    row = run_point(PointTask(sc, 1e6, req.seed)).row  # 1e6 req/s: effectively everything at once
    return gpu, tp, float(row.get("request_throughput", 0.0) or 0.0), row.get("error", "")


def search_replicas(args: tuple[PlanRequest, str, int, int, int, int]) -> tuple[int | None, dict, int]:
    """Fewest replicas in ``[r_lo, r_cap]`` whose per-replica rate meets the SLOs; (r, row, simulations).

    ``r` is None when even ``r_cap`` replicas fail (``r_cap``: the most replicas that could still be
    within the slack of the best cost found so far, or ``max_replicas``)."""
    req, gpu, tp, mns, r_lo, r_cap = args
    sc = _scenario(req, gpu, tp, mns)
    rows: dict[int, dict] = {}

    def ok(r: int) -> bool:
        rows[r] = run_point(PointTask(sc, req.demand_rps / r, req.seed)).row
        return meets(rows[r], req.slos)

    if ok(r_lo):
        return r_lo, rows[r_lo], len(rows)
    lo, step = r_lo, 1
    while True:
        hi = min(lo + step, r_cap)
        if hi <= lo:
            return None, rows[lo], len(rows)
        if ok(hi):
            break
        if hi >= r_cap or rows[hi].get("error"):
            return None, rows[hi], len(rows)
        lo, step = hi, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi, rows[hi], len(rows)


def _feasible(req: PlanRequest) -> tuple[list[tuple[str, int]], list[tuple[str, int, str]]]:
    from ..sim.memory import kv_capacity
    from .points import resolve_model
    pairs, infeasible = [], []
    for gpu in req.gpus:
        for tp in req.tps:
            dep = _deployment(req, gpu, tp, max(req.max_num_seqs))
            model = resolve_model(dep, req.base_dir)
            if model.num_attention_heads % tp or (model.num_key_value_heads % tp and tp % model.num_key_value_heads):
                infeasible.append((gpu, tp, f"TP {tp} does not divide {model.num_attention_heads} attention heads "
                                            f"/ {model.num_key_value_heads} KV heads"))
                continue
            try:
                kv_capacity(engine_config(dep, req.base_dir))
            except ValueError as exc:
                infeasible.append((gpu, tp, str(exc).split(". ")[0]))
                continue
            pairs.append((gpu, tp))
    return pairs, infeasible


def _option(req: PlanRequest, gpu: str, tp: int, mns: int, r: int, row: dict) -> PlanOption:
    import pandas as pd
    priced = add_economics(pd.DataFrame([row]), Economics(costs=req.costs_for(gpu)), tp=tp).iloc[0]
    cost = float(priced["cost_per_h"]) * r
    per_req_tokens = (row["total_input_tokens"] + row["total_output_tokens"]) / max(row["completed"], 1)
    per_req_out = row["total_output_tokens"] / max(row["completed"], 1)
    tokens_m_per_h = req.demand_rps * 3600 / 1e6
    return PlanOption(gpu, tp, mns, r, cost, cost / (tokens_m_per_h * per_req_tokens),
                      cost / (tokens_m_per_h * per_req_out), req.demand_rps / r, row)


def plan(req: PlanRequest) -> PlanResult:
    """Search the space of :class:`PlanRequest`; options ranked by cost per hour (cheapest first)."""
    t0 = time.perf_counter()
    pairs, infeasible = _feasible(req)
    workers = req.workers or os.cpu_count() or 1
    sims = 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        bounds = []
        for gpu, tp, mu, err in pool.map(probe, [(req, g, t) for g, t in pairs]):
            sims += 1
            if err or mu <= 0:
                infeasible.append((gpu, tp, err or "the probe completed no request"))
                continue
            r_lo = max(1, math.ceil(req.demand_rps / (PROBE_MARGIN * mu)))
            fixed = add_economics_fixed(req, gpu, tp)
            bounds.append((r_lo * fixed, gpu, tp, r_lo))
        bounds.sort()
        options: list[PlanOption] = []
        pruned: list[tuple[str, int, float]] = []
        best = math.inf
        for bound, gpu, tp, r_lo in bounds:
            if bound > best * (1 + req.slack):
                pruned.append((gpu, tp, bound))
                continue
            fixed = bound / r_lo
            r_cap = req.max_replicas if math.isinf(best) else max(r_lo, int(best * (1 + req.slack) / fixed))
            jobs = [(req, gpu, tp, mns, r_lo, r_cap) for mns in req.max_num_seqs]
            for mns, (r, row, n) in zip(req.max_num_seqs, pool.map(search_replicas, jobs)):
                sims += n
                if r is None:
                    continue
                opt = _option(req, gpu, tp, mns, r, row)
                options.append(opt)
                best = min(best, opt.cost_per_h)
    options.sort(key=lambda o: (o.cost_per_h, o.num_gpus, o.row.get("p99_ttft_ms", math.inf)))
    return PlanResult(options, infeasible, pruned, sims, time.perf_counter() - t0)


def add_economics_fixed(req: PlanRequest, gpu: str, tp: int) -> float:
    """Fixed cost per hour of one replica (the energy term is added once simulated)."""
    from .economics import fixed_cost_per_gpu_hour
    return tp * fixed_cost_per_gpu_hour(req.costs_for(gpu))
