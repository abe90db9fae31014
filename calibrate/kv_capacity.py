"""Fit the KV-capacity memory model's overhead terms to real vLLM start-up records.

:func:`servesim.sim.memory.memory_breakdown` predicts what vLLM's profiling leaves for the KV cache
from the model, GPU and arguments, with a few coefficients (:class:`MemoryCoefficients`).  This
module fits them, per engine-version era (:class:`~servesim.calibrate.kv_records.MemoryEra`), with
robust least squares (``soft_l1`` loss) on every residual the records carry, all in GiB:

* each logged component against its own model: weights (+ the load overhead), activation peak
  (the forward / sampler maximum), non-torch memory by TP;
* the KV capacity itself: predicted available KV memory against reported tokens x bytes per token.

Shared by all eras: the forward-activation tensor counts and the weight-load overhead (the model's
forward pass and loader, not the profiler, decide them).  Per era: the sampler's bytes per logit
and the non-torch terms.  A term the data cannot move away from its bound is reported as not
identified.  Errors are reported per record, in sample and leave-one-model-out (every record of an
architecture held out together, the terms refitted on the rest).

``python -m servesim.calibrate.kv_capacity [--data DIR] [--report out.json] [--table FILE.md]
[--write-profiles]`` prints the fit and the error summary; ``--table`` writes the per-record table; ``--write-profiles`` rewrites only the ``memory`` section of
every shipped profile (``sim/profiles/*.json``), the v1 profiles from the newest v1 era and
the v0 profiles from the v0 era, with provenance.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, fields
from datetime import date
from pathlib import Path

import numpy as np

from ..sim.data_paths import find_shared_data
from ..sim.memory import MemoryInputs, activation_peak_bytes, memory_breakdown, non_torch_bytes, weight_bytes_per_gpu
from ..sim.profile import MemoryCoefficients, shipped_profiles_dir
from .fitting import Coefficient, Source, bounded_least_squares, bounds_arrays, jacobian_stderr
from .kv_records import RECORDS_FILE, KvRecord, MemoryEra, file_digest, load_records
from .kv_report import print_report, records_markdown

GIB = 2**30
SHARED = ("activation_tensors_hidden", "weight_overhead_bytes")
# Not fitted: at the MLP's peak the gate/up output (2 x I) and the activation's output (I) are live,
# 3 tensors of width I/tp; the hidden-width count is fitted (residual, normed input, attention
# output...).  Fitting both is degenerate on these records (few of them are forward-bound).
ACTIVATION_TENSORS_INTERMEDIATE = 3.0
PER_ERA = ("sampler_bytes_per_logit", "non_torch_bytes", "non_torch_tp_bytes", "non_torch_per_rank_bytes")
# Scale of each parameter in the optimiser (bytes terms in GiB), so the steps are comparable.
_SCALE = {"weight_overhead_bytes": GIB, "non_torch_bytes": GIB, "non_torch_tp_bytes": GIB,
          "non_torch_per_rank_bytes": GIB}
# Not fitted: whether fused-MoE workspaces persist (vLLM's workspace manager).  The 0.17+ MoE
# records (Qwen3-30B-A3B, Qwen1.5-MoE, Mixtral) match sampler peak + workspaces within 0.05 GiB;
# the older eras hold no MoE record, so their MoE peak is the forward pass alone.
MOE_WORKSPACE_IN_PEAK = {MemoryEra.V1_017: 1.0, MemoryEra.V1_010: 0.0, MemoryEra.V0: 0.0}
ERA_RECORDS = {MemoryEra.V1_017: "vLLM 0.17-0.19 start-ups", MemoryEra.V1_010: "vLLM 0.10-0.16 start-ups",
               MemoryEra.V0: "two vLLM 0.6.5 start-ups of one model, Llama-3-8B TP1/TP2"}
FIXED_SOURCES = {
    "activation_tensors_intermediate": "fixed, not fitted: gate/up output (2 x I/tp) and activation output (I/tp) "
                                       "live at the MLP's peak (vLLM SiluAndMul); see docs/memory.md",
    "moe_workspace_in_peak": "fixed per era, not fitted: 1 where vLLM's workspace manager keeps fused_moe "
                             "workspaces through the profile run (0.17+ MoE records match), else 0",
}
ROBUST_SCALE_GIB = 0.05   # soft_l1 knee: ~5x the 0.01 GiB logging precision
TOLERANCE = 0.03          # the target: |error| <= 3% on 95% of the records


def memory_inputs(rec: KvRecord) -> MemoryInputs:
    """The inputs of vLLM's profiling for a record (GPU total from the catalogue, not the record)."""
    assert rec.model is not None and rec.gpu is not None
    return MemoryInputs(rec.model, rec.gpu.memory_bytes, rec.gpu_memory_utilization, rec.tp, rec.weight_dtype,
                        rec.kv_cache_dtype, rec.block_size, rec.max_num_batched_tokens, rec.max_num_seqs)


