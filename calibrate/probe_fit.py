"""Step-cost coefficients fitted end to end from a probe run (``servesim measure`` run directory).

``fit_probe_run(run_dir, model, gpu, engine, tp=1)`` reads the prefill and decode/context sweeps
of a run and fits the terms of :class:`servesim.sim.cost_model.StepCostModel` that whole-server
timings identify, returning a profile dict (``docs/profile-schema.md``):

* **prefill sweep** (one request at a time, 1 output token): the median TTFT of each prompt length
  ``P`` is ``api_overhead_s + sum over chunks of step_time(chunk)``, chunks of
  ``max_num_batched_tokens`` when prefill is chunked (vLLM v1), one step otherwise.
  ``api_overhead_s`` (HTTP, tokenisation, scheduling latency: whatever TTFT holds beyond the
  steps) is fitted and reported in ``fit_report``; it is not a profile coefficient.
* **decode and context sweeps** (N concurrent requests): the *steady window* of a point runs from
  the last request's first token to the first request's last token; every step in it decodes all
  N requests.  The mean gap between consecutive tokens inside the window is one decode step of
  batch N at the window's mean total context, which is ``step_time(N tokens, N seqs, context)``
  exactly, because step time is linear in context.

Free terms: ``eff_mm``, ``eff_bw``, ``eff_attn_prefill``, ``eff_attn_decode``, ``step_overhead_s``,
``per_seq_overhead_s`` (and ``api_overhead_s``).  The others (``layer_overhead_s``,
``per_token_overhead_s``, all-reduce terms, swap bandwidth) are held at the base profile's values:
they are collinear with free terms in whole-step timings.  The weight-streaming bound and the fixed
step cost are both constant at small batches; they separate only through decode points in the
compute-bound regime (large N), so a run must reach it (the shipped plans go to N = 512).

Loss: least squares of ``predicted/measured - 1`` (relative error, each point weight 1), soft-L1
against outliers, within the ranges of the one bounds table (:data:`servesim.calibrate.fitting.BOUNDS`);
``stderr`` is a cluster bootstrap over probe points (:func:`~servesim.calibrate.fitting.bootstrap`;
Jacobian stderr beside it).
Times are multiplied by the run's ``time_scale`` (``servesim serve --speed K`` runs; 1 for vLLM).
KV capacity: the ``kv_capacity`` read-out gives ``num_gpu_blocks``; ``non_torch_bytes`` is derived as
the value that makes :mod:`servesim.sim.memory` reproduce it.

CLI: ``python -m servesim.calibrate.probe_fit RUN_DIR --model M --gpu G --engine E -o OUT.json``
(the deployment flags are :class:`~servesim.sim.engine_args.EngineArgs`' own).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeResult

from ..argtypes import add_args, engine_args_from
from ..measure.rundir import POINTS, REQUESTS, RUN_JSON, load_requests, load_run
from ..sim.config import EngineConfig, create_engine_config
from ..sim.cost_model import StepCostModel, step_time_from_terms
from ..sim.engine_args import EngineArgs
from ..sim.gpus import GPUSpec
from ..sim.memory import kv_capacity
from ..sim.models import ModelSpec
from ..sim.profile import Profile, StepCoefficients, load_profile
from .fitting import BOUNDS, Coefficient, Source, bootstrap, bounded_least_squares, bounds_arrays, jacobian_stderr

FREE = ("eff_mm", "eff_bw", "eff_attn_prefill", "eff_attn_decode", "step_overhead_s", "per_seq_overhead_s",
        "api_overhead_s")
# Fitted but no profile coefficient: the TTFT beyond the engine's steps, reported in fit_report only.
REPORTED_ONLY = ("api_overhead_s",)
SCALE = {"eff_mm": 1.0, "eff_bw": 1.0, "eff_attn_prefill": 1.0, "eff_attn_decode": 1.0, "step_overhead_s": 1e-3,
         "per_seq_overhead_s": 1e-5, "api_overhead_s": 1e-3}
MIN_WINDOW_STEPS = 4
# The EngineArgs fields the command line takes: the deployment the probe run measured.
DEPLOYMENT_FLAGS = ("model", "gpu", "engine", "tensor_parallel_size")


# ----- observations ------------------------------------------------------------------------------
def prefill_observations(df: pd.DataFrame, clock: str = "wall") -> pd.DataFrame:
    """Median TTFT (simulated-equivalent s) per prompt length of the ``prefill`` family (ok requests)."""
    ok = df[(df.family == "prefill") & (df.status == "ok")]
    if ok.empty:
        return pd.DataFrame(columns=["point_id", "prompt_len", "ttft_s", "n"])
    col = "server_ttft_s" if clock == "server" else "scaled_ttft_s"
    g = ok.groupby("point_id")
    return pd.DataFrame({"prompt_len": g.prompt_tokens.first(), "ttft_s": g[col].median(),
                         "n": g.size()}).reset_index().sort_values("prompt_len", ignore_index=True)


def _window_slope(index: np.ndarray, times: np.ndarray, clock: str) -> tuple[float, float]:
    """(seconds per token, mean token index used) of one request's tokens in the window.

    Server-clock times are exact: the mean gap.  Wall-clock arrivals are late, never early (a
    descheduled server or client delivers a bunch of tokens at once), so the slope is fitted to
    the lower envelope: least squares, then twice more on the points at or below the median
    residual."""
    if clock == "server" or len(index) < 8:
        return (times[-1] - times[0]) / (index[-1] - index[0]), float(index[1:].mean())
    keep = np.ones(len(index), bool)
    for _ in range(3):
        slope, icpt = np.polyfit(index[keep], times[keep], 1)
        resid = times - (icpt + slope * index)
        keep = resid <= np.median(resid[keep])
        if keep.sum() < 4:
            break
    return float(slope), float(index[keep].mean())


def steady_window(point: pd.DataFrame, clock: str = "wall") -> dict | None:
    """Mean decode step (simulated-equivalent s), batch size and mean total context of a burst
    point's steady window (module docstring); None when it holds fewer than ``MIN_WINDOW_STEPS``."""
    if clock == "server":
        times = [np.asarray(t, float) for t in point.server_token_times]
        scale = 1.0
    else:
        times = [np.asarray(t, float) + s for t, s in zip(point.token_times, point.send_time)]
        scale = float(point.time_scale.iloc[0])
    if len(times) == 0 or any(len(t) < 2 for t in times):
        return None
    t_a = max(t[0] for t in times)
    t_b = min(t[-1] for t in times)
    slopes, contexts, steps = [], 0.0, []
    for t, prompt in zip(times, point.prompt_tokens):
        idx = np.flatnonzero((t[:-1] >= t_a) & (t[1:] <= t_b))  # tokens idx..idx+1 span one in-window step
        if len(idx) < MIN_WINDOW_STEPS:
            return None
        used = np.arange(idx[0], idx[-1] + 2)
        slope, mid = _window_slope(used.astype(float), t[used], clock)
        slopes.append(slope)
        contexts += prompt + mid  # producing output token i attends to prompt + i tokens
        steps.append(len(idx))
    return {"num_seqs": len(times), "context_tokens": contexts, "step_s": float(np.median(slopes)) * scale,
            "steps": int(np.median(steps))}


