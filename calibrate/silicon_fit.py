"""vLLM v1 CPU-side terms from aiconfigurator's silicon rows, fitted by simulation in the loop.

Input: ``h100/aiconfigurator_silicon/qwen3_32b_vllm_0.12.csv`` (90 real closed-loop runs of vLLM
0.12 on H100 SXM, Qwen3-32B BF16, TP 2/4/8, concurrency 8-128, fixed isl/osl; mean TTFT and TPOT).
The file records no client; aiconfigurator's end-to-end numbers come from Dynamo's benchmark
recipe (genai-perf/aiperf ``--concurrency N --request-count 10N --warmup-request-count 2N``, fixed
isl/osl with ``ignore_eos``), so each row is replayed as that client: 2N warm-up requests, a
drained phase boundary, 10N counted requests (:data:`PROTOCOL`; docs/fidelity-v1.md states it
as an assumption).

The GPU terms stay the kernel-table prior; what is fitted are the CPU-side terms of
:class:`~servesim.sim.profile.StepCoefficients` that the rows identify and the client's request
path (:class:`~servesim.sim.clients.ClientModel`).  Residuals are log(simulated / measured) of
mean TTFT and mean TPOT; standard errors come from a bootstrap over rows (refits on resampled rows,
started at the optimum).  A term whose bootstrap interval reaches its bound, or whose fitted value
sits at a bound, is reported as not identified instead of as a value.

The command line is :mod:`servesim.calibrate.silicon`: ``python -m servesim.calibrate.silicon
--crossval`` prints leave-one-TP-out and leave-one-isl/osl-out errors; ``--fit -o PROFILE`` refits
and writes the profile.  This module is its library and imports no command-line code.
"""
from __future__ import annotations

import csv
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..sim.arg_spec import check_fields
from ..sim.clients import ClientModel
from ..sim.config import make_engine_config
from ..sim.gpus import get_gpu
from ..sim.model_catalog import get_model
from ..sim.profile import Profile
from ..sim.runner import simulate
from ..sim.workload import ClosedLoop
from .bench_runs import engine_arg
from .fitting import CachedResiduals, bootstrap, bounded_least_squares, bounds_arrays, gauss_newton_step, residual_rows

SILICON_FILE = "h100/aiconfigurator_silicon/qwen3_32b_vllm_0.12.csv"
MODELS = {"Qwen/Qwen3-32B": "qwen3-32b"}


@dataclass(frozen=True)
class Protocol:
    """How many requests the client sends per user: warm-up and counted (Dynamo's recipe)."""

    warmup_per_user: int = 2
    counted_per_user: int = 10


PROTOCOL = Protocol()


@dataclass(frozen=True)
class Deployment:
    """Server flags of the silicon runs, which the file does not record: inferred from the rows.

    ``max_num_batched_tokens`` 2048 is vLLM's ``SchedulerConfig`` default, what an engine gets when
    it is built under a usage context without its own default (``vllm serve`` on an 80 GB GPU sets
    8192).  Replayed at 8192 the 1024-token rows keep all users' prefills in one step and TTFT comes
    out 1.4-2x too high at every concurrency; at 2048 the structure goes (docs/fidelity-v1.md), so
    2048 is the inferred value.  ``max_num_seqs`` 128 is the same default and the rows' largest
    concurrency; it never binds here.
    """

    max_num_batched_tokens: int = engine_arg("max_num_batched_tokens", 2048)
    max_num_seqs: int = engine_arg("max_num_seqs", 128)

    def __post_init__(self) -> None:
        check_fields(self)  # by EngineArgs' rules


DEPLOYMENT = Deployment()


@dataclass(frozen=True)
class SiliconRow:
    """One measured closed-loop run: ``concurrency`` users, fixed ``isl``/``osl``, on ``tp`` GPUs."""

    key: str
    model: str
    isl: int
    osl: int
    concurrency: int
    tp: int
    ttft_ms: float
    tpot_ms: float

    def fit_metrics(self) -> dict[str, float]:
        return {"mean_ttft_ms": self.ttft_ms, "mean_tpot_ms": self.tpot_ms}


