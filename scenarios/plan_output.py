"""How ``servesim plan`` shows its answer: a table for people, JSON for machines.

Both carry the interval of every figure (replicas as a range, latencies and throughput with their
confidence interval and the share of the uncertainty that comes from the workload and from the
profile) and the assumptions the answer rests on (:func:`.plan.plan_assumptions`).
"""
from __future__ import annotations

import math
import sys

from .assumptions import describe_lengths, finite
from .plan_search import PlanOption, PlanRequest, PlanResult

WHY_SWEEP_DIFFERS = ("`servesim sweep` advice answers another question: its best point is the maximum-profit "
                     "point (or saturation) capped by the SLO limit of one replica's curve, and it sizes a fleet "
                     "as ceil(target / best point); plan finds the cheapest fleet whose replicas meet the SLOs "
                     "with the stated confidence at demand / replicas. They agree when the SLO limit binds "
                     "and the sweep's grid and run length resolve it.")


def _iv(option, column: str) -> str:
    iv = option.evaluation.intervals.get(column)
    if iv is None or not math.isfinite(iv.value):
        return "n/a"
    return f"{iv.value:,.0f} [{iv.lo:,.0f}, {iv.hi:,.0f}]"


def print_plan(args, req: PlanRequest, result: PlanResult, file=None) -> None:
    file = file or sys.stdout
    p = lambda *a: print(*a, file=file)  # noqa: E731
    p(f"servesim plan: {args.model}, {args.demand:g} req/s, workload {args.workload}, SLOs "
      f"{', '.join(map(str, req.slos))}, {req.confidence:.0%} confidence")
    first = req.slos[0].column
    p(f"  {'#':>2} {'GPU':<10} {'TP':>2} {'max_num_seqs':>12} {'replicas':>9} {'GPUs':>7} {'USD/h':>8} "
      f"{'USD/1M tok':>10} {'USD/1M out':>10} {'req/s/node':>10} {first + ' (CI)':>24} {'p95 running':>11}")
    for i, o in enumerate(result.options[:args.top], start=1):
        lo, hi = o.replicas_range
        reps = f"{hi}" if lo == hi else f"{lo}-{hi}"
        if o.prefill_replicas:
            reps = o.layout if lo == hi else f"{lo}-{o.layout}"
        gpus = f"{o.num_gpus}" if lo == hi else f"{lo * o.tp}-{hi * o.tp}"
        p(f"  {i:>2} {o.gpu:<10} {o.tp:>2} {o.max_num_seqs:>12} {reps:>9} {gpus:>7} {o.cost_per_h:>8.2f} "
          f"{o.cost_per_1m_tokens:>10.4f} {o.cost_per_1m_output_tokens:>10.4f} {o.per_replica_rps:>10.3g} "
          f"{_iv(o, first):>24} {o.row.get('p95_num_running', float('nan')):>11.0f}")
    if not result.options:
        p("  no deployment in the search space meets the SLOs with the stated confidence")
    for gpu, tp, why in result.infeasible:
        p(f"  skipped {gpu} TP{tp}: {why}")
    for gpu, tp, mns, r, why in result.unmet:
        p(f"  no answer on {gpu} TP{tp} max_num_seqs={mns} up to {r} replicas (the cost cap): {why}")
    for gpu, tp, bound in result.pruned:
        p(f"  pruned {gpu} TP{tp}: cost bound {bound:.2f} USD/h exceeds the best found by more than {req.slack:.0%}")
    if result.options:
        best = result.options[0]
        lo, hi = best.replicas_range
        what = (f"{best.prefill_replicas} prefill + {best.decode_replicas} decode replicas" if best.prefill_replicas
                else str(best.replicas))
        p(f"  advice: {what} x {best.gpu} TP{best.tp} with max_num_seqs={best.max_num_seqs} "
          f"(admission limit per node), {best.per_replica_rps:.3g} req/s per node"
          + (" on average (the prefill pool takes every request, the decode pool every KV); "
             if best.prefill_replicas else "; ")
          + (f"{best.replicas} is the fewest meeting the SLOs with {req.confidence:.0%} confidence" +
             (f", {lo} may suffice" if lo < hi else "")))
        refused = [r for r in result.rejected if r[:3] == (best.gpu, best.tp, best.max_num_seqs) and r[3] < lo
                   and ("D pools: " in r[4]) == bool(best.prefill_replicas)]  # the answer's own layout
        for gpu, tp, _mns, r, why in refused[-2:]:
            p(f"  refused {r} x {gpu} TP{tp}: {why}")
        for col in (first, "request_throughput"):
            iv = best.evaluation.intervals.get(col)
            if iv is not None and math.isfinite(iv.workload_share):
                p(f"  uncertainty of {col} at the answer: {iv.workload_share:.0%} workload (seeds), "
                  f"{iv.profile_share:.0%} profile (coefficient stderr)")
    if req.disaggregated:
        _print_layouts(req, result, p)
    _print_assumptions(result.assumptions, p)
    p(f"  note: {WHY_SWEEP_DIFFERS}")


