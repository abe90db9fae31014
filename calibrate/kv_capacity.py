"""Fit the overhead terms of the KV-capacity memory model to server-reported capacities.

vLLM reports how many KV blocks it allocated (``# GPU blocks: N`` in its log, ``num_gpu_blocks`` in
``vllm:cache_config_info``).  :func:`servesim.sim.memory.kv_capacity` predicts the same number as

``blocks = floor((util * total - weights/tp - tokens * (a * hidden + 4 * intermediate/tp)
                 - 4 * vocab * min(max_num_seqs, tokens) - non_torch - graphs) / block_bytes)``

which is linear in the two unknown overheads: ``a`` (``activation_bytes_per_token_hidden``) and
``non_torch_bytes``.  Given observations from several models, TP degrees and utilisation
settings, ordinary least squares on the reported KV bytes recovers them (with standard errors),
and the fitted terms then predict capacity for configurations nobody measured.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..sim.config import EngineConfig, EngineVersion
from ..sim.memory import kv_capacity


@dataclass(frozen=True)
class CapacityObservation:
    cfg: EngineConfig
    num_gpu_blocks: int
    source: str = ""


def _design(obs: CapacityObservation) -> tuple[list[float], float]:
    """Row of the linear system ``[tokens*hidden, 1] @ [a, non_torch] = rhs`` for one observation."""
    cfg = obs.cfg
    m, tp = cfg.model, cfg.parallel.tensor_parallel_size
    tokens = cfg.scheduler.max_num_batched_tokens
    block_bytes = m.kv_bytes_per_token(cfg.kv_dtype, tp) * cfg.cache.block_size
    graphs = cfg.profile.memory.cuda_graph_bytes if cfg.engine is EngineVersion.V1 else 0.0
    known = (cfg.cache.gpu_memory_utilization * cfg.gpu.memory_bytes - m.weight_bytes(cfg.weight_dtype) / tp
             - tokens * 4 * m.intermediate_size / tp - 4 * m.vocab_size * min(cfg.scheduler.max_num_seqs, tokens)
             - graphs)
    # reported KV bytes (mid-block: the floor loses up to one block) = known - a*tokens*hidden - non_torch
    kv = (obs.num_gpu_blocks + 0.5) * block_bytes
    return [tokens * m.hidden_size, 1.0], known - kv


def fit_memory(observations: list[CapacityObservation]) -> dict:
    """Least-squares ``activation_bytes_per_token_hidden`` and ``non_torch_bytes``.

    With a single observation only ``non_torch_bytes`` is fitted (the activation term keeps its
    value from the observation's profile).  Returns values, standard errors and per-observation
    relative errors of the predicted block counts.
    """
    if not observations:
        raise ValueError("no KV-capacity observations to fit")
    rows, rhs = zip(*(_design(o) for o in observations))
    a, b = np.asarray(rows), np.asarray(rhs)
    if len(observations) == 1 or np.ptp(a[:, 0]) == 0:
        act = observations[0].cfg.profile.memory.activation_bytes_per_token_hidden
        non_torch = float(np.mean(b - act * a[:, 0]))
        values, se = {"activation_bytes_per_token_hidden": act, "non_torch_bytes": non_torch}, {}
    else:
        x, *_ = np.linalg.lstsq(a, b, rcond=None)
        dof = max(len(b) - 2, 1)
        s2 = float(((a @ x - b) ** 2).sum()) / dof
        cov = np.linalg.pinv(a.T @ a) * s2
        values = {"activation_bytes_per_token_hidden": float(x[0]), "non_torch_bytes": float(x[1])}
        se = {"activation_bytes_per_token_hidden": float(np.sqrt(max(cov[0, 0], 0))),
              "non_torch_bytes": float(np.sqrt(max(cov[1, 1], 0)))}
    errors = []
    for o in observations:
        mem = replace(o.cfg.profile.memory, **values)
        cfg = replace(o.cfg, profile=replace(o.cfg.profile, memory=mem))
        predicted = kv_capacity(cfg).num_gpu_blocks
        errors.append({"source": o.source, "model": o.cfg.model.name, "tp": o.cfg.parallel.tensor_parallel_size,
                       "reported_blocks": o.num_gpu_blocks, "predicted_blocks": predicted,
                       "rel_error": predicted / o.num_gpu_blocks - 1})
    return {"values": values, "stderr": se, "observations": errors}