@dataclass(frozen=True)
class FittedTerms:
    """Coefficients by era, with standard errors (same units) and the terms not identified."""

    coefficients: dict[MemoryEra, MemoryCoefficients]
    stderr: dict[MemoryEra, dict[str, float]]
    not_identified: dict[MemoryEra, tuple[str, ...]]
    num_residuals: int


def _unpack(x: np.ndarray, eras: list[MemoryEra]) -> dict[MemoryEra, MemoryCoefficients]:
    shared = {n: x[i] * _SCALE.get(n, 1.0) for i, n in enumerate(SHARED)}
    out = {}
    for k, era in enumerate(eras):
        base = len(SHARED) + k * len(PER_ERA)
        own = {n: x[base + i] * _SCALE.get(n, 1.0) for i, n in enumerate(PER_ERA)}
        out[era] = MemoryCoefficients(**shared, **own, cuda_graph_bytes=0.0,
                                      activation_tensors_intermediate=ACTIVATION_TENSORS_INTERMEDIATE,
                                      moe_workspace_in_peak=MOE_WORKSPACE_IN_PEAK[era])
    return out


def _residuals(rec: KvRecord, mem: MemoryCoefficients, kv: bool = True) -> list[float]:
    """GiB residuals (predicted - logged) of every quantity the record carries (``kv=False``:
    the logged components only, not the KV capacity)."""
    inp = memory_inputs(rec)
    out: list[float] = []
    if rec.weights_gib is not None:
        w = weight_bytes_per_gpu(rec.spec, rec.weight_dtype, rec.tp) + mem.weight_overhead_bytes
        out.append(w / GIB - rec.weights_gib)
    if rec.activation_peak_gib is not None:
        out.append(activation_peak_bytes(inp, mem) / GIB - rec.activation_peak_gib)
    if rec.non_torch_gib is not None:
        out.append(non_torch_bytes(rec.tp, mem) / GIB - rec.non_torch_gib)
    available = _logged_available_gib(rec) if kv else None
    if available is not None:
        out.append(memory_breakdown(inp, mem).available_kv_bytes / GIB - available)
    return out


def _logged_available_gib(rec: KvRecord) -> float | None:
    """Available KV memory as logged, or from the reported tokens (mid-block: the floor loses < 1 block)."""
    if rec.reported_tokens is not None:
        per_token = rec.spec.kv_bytes_per_token(rec.kv_cache_dtype, rec.tp)
        return (rec.reported_tokens + rec.block_size / 2) * per_token / GIB
    return rec.available_kv_gib if rec.failed_to_fit else None