def load_silicon(path: str | Path) -> list[SiliconRow]:
    """The rows of an aiconfigurator silicon CSV; ``ValueError`` naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"silicon CSV {path} not found")
    rows = []
    with path.open(encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"model_path", "isl", "osl", "batch_size", "tp_size", "silicon_ttft_ms", "silicon_tpot_ms"}
        missing = need - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not an aiconfigurator silicon CSV (missing columns {sorted(missing)})")
        for i, r in enumerate(reader):
            if r.get("backend", "vllm") != "vllm" or r.get("mode", "agg") != "agg":
                continue
            model = MODELS.get(r["model_path"])
            if model is None:
                raise ValueError(f"{path} row {i + 2}: model {r['model_path']!r} has no catalogue entry "
                                 f"(known: {sorted(MODELS)})")
            rows.append(SiliconRow(r.get("id") or f"row{i}", model, int(float(r["isl"])), int(float(r["osl"])),
                                   int(float(r["batch_size"])), int(float(r["tp_size"])),
                                   float(r["silicon_ttft_ms"]), float(r["silicon_tpot_ms"])))
    if not rows:
        raise ValueError(f"{path}: no vLLM aggregated rows")
    return rows


def is_silicon_csv(path: Path) -> bool:
    """True for an aiconfigurator silicon CSV (the ``calibrate`` pipeline's input classifier)."""
    if path.suffix != ".csv" or not path.is_file():
        return False
    header = path.open(encoding="utf-8").readline()
    return "silicon_ttft_ms" in header and "silicon_tpot_ms" in header


def row_workload(row: SiliconRow, client: ClientModel, protocol: Protocol = PROTOCOL, seed: int = 0) -> ClosedLoop:
    """The row's closed loop: ``concurrency`` users, warm-up then counted requests, fixed lengths."""
    warm = protocol.warmup_per_user * row.concurrency
    n = warm + protocol.counted_per_user * row.concurrency
    return ClosedLoop(row.concurrency, np.full(n, row.isl), np.full(n, row.osl), seed=seed, name=row.key,
                      client=replace(client, num_warmup_requests=warm))


def simulate_row(row: SiliconRow, profile: Profile, client: ClientModel, protocol: Protocol = PROTOCOL,
                 seed: int = 0, deployment: Deployment | None = None) -> dict[str, float]:
    """Mean TTFT and TPOT (ms) of the row's simulation, with KV capacity and preemptions."""
    d = deployment or DEPLOYMENT
    cfg = make_engine_config(get_model(row.model), get_gpu("h100-sxm"), "vllm-v1", tp=row.tp, profile=profile,
                             max_num_batched_tokens=d.max_num_batched_tokens, max_num_seqs=d.max_num_seqs)
    s = simulate(cfg, row_workload(row, client, protocol, seed)).summary
    return {k: float(s[k]) for k in ("mean_ttft_ms", "mean_tpot_ms", "std_ttft_ms", "num_preemptions",
                                     "kv_capacity_tokens")}


def _task(args) -> dict[str, float]:
    row, profile, client, deployment = args
    return simulate_row(row, profile, client, deployment=deployment)


class Simulator:
    """Simulates rows in ``workers`` processes (niced children; one process when ``workers`` is 1)."""

    def __init__(self, workers: int | None = None, deployment: Deployment | None = None) -> None:
        self.deployment = deployment or DEPLOYMENT
        self.workers = workers if workers is not None else max(1, min(2, os.cpu_count() or 1))
        self._pool = (ProcessPoolExecutor(self.workers, initializer=os.nice, initargs=(10,))
                      if self.workers > 1 else None)

    def __call__(self, rows: list[SiliconRow], profile: Profile, client: ClientModel) -> list[dict]:
        tasks = [(r, profile, client, self.deployment) for r in rows]
        if self._pool is None:
            return [_task(t) for t in tasks]
        return list(self._pool.map(_task, tasks, chunksize=max(1, len(tasks) // (4 * self.workers))))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def errors(rows: list[SiliconRow], sims: list[dict]) -> dict[str, np.ndarray]:
    """Relative errors (simulated / measured - 1) of mean TTFT and mean TPOT, per row."""
    return {"ttft": np.array([s["mean_ttft_ms"] / r.ttft_ms - 1 for r, s in zip(rows, sims)]),
            "tpot": np.array([s["mean_tpot_ms"] / r.tpot_ms - 1 for r, s in zip(rows, sims)])}



# Fitted terms: step coefficients (sim/profile.py) and the client's request path (sim/clients.py);
# their ranges are fitting.BOUNDS, searched in its "silicon" windows.  per_token_overhead_s counts
# every scheduled token and per_seq_overhead_s every scheduled sequence: for decodes the two are one
# term per sequence, so per_token_overhead_s is what the data sees as the per-prefill-token cost.
STEP_TERMS = ("step_overhead_s", "tp_step_overhead_s", "per_seq_overhead_s", "per_token_overhead_s")
CLIENT_TERMS = ("request_overhead_s", "jitter_s")
FITTABLE = STEP_TERMS + CLIENT_TERMS
BOUNDS_FIT = "silicon"  # the fitting.Bound window this fit searches
DEFAULT_PARAMS = ("step_overhead_s", "tp_step_overhead_s", "per_seq_overhead_s", "per_token_overhead_s",
                  "request_overhead_s", "jitter_s")


def apply(profile: Profile, client: ClientModel, values: dict[str, float]) -> tuple[Profile, ClientModel]:
    """``profile`` and ``client`` with the fitted ``values`` substituted."""
    step = {k: v for k, v in values.items() if k in STEP_TERMS}
    cl = replace(client, request_overhead_s=values.get("request_overhead_s", client.request_overhead_s),
                 jitter_s=values.get("jitter_s", client.jitter_s))
    return replace(profile, step=replace(profile.step, **step)), cl


def residuals(rows: list[SiliconRow], sims: list[dict]) -> np.ndarray:
    """log(simulated / measured) of mean TTFT then mean TPOT, row by row."""
    return np.array([math.log(max(s[m], 1e-9) / v) for r, s in zip(rows, sims) for m, v in r.fit_metrics().items()])


@dataclass
class SiliconFit:
    """Result of :func:`fit`: values, bootstrap stderr, which terms the rows could not identify."""

    values: dict[str, float]
    stderr: dict[str, float]
    unidentified: dict[str, str]
    sims: list[dict]
    residuals: np.ndarray
    nfev: int
    message: str
    x: np.ndarray     # optimum in range units of ``params``
    jac: np.ndarray   # d residual / d x at the optimum
    params: tuple[str, ...] = ()


def fit(rows: list[SiliconRow], profile: Profile, client: ClientModel, params: tuple[str, ...] = DEFAULT_PARAMS,
        simulator: Simulator | None = None, max_nfev: int = 40, n_boot: int = 200, seed: int = 0,
        log=print) -> SiliconFit:
    """Least-squares fit of ``params`` by simulation in the loop (trust region reflective, bounds).

    Standard errors: a linearised bootstrap over rows (resample rows, one Gauss-Newton step from the
    optimum with the resampled Jacobian and residuals, clipped to the bounds); the spread of the
    replicates is the stderr.  A term is *not identified* when its value sits within 1% of the
    range from a bound, or when the 95% bootstrap interval spans more than half its range.
    """
    unknown = [p for p in params if p not in FITTABLE]
    if unknown:
        raise ValueError(f"cannot fit {unknown} on silicon rows; fittable: {sorted(FITTABLE)}")
    lo, hi = bounds_arrays(params, BOUNDS_FIT)
    # Optimise in units of each range, from the prior (profile and client values), kept at least 1%
    # of the range off the lower bound so the first differences see the term at all.
    start = {**{k: getattr(profile.step, k) for k in STEP_TERMS}, **{k: getattr(client, k) for k in CLIENT_TERMS}}
    x0 = np.clip((np.array([start[p] for p in params]) - lo) / (hi - lo), 0.01, 0.99)
    own = simulator is None
    simulator = simulator or Simulator()

    def simulate_at(x: np.ndarray) -> tuple[np.ndarray, list]:
        prof, cl = apply(profile, client, {p: float(lo_i + v * (h - lo_i)) for p, v, lo_i, h in zip(params, x, lo, hi)})
        sims = simulator(rows, prof, cl)
        return residuals(rows, sims), sims

    def on_new(x: np.ndarray, r: np.ndarray) -> None:
        log(f"  eval {len(cached.cache):3d}: rms log error {math.sqrt(float(r @ r) / len(r)):.4f}  "
            + " ".join(f"{p}={lo_i + v * (h - lo_i):.3g}" for p, v, lo_i, h in zip(params, x, lo, hi)))

    cached = CachedResiduals(simulate_at, 10, on_new)

    def jacobian(x: np.ndarray) -> np.ndarray:
        # Forward differences of 2% of each range (backward at the upper bound): the simulated
        # means are piecewise smooth in the coefficients, so steps must span many engine steps.
        f0 = cached(x)
        cols = []
        for i in range(len(x)):
            h = 0.02 if x[i] + 0.02 <= 1.0 else -0.02
            xi = x.copy()
            xi[i] += h
            cols.append((cached(xi) - f0) / h)
        return np.column_stack(cols)

    try:
        res = bounded_least_squares(cached, x0, jac=jacobian, bounds=(np.zeros(len(params)), np.ones(len(params))),
                                    max_nfev=max_nfev, x_scale=1.0)
    finally:
        if own:
            simulator.close()
    values = {p: float(lo_i + v * (h - lo_i)) for p, v, lo_i, h in zip(params, res.x, lo, hi)}
    r, sims = cached.at(res.x)
    stderr, unidentified = _bootstrap(rows, res.x, res.jac, res.fun, params, lo, hi, n_boot, seed)
    return SiliconFit(values, stderr, unidentified, sims, np.asarray(r), len(cached.cache), str(res.message),
                      np.asarray(res.x), np.asarray(res.jac), tuple(params))


def _bootstrap(rows, x, jac, fun, params, lo, hi, n_boot: int, seed: int) -> tuple[dict, dict]:
    """Row-bootstrap stderr (linearised at the optimum ``x``, in range units) and the terms the rows
    do not identify: zero sensitivity, a value at a bound, or a bootstrap interval over half the range."""
    span = hi - lo
    value = lo + x * span
    reps = np.empty((0, len(params)))
    if n_boot:
        per_row = len(fun) // len(rows)

        def refit(pick: np.ndarray) -> np.ndarray:
            return lo + np.clip(x + gauss_newton_step(jac, fun, residual_rows(pick, per_row)), 0.0, 1.0) * span

        reps = bootstrap(len(rows), n_boot, seed, refit)
    stderr = {p: float(reps[:, i].std(ddof=1)) if len(reps) > 1 else math.nan for i, p in enumerate(params)}
    unidentified = {}
    col = np.linalg.norm(jac, axis=0) if jac is not None and jac.size else np.zeros(len(params))
    for i, p in enumerate(params):
        if col[i] <= 1e-6 * max(float(col.max()), 1e-300):
            unidentified[p] = "the rows do not depend on it (zero sensitivity of every residual)"
        elif x[i] < 0.01 or x[i] > 0.99:
            unidentified[p] = f"at or within 1% of a bound ({value[i]:.3g}; range {lo[i]:.3g}..{hi[i]:.3g})"
        elif len(reps) > 1:
            q_lo, q_hi = np.percentile(reps[:, i], [2.5, 97.5])
            if q_hi - q_lo > 0.5 * span[i]:
                unidentified[p] = f"95% bootstrap interval {q_lo:.3g}..{q_hi:.3g} spans most of its range"
    return stderr, unidentified


# ------------------------------------------------------------------------------ cross-validation

def splits(rows: list[SiliconRow]) -> dict[str, list[tuple[str, list[int], list[int]]]]:
    """Leave-one-TP-out and leave-one-isl/osl-out folds: name -> [(held-out label, train, test)]."""
    def by(key) -> list[tuple[str, list[int], list[int]]]:
        labels = sorted({key(r) for r in rows})
        return [(str(v), [i for i, r in enumerate(rows) if key(r) != v], [i for i, r in enumerate(rows) if key(r) == v])
                for v in labels]
    return {"tp": by(lambda r: f"tp{r.tp}"), "isl_osl": by(lambda r: f"{r.isl}/{r.osl}")}


def median_abs(values: np.ndarray) -> float:
    return float(np.median(np.abs(values))) if len(values) else math.nan


def crossval(rows: list[SiliconRow], profile: Profile, client: ClientModel, params: tuple[str, ...],
             simulator: Simulator, max_nfev: int, full: SiliconFit | None = None, exact: bool = False,
             only: tuple[str, ...] = ("tp", "isl_osl"), log=print) -> list[dict]:
    """Refit ``params`` without each fold's rows and score the held-out rows by simulation.

    ``exact``: a full refit per fold from the prior (as :func:`fit`; minutes per fold).  Otherwise
    the refit is linearised: Gauss-Newton steps on the *training* rows' residuals and Jacobian of
    the full fit ``full``, from its optimum, to the training rows' own least-squares point (clipped
    to the bounds); the held-out rows are then simulated with those values.  Held-out residuals
    never enter a refit, but the linearisation point saw them, so this approximates the exact refit.
    """
    lo, hi = bounds_arrays(params, BOUNDS_FIT)
    per_row = 2
    out = []
    for split, folds in splits(rows).items():
        if split not in only:
            continue
        for label, train, test in folds:
            log(f"{split}: holding out {label} ({len(test)} rows), refitting on {len(train)}")
            if exact or full is None:
                f = fit([rows[i] for i in train], profile, client, params, simulator, max_nfev=max_nfev, n_boot=0,
                        log=lambda m: None)
                values = f.values
            else:
                step = gauss_newton_step(full.jac, full.residuals, residual_rows(np.asarray(train), per_row))
                x = np.clip(full.x + step, 0.0, 1.0)
                values = {p: float(lo_i + v * (h - lo_i)) for p, v, lo_i, h in zip(params, x, lo, hi)}
            prof, cl = apply(profile, client, values)
            held = [rows[i] for i in test]
            e = errors(held, simulator(held, prof, cl))
            out.append({"split": split, "held_out": label, "rows": len(test), "values": values,
                        "ttft": median_abs(e["ttft"]), "tpot": median_abs(e["tpot"]),
                        "refit": "exact" if exact or full is None else "linearised"})
            log(f"  held-out median |error|: TTFT {out[-1]['ttft']:.1%}, TPOT {out[-1]['tpot']:.1%}")
    return out


def evaluate(rows: list[SiliconRow], profile: Profile, client: ClientModel, simulator: Simulator) -> list[dict]:
    """Errors of ``profile`` + ``client`` on every fold's held-out rows, without refitting (the
    'before' of a cross-validation table: a profile not fitted on these rows)."""
    e = errors(rows, simulator(rows, profile, client))
    out = []
    for split, folds in splits(rows).items():
        for label, _, test in folds:
            out.append({"split": split, "held_out": label, "rows": len(test),
                        "ttft": median_abs(e["ttft"][test]), "tpot": median_abs(e["tpot"][test])})
    return out

