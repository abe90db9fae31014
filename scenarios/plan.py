"""The capacity planner: the cheapest deployment meeting the SLOs at a target request rate.

``plan(PlanRequest(...))`` searches GPU type x tensor parallelism x ``max_num_seqs`` x replicas.
A deployment of ``r`` replicas behind a router sees ``demand / r`` requests/s per replica, so one
replica is simulated at that rate (Poisson or gamma arrivals, or a rescaled trace).  A candidate
is evaluated by ``seeds`` independent replications and ``profile_draws`` parametric-bootstrap
draws of the profile (:func:`evaluate`), each run as long as :class:`~.stability.ConvergenceRule`
asks; it is feasible when every run rejected nothing and kept up with its offered rate
(:mod:`.stability`: an unstable replica is refused whatever its percentiles say) and the
one-sided upper ``confidence`` bound of every SLO metric is within the SLO.  The answer is the
fewest such replicas, reported with the range down to the fewest that *may* meet the SLOs.

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

With ``disaggregated`` the same search also runs over prefill/decode pools of each (GPU, TP,
``max_num_seqs``): at each replica count the prefill:decode splits of
:data:`~.plan_disagg.DISAGG_RATIOS`, each simulated as the whole cluster with its KV transfer
(:mod:`.plan_disagg`); the options of both layouts are ranked together.

Costs come from :class:`~.schema.Costs` per GPU (default: :data:`DEFAULT_GPU_PRICES`, illustrative
on-demand rental prices) plus the simulated energy (:mod:`.economics`).
"""
from __future__ import annotations

import math
import os
import time
from concurrent.futures import ProcessPoolExecutor

from .assumptions import plan_assumptions
from .plan_disagg import search_pools
from .plan_search import (  # noqa: F401 (the planner's public names, re-exported)
    DEFAULT_GPU_PRICES,
    PROBE_MARGIN,
    Evaluation,
    PlanOption,
    PlanRequest,
    PlanResult,
    _option,
    _progress,
    add_economics_fixed,
    evaluate,
    fewest,
    meets,
    rejection,
    search_replicas,
)
from .plan_space import LONG_WORKLOAD_LEN, _deployment, _feasible, _scenario, model_len, probe  # noqa: F401 (re-exported)


def plan(req: PlanRequest) -> PlanResult:
    """Search the space of :class:`PlanRequest`; options ranked by cost per hour (cheapest first)."""
    t0 = time.perf_counter()
    pairs, infeasible = _feasible(req)
    workers = req.workers or os.cpu_count() or 1
    sims = 0
    rejected: list[tuple[str, int, int, int, str]] = []
    unmet: list[tuple[str, int, int, int, str]] = []
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
            for mns, (r, r_may, evals) in zip(req.max_num_seqs, pool.map(search_replicas, jobs)):
                sims += sum(e.num_simulations for e in evals.values())
                rejected += [(gpu, tp, mns, k, e.reason) for k, e in sorted(evals.items()) if e.reason]
                _progress(req, f"{gpu} TP{tp} max_num_seqs={mns} collocated: "
                               + (f"{r} replicas" if r is not None else "no answer") + f", {sims} simulations")
                if r is None:
                    last = max(evals) if evals else r_lo
                    unmet.append((gpu, tp, mns, last, evals[last].reason if evals else "not evaluated"))
                    continue
                opt = _option(req, gpu, tp, mns, r, r_may, evals[r])
                options.append(opt)
                best = min(best, opt.cost_per_h)
            if req.disaggregated:
                pooled, n_sims = search_pools(pool, req, gpu, tp, r_lo, r_cap, rejected, unmet)
                sims += n_sims
                options += pooled
                best = min([best] + [o.cost_per_h for o in pooled])
    options.sort(key=lambda o: (o.cost_per_h, o.num_gpus, o.row.get("p99_ttft_ms", math.inf)))
    result = PlanResult(options, infeasible, pruned, sims, time.perf_counter() - t0, rejected=rejected, unmet=unmet)
    result.assumptions = plan_assumptions(req, options[0] if options else None)
    return result