def fit_terms(records: list[KvRecord], start: FittedTerms | None = None, kv: bool = True) -> FittedTerms:
    """Robust least squares of the shared and per-era terms on ``records`` (usable ones only).

    Without ``start`` the fit begins at the :class:`MemoryCoefficients` defaults, from two sampler
    starting points; with ``start`` (a previous fit, e.g. on all records) once, from its terms.
    ``kv=False`` fits each component on its logged values alone (records without any are unused).
    """
    usable = [r for r in records if r.usable and (kv or r.activation_peak_gib is not None
                                                  or r.non_torch_gib is not None or r.weights_gib is not None)]
    if not usable:
        raise ValueError("no usable KV-capacity records to fit")
    eras = sorted({r.memory_era for r in usable}, key=lambda e: list(MemoryEra).index(e))
    default = MemoryCoefficients()
    first = start.coefficients.get(eras[0], default) if start else default
    x0 = [getattr(first, n) / _SCALE.get(n, 1.0) for n in SHARED]
    for era in eras:
        own = start.coefficients.get(era, default) if start else default
        x0 += [getattr(own, n) / _SCALE.get(n, 1.0) for n in PER_ERA]

    def fun(x: np.ndarray) -> np.ndarray:
        coeffs = _unpack(x, eras)
        return np.asarray([v for r in usable for v in _residuals(r, coeffs[r.memory_era], kv)])

    # Ranges: fitting.BOUNDS (in optimiser units).  A TP term needs TP > 1 records: per-rank growth
    # needs two distinct TP > 1 degrees, else it is pinned to 0 (and reported as not identified).
    names_x = list(SHARED) + [n for _ in eras for n in PER_ERA]
    lo_b, hi_b = bounds_arrays(names_x)
    scale = np.array([_SCALE.get(n, 1.0) for n in names_x])
    lower, upper = list(lo_b / scale), list(hi_b / scale)
    pinned: dict[MemoryEra, list[str]] = {}
    for k, era in enumerate(eras):
        tps = {r.tp for r in usable if r.era is era and r.tp > 1}
        pin = (["non_torch_tp_bytes", "non_torch_per_rank_bytes"] if not tps
               else ["non_torch_per_rank_bytes"] if len(tps) < 2 else [])
        pinned[era] = pin
        for name in pin:
            i = len(SHARED) + k * len(PER_ERA) + PER_ERA.index(name)
            x0[i], upper[i] = 0.0, 1e-12
    # The peak is a max() of two phases: where the forward pass is the larger one the sampler term
    # has no gradient, so start the sampler from both sorting regimes the records show (~13 and
    # ~37 bytes per logit) and keep the better optimum.
    candidates = []
    for sampler_start in ((None,) if start else (default.sampler_bytes_per_logit, 37.0)):
        x_try = np.asarray(x0, float)
        for k in range(len(eras)):
            if sampler_start is not None:
                x_try[len(SHARED) + k * len(PER_ERA) + PER_ERA.index("sampler_bytes_per_logit")] = sampler_start
        candidates.append(bounded_least_squares(fun, x_try, loss="soft_l1", f_scale=ROBUST_SCALE_GIB,
                                                bounds=(lower, upper), x_scale="jac"))
    sol = min(candidates, key=lambda s: s.cost)  # the first of equal optima, as the starts are listed
    coeffs = _unpack(sol.x, eras)
    names = list(SHARED) + [n for _ in eras for n in PER_ERA]
    jac, res = sol.jac, sol.fun
    se_all = jacobian_stderr(jac, res)
    stderr: dict[MemoryEra, dict[str, float]] = {}
    ident: dict[MemoryEra, tuple[str, ...]] = {}
    col_norm = np.linalg.norm(jac, axis=0)
    for k, era in enumerate(eras):
        idx = list(range(len(SHARED))) + [len(SHARED) + k * len(PER_ERA) + i for i in range(len(PER_ERA))]
        stderr[era] = {names[i]: float(se_all[i] * _SCALE.get(names[i], 1.0)) for i in idx}
        ident[era] = tuple(names[i] for i in idx if names[i] in pinned[era] or col_norm[i] < 1e-9
                           or (sol.active_mask[i] != 0 and sol.x[i] <= lower[i] + 1e-12))
        for name in pinned[era]:
            stderr[era][name] = float("nan")
    return FittedTerms(coeffs, stderr, ident, len(res))


def fit_cuda_graph_pool(records: list[KvRecord]) -> dict:
    """The CUDA-graph pool vLLM logs after capture, ``a + b * num_layers`` (robust fit, GiB).

    Not a KV-budget term (vLLM <= 0.19 does not deduct it): it is how much of ``1 - util`` the
    graphs take, and what ``cuda_graph_bytes`` would be where a version deducts them.
    """
    rows = [r for r in records if r.usable and r.cuda_graph_gib is not None and r.cuda_graph_gib > 0
            and r.era is MemoryEra.V1_017]
    if len(rows) < 3:
        return {"n": len(rows)}
    layers = np.asarray([r.spec.num_layers for r in rows], dtype=np.float64)
    y = np.asarray([r.cuda_graph_gib for r in rows])
    sol = bounded_least_squares(lambda x: x[0] + x[1] * layers - y, np.asarray([0.3, 0.02]), loss="soft_l1",
                        f_scale=ROBUST_SCALE_GIB)
    se = jacobian_stderr(sol.jac, sol.fun)
    err = np.abs(sol.fun)
    return {"n": len(rows), "era": MemoryEra.V1_017.value, "form": "a_gib + b_gib_per_layer * num_layers",
            "a_gib": float(sol.x[0]), "a_stderr": float(se[0]), "b_gib_per_layer": float(sol.x[1]),
            "b_stderr": float(se[1]), "median_abs_gib": float(np.median(err)), "max_abs_gib": float(err.max())}


def predict(rec: KvRecord, terms: FittedTerms) -> dict:
    """Predicted KV tokens, available memory and components for one record under ``terms``."""
    mem = terms.coefficients[rec.memory_era]
    b = memory_breakdown(memory_inputs(rec), mem)
    return {"tokens": b.kv_capacity_tokens, "available_gib": b.available_kv_bytes / GIB,
            "weights_gib": b.weight_bytes / GIB, "activation_gib": b.activation_bytes / GIB,
            "non_torch_gib": b.non_torch_bytes / GIB, "fits": b.num_gpu_blocks >= 1}