def decode_observations(df: pd.DataFrame, clock: str = "wall") -> tuple[pd.DataFrame, list[str]]:
    """One row per usable ``decode``/``context`` point; the ids of unusable ones (no steady window,
    failed requests) are returned beside it."""
    rows, skipped = [], []
    for pid, point in df[df.family.isin(["decode", "context"])].groupby("point_id"):
        window = steady_window(point, clock) if (point.status == "ok").all() else None
        if window is None:
            skipped.append(pid)
        else:
            rows.append({"point_id": pid, "family": point.family.iloc[0], **window})
    return pd.DataFrame(rows, columns=["point_id", "family", "num_seqs", "context_tokens", "step_s", "steps"]), skipped


# ----- the model ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Features:
    """The step-cost model's feature view (:meth:`StepCostModel.terms_of`) for one deployment, so a
    trial parameter vector costs a few numpy operations and the fit predicts with the simulator's
    own expression (:func:`step_time_from_terms`) rather than a restatement of it.  Coefficients
    not being fitted keep the base profile's values."""

    model: StepCostModel
    base: dict

    @classmethod
    def of(cls, model: ModelSpec, gpu: GPUSpec, base: StepCoefficients, tp: int, weight_dtype: str,
           kv_dtype: str) -> Features:
        return cls(StepCostModel(model, gpu, base, tp, weight_dtype, kv_dtype), dataclasses.asdict(base))

    def step_s(self, p: dict, tokens, seqs, pairs, ctx, prefill_tokens=0):
        """Seconds of steps of ``tokens`` tokens (``prefill_tokens`` of them prompt tokens) over
        ``seqs`` sequences under the trial coefficients ``p``."""
        terms = self.model.terms_of(tokens, seqs, pairs, ctx, prefill_tokens)
        return step_time_from_terms(terms, {**self.base, **p})