def best_by_layout(result: PlanResult) -> dict[str, PlanOption | None]:
    """The cheapest collocated and the cheapest disaggregated option (None where there is none)."""
    out: dict[str, PlanOption | None] = {"collocated": None, "disaggregated": None}
    for o in result.options:  # ranked cheapest first
        key = "disaggregated" if o.prefill_replicas else "collocated"
        if out[key] is None:
            out[key] = o
    return out


def _print_layouts(req: PlanRequest, result: PlanResult, p) -> None:
    """Collocated against disaggregated: each one's cheapest answer with its cost and energy per
    token and every SLO metric's confidence interval."""
    p(f"  collocated vs disaggregated (prefill:decode pools, KV over {req.kv_link}; "
      f"{req.confidence:.0%} intervals; seeds and profile draws):")
    for layout, o in best_by_layout(result).items():
        if o is None:
            p(f"    {layout:<13} no answer in the search space")
            continue
        slos = ", ".join(f"{s.column} {_iv(o, s.column)}" for s in req.slos)
        p(f"    {layout:<13} {o.layout if o.prefill_replicas else str(o.replicas) + ' replicas'} x {o.gpu} "
          f"TP{o.tp} mns={o.max_num_seqs}: {o.num_gpus} GPUs, {o.cost_per_h:,.2f} USD/h, "
          f"{o.cost_per_1m_output_tokens:.4f} USD/1M out, J/out token {_iv2(o, 'energy_per_output_token_j')}; {slos}")
    both = [o for o in best_by_layout(result).values() if o is not None]
    if len(both) == 2:
        cheaper = min(both, key=lambda o: o.cost_per_h)
        p(f"    cheaper: {'disaggregated' if cheaper.prefill_replicas else 'collocated'} "
          f"({abs(both[0].cost_per_h - both[1].cost_per_h):,.2f} USD/h apart)")


def _iv2(option, column: str) -> str:
    iv = option.evaluation.intervals.get(column)
    if iv is None or not math.isfinite(iv.value):
        return "n/a"
    return f"{iv.value:.3g} [{iv.lo:.3g}, {iv.hi:.3g}]"


def _print_assumptions(a: dict, p) -> None:
    prof, wl = a.get("profile", {}), a.get("workload", {})
    p("  assumptions:")
    if "error" not in prof:
        errs = prof.get("fit_median_abs_rel_error", {})
        err = ", ".join(f"{k} {v:.0%}" for k, v in list(errs.items())[:6])
        p(f"    profile {prof.get('name')} (vLLM {prof.get('engine_version')}, measured on {prof.get('measured_on_gpu')}, "
          f"sha256 {prof.get('sha256', '')[:12]}); fit error (median |rel|): {err or 'not recorded'}")
        if prof.get("priors"):
            p(f"    priors, not measurements: {', '.join(prof['priors'])}")
        if prof.get("borrowed_efficiencies"):
            p(f"    {prof['borrowed_efficiencies']}")
    p(f"    traffic: {wl.get('arrivals')} arrivals, dataset {wl.get('dataset')}: {describe_lengths(wl)}")
    p(f"    router: {a.get('router')}")
    p(f"    run length: {a.get('run_length')}")
    p(f"    stability: {a.get('stability')}")


def plan_json(req: PlanRequest, result: PlanResult) -> dict:
    """``{"best": {...}, "options": [...], "assumptions": {...}, ...}`` (docs/scenarios.md)."""
    options = [o.to_dict() for o in result.options]
    layouts = {k: (None if o is None else o.to_dict()) for k, o in best_by_layout(result).items()}
    return {"question": {"demand_rps": req.demand_rps, "slos": [str(s) for s in req.slos],
                         "confidence": req.confidence, "seeds": req.seeds, "profile_draws": req.profile_draws},
            "best": options[0] if options else None, "options": options,
            **({"best_by_layout": layouts} if req.disaggregated else {}),
            "assumptions": result.assumptions,
            "infeasible": [{"gpu": g, "tp": t, "why": w} for g, t, w in result.infeasible],
            "pruned": [{"gpu": g, "tp": t, "cost_bound_per_hour": finite(b)} for g, t, b in result.pruned],
            "unmet": [{"gpu": g, "tp": t, "max_num_seqs": m, "up_to_replicas": r, "why": w}
                      for g, t, m, r, w in result.unmet],
            "refused": [{"gpu": g, "tp": t, "max_num_seqs": m, "replicas": r, "why": w}
                        for g, t, m, r, w in result.rejected],
            "num_simulations": result.num_simulations, "wall_s": result.wall_s,
            "note": WHY_SWEEP_DIFFERS}
