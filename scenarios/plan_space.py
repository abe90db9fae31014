"""The search space of ``servesim plan`` (:mod:`.plan`): the deployment of a (GPU, TP,
``max_num_seqs``), which (GPU, TP) pairs fit in memory, and the saturated probe that bounds a
pair's replica count from below."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from .points import PointTask, engine_config, run_point
from .schema import ArrivalKind, Axis, Deployment, EngineKnobs, Scenario, Sweep

if TYPE_CHECKING:
    from .plan_search import PlanRequest


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
    elif w.dataset == "sharegpt" and w.kind is not ArrivalKind.TRACE:
        from ..sim.lengths import first_turn_table
        inputs, outputs = first_turn_table()
        need = int((inputs + outputs).max())
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


def probe(args: tuple[PlanRequest, str, int]) -> tuple[str, int, float, str]:
    """Peak request rate of one (GPU, TP) at its largest ``max_num_seqs`` (a saturated burst)."""
    req, gpu, tp = args
    sc = _scenario(req, gpu, tp, max(req.max_num_seqs))
    sc = replace(sc, workload=replace(sc.workload, num_requests=req.probe_requests))
    row = run_point(PointTask(sc, 1e6, req.seed)).row  # 1e6 req/s: effectively everything at once
    return gpu, tp, float(row.get("request_throughput", 0.0) or 0.0), row.get("error", "")


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