def prefill_chunks(prompt_lens: np.ndarray, budget: int | None) -> tuple[np.ndarray, ...]:
    """(observation index, chunk tokens, causal pairs) of every prefill step; ``budget`` None: one step."""
    obs, tokens, pairs = [], [], []
    for i, p in enumerate(prompt_lens):
        done = 0
        while done < p:
            c = int(p - done) if budget is None else int(min(budget, p - done))
            obs.append(i)
            tokens.append(c)
            pairs.append(c * done + c * (c + 1) / 2)
            done += c
    return np.array(obs), np.array(tokens, float), np.array(pairs, float)


def _predict(feat: Features, p: dict, pre: tuple, dec: pd.DataFrame, n_pre: int) -> np.ndarray:
    obs, tokens, pairs = pre
    steps = feat.step_s(p, tokens, 1.0, pairs, 0.0, tokens)
    ttft = np.bincount(obs, weights=steps, minlength=n_pre) + p["api_overhead_s"]
    n = dec.num_seqs.to_numpy(float)
    return np.concatenate([ttft, feat.step_s(p, n, n, 0.0, dec.context_tokens.to_numpy(float))])


def _solve(feat: Features, start: dict[str, float], pre: tuple, dec: pd.DataFrame, measured: np.ndarray,
           n_pre: int, rows: np.ndarray | None = None) -> tuple[OptimizeResult, np.ndarray]:
    """Soft-L1 least squares of the relative errors (of ``rows`` only, a bootstrap replicate, when
    given) from ``start``, each term within its :data:`BOUNDS` range; the optimiser's variables
    are the terms divided by ``SCALE`` (returned beside the result)."""
    names = list(start)
    scale = np.array([SCALE[n] for n in names])

    def residuals(x: np.ndarray) -> np.ndarray:
        rel = _predict(feat, dict(zip(names, x * scale)), pre, dec, n_pre) / measured - 1.0
        return rel if rows is None else rel[rows]

    lo, hi = bounds_arrays(names)
    lo, hi = lo / scale, hi / scale
    x0 = np.clip(np.array([start[n] for n in names]) / scale, lo, hi)
    return bounded_least_squares(residuals, x0, (lo, hi), loss="soft_l1", f_scale=0.05, method="trf"), scale


def _scheduler(run: dict, engine: str) -> dict:
    """Scheduler settings of the measured server: servesim's /version, else the launch flags."""
    sched = (run.get("server", {}).get("version_info") or {}).get("scheduler") or {}
    flags = (run.get("launch") or {}).get("flags") or {}
    budget = sched.get("max_num_batched_tokens") or flags.get("max_num_batched_tokens")
    chunked = sched.get("enable_chunked_prefill", flags.get("enable_chunked_prefill"))
    return {"max_num_batched_tokens": int(budget) if budget else None,
            "enable_chunked_prefill": None if chunked is None else chunked in (True, "true", "True", "1"),
            "max_model_len": run.get("max_model_len")}