def _row(rec: KvRecord, pred: dict) -> dict:
    rel = pred["tokens"] / rec.reported_tokens - 1 if rec.reported_tokens else None
    return {"index": rec.index, "model": rec.spec.name, "model_id": rec.model_id, "era": rec.memory_era.value,
            "version": rec.version.split(" ")[0], "tp": rec.tp, "weight_dtype": rec.weight_dtype,
            "kv_cache_dtype": rec.kv_cache_dtype, "util": rec.gpu_memory_utilization,
            "reported_tokens": rec.reported_tokens, "predicted_tokens": pred["tokens"], "rel_error": rel,
            "predicted_available_gib": round(pred["available_gib"], 3),
            "logged": {k: getattr(rec, k) for k in ("weights_gib", "activation_peak_gib", "non_torch_gib",
                                                     "available_kv_gib")},
            "predicted": {k: round(pred[k], 3) for k in ("weights_gib", "activation_gib", "non_torch_gib")},
            "failed_to_fit": rec.failed_to_fit, "predicted_fits": pred["fits"],
            "confidence": rec.confidence, "assumptions": list(rec.assumptions)}


def summarize(rows: list[dict]) -> dict:
    """Share of records within 3% (and 1%, 5%), median and worst |error| of the KV-token predictions."""
    errs = np.asarray([abs(r["rel_error"]) for r in rows if r["rel_error"] is not None])
    if errs.size == 0:
        return {"n": 0}
    fails = [r for r in rows if r["failed_to_fit"]]
    return {"n": int(errs.size), "within_1pct": float(np.mean(errs <= 0.01)),
            "within_3pct": float(np.mean(errs <= TOLERANCE)), "within_5pct": float(np.mean(errs <= 0.05)),
            "median_abs_error": float(np.median(errs)), "p95_abs_error": float(np.quantile(errs, 0.95)),
            "max_abs_error": float(errs.max()), "target_met": bool(np.mean(errs <= TOLERANCE) >= 0.95),
            "failures_predicted": f"{sum(not r['predicted_fits'] for r in fails)}/{len(fails)}"}


def evaluate(records: list[KvRecord]) -> dict:
    """The full fit, its in-sample rows, and leave-one-model-out rows (one refit per architecture)."""
    usable = [r for r in records if r.usable]
    terms = fit_terms(usable)
    in_sample = [_row(r, predict(r, terms)) for r in usable]
    lomo: list[dict] = []
    for name in sorted({r.spec.name for r in usable}):
        train = [r for r in usable if r.spec.name != name]
        held = [r for r in usable if r.spec.name == name]
        train_eras = {r.era for r in train}
        fold = fit_terms(train, start=terms)
        for r in held:
            if r.era not in train_eras:
                lomo.append({**_row(r, predict(r, terms)), "rel_error": None,
                             "note": f"era {r.memory_era.value} has no other model to fit on"})
                continue
            lomo.append(_row(r, predict(r, fold)))
    lomo.sort(key=lambda r: r["index"])
    by_era = {}
    for era in sorted({r["era"] for r in in_sample}):
        by_era[era] = {"in_sample": summarize([r for r in in_sample if r["era"] == era]),
                       "leave_one_model_out": summarize([r for r in lomo if r["era"] == era])}
    components = fit_terms(usable, kv=False)
    comp_rows = [_row(r, predict(r, components)) for r in usable if r.era in components.coefficients]
    return {"terms": terms, "terms_components_only": components, "in_sample": in_sample,
            "in_sample_components_only": summarize(comp_rows), "leave_one_model_out": lomo,
            "cuda_graph_pool": fit_cuda_graph_pool(usable),
            "summary": {"in_sample": summarize(in_sample), "leave_one_model_out": summarize(lomo), "by_era": by_era},
            "skipped": [{"index": r.index, "model_id": r.model_id, "reason": r.skip_reason}
                        for r in records if not r.usable]}


def _component_errors(rows: list[dict]) -> dict:
    """Median and max |predicted - logged| (GiB) of each component, where logged."""
    out = {}
    for logged, pred in (("weights_gib", "weights_gib"), ("activation_peak_gib", "activation_gib"),
                         ("non_torch_gib", "non_torch_gib")):
        d = [abs(r["predicted"][pred] - r["logged"][logged]) for r in rows if r["logged"][logged] is not None]
        if d:
            out[logged] = {"n": len(d), "median_abs_gib": float(np.median(d)), "max_abs_gib": float(max(d))}
    return out


