"""``servesim plan --disaggregated``: prefill/decode pools as candidates beside collocated replicas.

At a total of ``n`` replicas of one (GPU, TP, ``max_num_seqs``) (so ``n x TP`` GPUs, the same GPU
count as ``n`` collocated replicas), the candidates are the prefill:decode splits
``(P, n - P)`` nearest each ratio of :data:`DISAGG_RATIOS` (``P >= 1``, ``n - P >= 1``; duplicates
once).  Each is simulated as the whole cluster (:mod:`servesim.sim.cluster`): the prefill pool behind
the plan's router (round-robin when none is given), the KV moved over the plan's link from the
catalogue (``sim/gpus.py`` ``LINK_CATALOG``, default InfiniBand), the decode pool behind the same
router, at the full demand.

Search: ``n`` feasible when *some* split of ``n`` meets the SLOs with confidence (the splits are
tried in :data:`DISAGG_RATIOS` order and the first that meets ends the try); the fewest ``n`` is found
by the same doubling and bisection as collocated replicas (:func:`.plan.fewest`, from the
collocated probe's lower bound, at least 2).  At the answer every split is evaluated and the one with
the lowest energy per output token is kept (at equal GPUs the rental is equal; energy decides),
reported with the range down to the fewest ``n`` some split of which *may* meet the SLOs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .plan_search import Evaluation, _option, _progress, evaluate, fewest
from .plan_space import _scenario

if TYPE_CHECKING:
    from .plan_search import PlanOption, PlanRequest

# prefill:decode ratios tried at each replica count (bounded: at most 5 splits per count)
DISAGG_RATIOS: tuple[tuple[int, int], ...] = ((1, 1), (2, 1), (1, 2), (3, 1), (1, 3))

Split = tuple[int, int]


def splits(n: int) -> list[Split]:
    """The distinct ``(P, D)`` with ``P + D = n`` nearest each ratio (empty below 2 replicas)."""
    out: list[Split] = []
    if n < 2:
        return out
    for p_share, d_share in DISAGG_RATIOS:
        p = max(1, min(n - 1, round(n * p_share / (p_share + d_share))))
        if (p, n - p) not in out:
            out.append((p, n - p))
    return out


def search_split(args: tuple) -> tuple[Split | None, int | None, dict[Split, Evaluation]]:
    """The best split of the fewest replicas meeting the SLOs (None if none up to ``r_cap``), the
    fewest replicas some split of which may meet them, and every evaluation made."""
    req, gpu, tp, mns, r_lo, r_cap = args
    sc = _scenario(req, gpu, tp, mns)
    evals: dict[Split, Evaluation] = {}

    def ev(split: Split, stop_early: bool = True) -> Evaluation:
        if split not in evals or (not stop_early and evals[split].early):
            evals[split] = evaluate(req, sc, sum(split), stop_early, split=split)
        return evals[split]

    def ok(n: int) -> bool:
        return any(ev(s).meets for s in splits(n))

    def hopeless(n: int) -> bool:
        return all(evals[s].rows[0].get("error") for s in splits(n) if s in evals)

    lo = max(2, r_lo)
    n = fewest(ok, lo, max(lo, r_cap), hopeless)
    if n is None:
        return None, None, evals
    best = min((s for s in splits(n) if ev(s).meets),
               key=lambda s: (evals[s].mean_row().get("energy_per_output_token_j", 0.0), s))
    n_may = n
    while n_may > 2 and any(ev(s, stop_early=False).may_meet for s in splits(n_may - 1)):
        n_may -= 1
    return best, n_may, evals


def search_pools(pool, req: PlanRequest, gpu: str, tp: int, r_lo: int, r_cap: int, rejected: list,
                 unmet: list) -> tuple[list[PlanOption], int]:
    """Disaggregated options of one (GPU, TP), one per ``max_num_seqs`` that has an answer, and the
    number of simulations run; refusals and unanswered searches are appended to ``rejected`` and
    ``unmet`` as :func:`.plan.plan` does for collocated ones (``replicas`` = P + D)."""
    jobs = [(req, gpu, tp, mns, r_lo, r_cap) for mns in req.max_num_seqs]
    options, sims = [], 0
    for mns, (split, n_may, evals) in zip(req.max_num_seqs, pool.map(search_split, jobs)):
        sims += sum(e.num_simulations for e in evals.values())
        rejected += [(gpu, tp, mns, sum(s), f"{s[0]}P+{s[1]}D pools: {e.reason}")
                     for s, e in sorted(evals.items(), key=lambda kv: (sum(kv[0]), kv[0])) if e.reason]
        _progress(req, f"{gpu} TP{tp} max_num_seqs={mns} disaggregated: "
                       + (f"{split[0]}P+{split[1]}D" if split else "no answer") + f", {sims} simulations")
        if split is None or n_may is None:
            last = max(evals, key=lambda s: (sum(s), s)) if evals else (0, 0)
            unmet.append((gpu, tp, mns, sum(last), f"disaggregated: {evals[last].reason}" if evals
                          else "disaggregated: not evaluated"))
            continue
        options.append(_option(req, gpu, tp, mns, sum(split), n_may, evals[split], split))
    return options, sims


__all__ = ["DISAGG_RATIOS", "search_pools", "search_split", "splits"]