# ----- the fit -----------------------------------------------------------------------------------
def _residual_summary(rel: np.ndarray) -> dict:
    if len(rel) == 0:
        return {}
    return {"median_abs_rel_err": float(np.median(np.abs(rel))), "p90_abs_rel_err": float(np.quantile(np.abs(rel), .9)),
            "max_abs_rel_err": float(np.max(np.abs(rel))), "median_rel_err": float(np.median(rel))}


def _kv_memory(run: dict, cfg: EngineConfig) -> tuple[dict, dict[str, Any]]:
    """(memory entries, report): ``non_torch_bytes`` that reproduces the reported ``num_gpu_blocks``."""
    kv = run.get("kv_capacity") or {}
    blocks = kv.get("num_gpu_blocks")
    if blocks is None and kv.get("kv_cache_tokens"):
        blocks = kv["kv_cache_tokens"] // cfg.cache.block_size
    if not blocks:
        return {}, {"reported": False}
    mem = kv_capacity(dataclasses.replace(cfg, cache=dataclasses.replace(cfg.cache, num_gpu_blocks_override=None)))
    kv_bytes = blocks * mem.kv_bytes_per_token * cfg.cache.block_size
    # The TP communicator part of non-torch memory stays as the profile has it; only the base term is derived.
    tp_part = mem.non_torch_bytes - cfg.profile.memory.non_torch_bytes
    non_torch = (mem.budget_bytes - mem.weight_bytes - mem.activation_bytes - mem.cuda_graph_bytes - kv_bytes
                 - tp_part)
    report: dict[str, Any] = {"reported": True, "num_gpu_blocks": int(blocks), "kv_capacity_tokens": int(blocks * cfg.cache.block_size),
              "memory_model_blocks": mem.num_gpu_blocks, "derived_non_torch_bytes": float(non_torch)}
    if non_torch < 0:
        report["note"] = "negative: the activation/graph priors overestimate; non_torch_bytes not updated"
        return {}, report
    prior_se = float(np.hypot(cfg.profile.uncertainty.get("sampler_bytes_per_logit", 1.0) * cfg.model.vocab_size
                              * min(cfg.scheduler.max_num_seqs, cfg.scheduler.max_num_batched_tokens), 3e8))
    return {"non_torch_bytes": _entry(non_torch, prior_se, Source.DERIVED,
                                      f"derived: reproduces num_gpu_blocks={blocks} reported by the server, "
                                      "given the activation and CUDA-graph priors")}, report