def report_dict(result: dict, data_file: Path) -> dict:
    terms: FittedTerms = result["terms"]
    return {"data": {"file": str(RECORDS_FILE), "sha256": file_digest(data_file)},
            "terms": {era.value: {"values": asdict(c), "stderr": terms.stderr[era],
                                  "not_identified": list(terms.not_identified[era])}
                      for era, c in terms.coefficients.items()},
            "terms_components_only": {era.value: {"values": asdict(c), "stderr": result["terms_components_only"].stderr[era]}
                                      for era, c in result["terms_components_only"].coefficients.items()},
            "kv_error_with_component_only_terms": result["in_sample_components_only"],
            "cuda_graph_pool": result["cuda_graph_pool"],
            "summary": result["summary"], "component_errors": _component_errors(result["in_sample"]),
            "in_sample": result["in_sample"], "leave_one_model_out": result["leave_one_model_out"],
            "skipped": result["skipped"]}


# ----- profiles ----------------------------------------------------------------------------
def era_of_profile(profile: dict) -> MemoryEra:
    """The era whose terms a profile gets: v0 profiles the v0 era, v1 profiles the newest v1 era."""
    return MemoryEra.V0 if str(profile.get("engine")) == "vllm-v0" else MemoryEra.V1_017


def memory_section(report: dict, era: MemoryEra) -> dict:
    """A profile ``memory`` section: every term with value, stderr and source (file, sha256, era)."""
    block = report["terms"][era.value]
    newest = report["terms"].get(MemoryEra.V1_017.value, block)
    lomo = report["summary"]["by_era"].get(era.value, {}).get("leave_one_model_out", {})
    share = (f"{lomo['within_3pct']:.0%} of {lomo['n']} records" if lomo.get("n")
             else "not evaluated (no second model in this era)")
    src = (f"fit: servesim.calibrate.kv_capacity on {report['data']['file']} (sha256 "
           f"{report['data']['sha256'][:12]}), era {era.value} ({ERA_RECORDS[era]}), {date.today().isoformat()}; "
           f"KV tokens within 3% leave-one-model-out: {share}")
    out = {}
    for f in fields(MemoryCoefficients):
        value = float(block["values"][f.name])
        if f.name in FIXED_SOURCES:
            out[f.name] = Coefficient(value, 0.0, Source.FIXED, FIXED_SOURCES[f.name]).entry()
            continue
        if f.name == "cuda_graph_bytes":
            out[f.name] = Coefficient(0.0, 0.0, Source.FIXED, "vLLM captures CUDA graphs after sizing the KV "
                                      "cache and does not deduct them (v0; v1 up to 0.19 unless "
                                      "VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1); see docs/memory.md").entry()
            continue
        se = block["stderr"].get(f.name, 0.0)
        coef = Coefficient(value, float(se) if np.isfinite(se) else 0.0, Source.FITTED, src)
        if f.name in block["not_identified"]:
            # No information in this era's records: the newest era's value stands as the spread.
            coef = Coefficient(value, abs(float(newest["values"][f.name])), Source.BOUND,
                               src + "; NOT IDENTIFIED by this era's records (held at its bound); stderr is the "
                               f"{MemoryEra.V1_017.value} value as a prior spread")
        out[f.name] = coef.entry(5, 3)
    return out


def write_profiles(report: dict, folder: Path) -> list[Path]:
    """Rewrite only the ``memory`` section of every profile JSON in ``folder``; other keys untouched."""
    written = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        era = era_of_profile(data)
        if era.value not in report["terms"]:
            continue
        data["memory"] = memory_section(report, era)
        path.write_text(json.dumps(data, indent=2) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servesim.calibrate.kv_capacity", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="data folder holding kv_capacity/ (default: ../shared/data)")
    parser.add_argument("--report", default=None, help="write the full report (JSON) here")
    parser.add_argument("--table", default=None, help="write the per-record error table (markdown) here")
    parser.add_argument("--write-profiles", action="store_true",
                        help="rewrite the memory section of every shipped profile in sim/profiles/")
    args = parser.parse_args(argv)
    try:
        data_file = Path(args.data) / RECORDS_FILE if args.data else find_shared_data(str(RECORDS_FILE))
        report = report_dict(evaluate(load_records(data_file)), data_file)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_report(report)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1, default=str) + "\n")
    if args.table:
        Path(args.table).write_text(records_markdown(report))
    if args.write_profiles:
        for path in write_profiles(report, shipped_profiles_dir()):
            print(f"wrote memory section of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