def fit_probe_run(run_dir: str | Path, model: str, gpu: str, engine: str, tp: int = 1,
                  base_profile: str | Path | None = None, n_boot: int = 100, seed: int = 0,
                  clock: str = "wall") -> dict:
    """Fit the free step-cost terms to a probe run; returns a profile dict (module docstring).

    ``clock="server"`` uses the simulated times ``servesim serve`` stamps on each token instead of
    the wall-clock arrivals (exact; for testing the fit itself, see docs/measure.md).

    ``base_profile`` (default: the shipped profile of ``gpu`` and ``engine``) supplies every term
    that is held, the memory priors and the power block.  Raises ``ValueError`` when the run lacks
    the prefill sweep or usable decode points.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    sched = _scheduler(run, engine)
    args = EngineArgs(model=model, gpu=gpu, engine=engine, tensor_parallel_size=tp,
                      max_num_batched_tokens=sched["max_num_batched_tokens"],
                      enable_chunked_prefill=sched["enable_chunked_prefill"] if engine == "vllm-v0" else None,
                      max_model_len=sched["max_model_len"])
    # base_profile None: the shipped profile of the GPU and engine (create_engine_config's default)
    cfg = create_engine_config(args, profile=load_profile(base_profile) if base_profile else None)
    base: Profile = cfg.profile
    if clock not in ("wall", "server"):
        raise ValueError(f"clock must be 'wall' or 'server' (got {clock!r})")
    df = load_requests(run_dir)
    if df.empty:
        raise ValueError(f"{run_dir}: no completed probe points in {REQUESTS}")
    if clock == "server" and "server_token_times" not in df:
        raise ValueError(f"{run_dir}: clock='server' needs a run of servesim serve (no server_token_times)")
    pre_obs = prefill_observations(df, clock)
    dec_obs, skipped = decode_observations(df, clock)
    if len(pre_obs) < 3 or len(dec_obs) < 3:
        raise ValueError(f"{run_dir}: need >= 3 prefill points and >= 3 usable decode/context points, got "
                         f"{len(pre_obs)} and {len(dec_obs)} (skipped without a steady window: {skipped})")
    feat = Features.of(cfg.model, cfg.gpu, base.step, tp, cfg.weight_dtype, cfg.kv_dtype)
    budget = cfg.scheduler.max_num_batched_tokens if cfg.scheduler.enable_chunked_prefill else None
    pre = prefill_chunks(pre_obs.prompt_len.to_numpy(), budget)
    n_pre = len(pre_obs)
    measured = np.concatenate([pre_obs.ttft_s.to_numpy(float), dec_obs.step_s.to_numpy(float)])
    start = {n: getattr(base.step, n, 1e-3) for n in FREE}
    best, scale = _solve(feat, start, pre, dec_obs, measured, n_pre)
    values = dict(zip(FREE, best.x * scale))
    at_bounds = [n for n in FREE if values[n] <= BOUNDS[n].low * (1 + 1e-6) or values[n] >= BOUNDS[n].high * (1 - 1e-6)]
    rel = _predict(feat, values, pre, dec_obs, n_pre) / measured - 1.0
    # s^2 (J^T J)^+ with s^2 from the plain relative errors (not the soft-L1 loss) over m - n dof
    jac_se = dict(zip(FREE, jacobian_stderr(best.jac, rel) * scale))
    boot_se = jac_se
    if n_boot > 0:  # cluster bootstrap: every probe point is one cluster (its repeats share their error)
        def refit(rows: np.ndarray) -> np.ndarray:
            return np.asarray(_solve(feat, values, pre, dec_obs, measured, n_pre, rows)[0].x * scale)
        draws = bootstrap(len(measured), n_boot, seed, refit)
        boot_se = dict(zip(FREE, np.std(draws, axis=0, ddof=1)))
    memory, kv_report = _kv_memory(run, cfg)
    profile = _profile(run_dir, run, base, cfg, values, boot_se, jac_se, rel, n_pre, pre_obs, dec_obs, skipped,
                       memory, kv_report, model, gpu, engine, tp, n_boot)
    profile["fit_report"]["probe_step_cost"].update(clock=clock, at_bounds=at_bounds)
    return profile


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _entry(value: float, stderr: float | None, source: Source, provenance: str) -> dict[str, Any]:
    """A profile entry: value to 4 and stderr to 2 significant digits (:class:`Coefficient`)."""
    return Coefficient(float(value), None if stderr is None else float(stderr), source, provenance).entry(4, 2)


def _profile(run_dir, run, base, cfg, values, boot_se, jac_se, rel, n_pre, pre_obs, dec_obs, skipped, memory,
             kv_report, model, gpu, engine, tp, n_boot) -> dict:
    version = run.get("server", {}).get("version") or base.engine_version
    src = f"fit: probe run {run_dir.name} (prefill {n_pre} points, decode/context {len(dec_obs)} points)"
    coefficients = {}
    for f in dataclasses.fields(StepCoefficients):
        if f.name in values:
            coefficients[f.name] = _entry(values[f.name], boot_se[f.name], Source.FITTED, src)
        else:
            coefficients[f.name] = _entry(getattr(base.step, f.name), base.uncertainty.get(f.name), Source.PRIOR,
                                          f"held at base profile {base.name}")
    mem = {f.name: _entry(getattr(base.memory, f.name), base.uncertainty.get(f.name), Source.PRIOR,
                          f"base profile {base.name}")
           for f in dataclasses.fields(base.memory)}
    mem.update(memory)
    power = {f.name: _entry(getattr(base.power, f.name), base.uncertainty.get(f.name), Source.PRIOR,
                            f"base profile {base.name}")
             for f in dataclasses.fields(base.power)}
    server = run.get("server", {})
    report = {
        "values": {k: float(f"{v:.5g}") for k, v in values.items()},
        "stderr": {k: float(f"{v:.2g}") for k, v in boot_se.items()},
        "jacobian_stderr": {k: float(f"{v:.2g}") for k, v in jac_se.items()},
        "n_rows": int(len(rel)), "n_groups": int(len(rel)), "n_boot": n_boot,
        "loss": "soft-L1 least squares of predicted/measured - 1 (f_scale 0.05)",
        "residuals": {"all": _residual_summary(rel), "prefill": _residual_summary(rel[:n_pre]),
                      "decode": _residual_summary(rel[n_pre:])},
        "points": {"prefill": [{"point_id": r.point_id, "prompt_len": int(r.prompt_len), "ttft_s": float(r.ttft_s),
                                "rel_err": float(e)} for r, e in zip(pre_obs.itertuples(), rel[:n_pre])],
                   "decode": [{"point_id": r.point_id, "num_seqs": int(r.num_seqs), "context_tokens": float(
                       r.context_tokens), "step_s": float(r.step_s), "steps": int(r.steps), "rel_err": float(e)}
                       for r, e in zip(dec_obs.itertuples(), rel[n_pre:])],
                   "skipped": skipped},
        "held": {k: v for k, v in dataclasses.asdict(base.step).items() if k not in values},
        "scheduler": {"max_num_batched_tokens": cfg.scheduler.max_num_batched_tokens,
                      "enable_chunked_prefill": cfg.scheduler.enable_chunked_prefill},
        "kv_capacity": kv_report, "time_scale": server.get("time_scale", 1.0)}
    return {
        "name": f"{gpu}_{engine}", "engine": engine, "engine_version": str(version), "gpu": gpu,
        "coefficients": coefficients, "memory": mem, "power": power,
        "provenance": [{"file": f"{run_dir.name}/{name}", "sha256": _sha256(run_dir / name), "used_for": use}
                       for name, use in ((RUN_JSON, "server, flags, KV capacity, time scale"),
                                         (REQUESTS, "TTFT and token times"), (POINTS, "complete attempts"))]
        + [{"run": {"model": run.get("model"), "url": run.get("url"), "server_version": version,
                    "gpu": run.get("gpu"), "start_time": run.get("start_time"), "plan": run.get("plan", {}).get("name"),
                    "launch": (run.get("launch") or {}).get("command")}}],
        "fit_report": {"probe_step_cost": report},
        "notes": (f"Step-cost terms fitted end to end to probe run {run_dir.name} of {model} (TP {tp}) by "
                  f"calibrate/probe_fit.py; terms marked 'held' come from {base.name}. api_overhead_s "
                  f"({values['api_overhead_s'] * 1e3:.2f} ms) is the TTFT beyond the engine steps, reported only."),
        "generated_by": f"python -m servesim.calibrate.probe_fit {run_dir.name} --model {model} --gpu {gpu} "
                        f"--engine {engine} --tp {tp}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servesim.calibrate.probe_fit",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("run_dir")
    # The measured deployment: EngineArgs' flags (--model, --gpu, --engine, --tp), model and GPU required.
    add_args(parser, EngineArgs, DEPLOYMENT_FLAGS, {"model": {"required": True, "default": None},
                                                    "gpu": {"required": True, "default": None}})
    parser.add_argument("--base-profile", help="profile supplying the held terms (default: the shipped one)")
    parser.add_argument("--n-boot", type=int, default=100)
    parser.add_argument("--clock", choices=["wall", "server"], default="wall",
                        help="token times: wall-clock arrivals (default) or servesim serve's simulated stamps")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    try:
        deployment = engine_args_from(args)
        profile = fit_probe_run(args.run_dir, deployment.model, deployment.gpu, deployment.engine,
                                deployment.tensor_parallel_size, args.base_profile, args.n_boot, clock=args.clock)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(profile, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
