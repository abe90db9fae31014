"""``servesim calibrate``: from measurement inputs of any supported kind to one profile.

Inputs are recognised by their contents:

* a folder of aiconfigurator kernel tables (``*gemm_perf.parquet`` ...): kernel-level efficiencies
  (:mod:`servesim.calibrate.kernel_tables`);
* ``aiconfigurator-core``: the tables that package bundles for ``--gpu`` (when installed),
  staged by :mod:`servesim.calibrate.aiconfigurator` and fitted like the folder above;
* a folder of Vidur operator profiles (``.../mlp.csv``): GEMM efficiencies, used when no kernel
  tables are given and reported beside them as a cross-check otherwise (:mod:`servesim.calibrate.vidur`);
* the ML.ENERGY chat summary CSV: end-to-end rows (:mod:`servesim.calibrate.mlenergy`);
* ``vllm bench serve --save-result`` JSON files: end-to-end targets;
* an aiconfigurator silicon CSV (``silicon_ttft_ms``, ``silicon_tpot_ms``): vLLM v1 closed-loop rows,
  fitted by :mod:`servesim.calibrate.silicon` (CPU-side terms and the client's request path);
* a ``servesim measure`` probe run directory (``run.json``): probe fits
  (:mod:`servesim.calibrate.probe_fit`).

Order of work: start from the base profile (the shipped one for the GPU and engine, or
``--base``); kernel tables replace the kernel-level efficiencies; probe runs replace what they
measure; end-to-end targets then fit the remaining (CPU-side) terms by simulation in the loop, and
the ML.ENERGY power figures fit the power coefficients.  Every coefficient keeps the source it came
from, every input row its provenance, and the fit report its residuals.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..sim.gpus import get_gpu
from ..sim.profile import Profile, default_profile, load_profile
from . import e2e_fit
from .bench_runs import Deployment
from .fitting import Coefficient, Source, bounded_linear_step, jacobian_stderr
from .kernel_tables import _sha256
from .mlenergy import MLEnergyRow, load_mlenergy


def classify(path: Path) -> str:
    """The kind of a calibration input; ``ValueError`` naming the path if unknown."""
    if str(path) == "aiconfigurator-core":
        return "aiconfigurator_core"
    if any(c in str(path) for c in "*?[") and not path.exists():
        return "bench_json"   # a glob of bench results (expanded by bench_runs.expand_inputs)
    if path.is_dir():
        if any(path.glob("*gemm_perf.parquet")):
            return "kernel_tables"
        if (path / "run.json").exists():
            return "probe_run"
        if next(path.rglob("mlp.csv"), None) is not None:
            return "vidur"
        from .bench_runs import is_bench_result
        first = next(path.rglob("*.json"), None)
        if first is not None and is_bench_result(first):
            return "bench_json"
        raise ValueError(f"{path}: a folder, but neither kernel tables (*gemm_perf.parquet), a probe run "
                         "(run.json) nor vllm bench --save-result files")
    if not path.exists():
        raise ValueError(f"calibration input {path} not found")
    from .silicon_fit import is_silicon_csv
    if is_silicon_csv(path):
        return "silicon"
    if path.suffix == ".csv":
        header = path.open(encoding="utf-8").readline()
        if "Token tput" in header and "Avg TPOT" in header:
            return "mlenergy"
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON ({exc})") from None
        if isinstance(data, dict) and ("input_lens" in data or ("duration" in data and "total_input_tokens" in data)):
            return "bench_json"
    raise ValueError(f"{path}: not a recognised calibration input (kernel-table folder, ML.ENERGY CSV, "
                     "vllm bench --save-result JSON, or servesim measure run directory)")


def _profile_dict(profile: Profile) -> dict:
    """Profile -> JSON schema dict, keeping per-coefficient sources and stderr from ``profile``."""
    raw = json.loads(Path(profile.source_path).read_text()) if profile.source_path else {}

    def section(name: str, values: dict) -> dict:
        old = raw.get(name, {})
        out = {}
        for k, v in values.items():
            entry = dict(old.get(k, {})) if isinstance(old.get(k), dict) else {}
            entry["value"] = v
            entry.setdefault("stderr", profile.uncertainty.get(k))
            entry.setdefault("source", "default")
            out[k] = entry
        return out

    return {"name": profile.name, "engine": profile.engine, "engine_version": profile.engine_version,
            "gpu": profile.gpu, "coefficients": section("coefficients", asdict(profile.step)),
            "memory": section("memory", asdict(profile.memory)), "power": section("power", asdict(profile.power)),
            "provenance": list(profile.provenance), "fit_report": dict(raw.get("fit_report", {})),
            "notes": profile.notes}


def fit_power(rows: list[MLEnergyRow], sims: list[dict], idle_w: float, tdp_w: float) -> dict:
    """Prefill and decode watts per GPU so that ``idle*(1-busy) + prefill*f_p + decode*f_d``
    matches each row's measured average power (non-negative least squares, clipped to TDP)."""
    a_rows, b_rows = [], []
    for row, sim in zip(rows, sims):
        if not np.isfinite(row.power_w_per_gpu):
            continue
        f_p, busy = sim["prefill_fraction"], sim["busy_fraction"]
        a_rows.append([f_p, busy - f_p])
        b_rows.append(row.power_w_per_gpu - idle_w * (1 - busy))
    a, b = np.asarray(a_rows), np.asarray(b_rows)
    x = bounded_linear_step(a, b, np.array([idle_w, idle_w]), np.array([tdp_w, tdp_w]))
    pred = a @ x + (np.asarray([r.power_w_per_gpu for r in rows if np.isfinite(r.power_w_per_gpu)]) - b)
    meas = np.asarray([r.power_w_per_gpu for r in rows if np.isfinite(r.power_w_per_gpu)])
    se = jacobian_stderr(a, a @ x - b, pinv=False)
    rel = np.abs(pred - meas) / meas
    return {"prefill_w": (float(x[0]), float(se[0])), "decode_w": (float(x[1]), float(se[1])),
            "median_rel_error": float(np.median(rel)), "p90_rel_error": float(np.percentile(rel, 90)),
            "rows": int(len(b))}


def calibrate(inputs: list[str | Path], engine: str, gpu: str = "h100-sxm", base: str | Path | None = None,
              params: tuple[str, ...] | None = None, workers: int | None = None, max_nfev: int = 30,
              start: dict[str, float] | None = None, log=print, deployment: Deployment | None = None,
              bootstrap: int = 200, progress: bool = True) -> tuple[dict, list[dict]]:
    """The fitted profile dict and the per-target residual table."""
    get_gpu(gpu)  # an unknown GPU is an error naming the valid ones, not a silent H100 fit
    profile = load_profile(base) if base else default_profile(gpu, engine)
    data = _profile_dict(profile)
    data["gpu"] = get_gpu(gpu).name
    provenance = data["provenance"]
    targets: list = []
    mlenergy_rows: list[MLEnergyRow] = []
    bench_inputs: list = []
    for raw in inputs:
        path = Path(raw)
        kind = classify(path)
        log(f"input {path}: {kind}")
        if kind in ("kernel_tables", "aiconfigurator_core"):
            from .kernel_tables import build_profile
            power_yaml = None
            if kind == "aiconfigurator_core":
                import tempfile

                from ..sim.data_paths import find_shared_data
                from .aiconfigurator import stage_tables
                path = stage_tables(gpu, tempfile.mkdtemp(prefix="servesim-aic-"))
                power_yaml = find_shared_data("h100/splitwise/configs_power_model_constant.yaml")
            kt = build_profile(path, engine, power_yaml=power_yaml, gpu=gpu)
            for section in ("coefficients", "memory", "power"):
                for k, v in kt[section].items():
                    if not str(v.get("source", "")).startswith("prior") or k not in data[section]:
                        data[section][k] = v
            provenance.extend(kt["provenance"])
            data["fit_report"].update({f"kernel:{k}": v for k, v in kt["fit_report"].items()})
        elif kind == "vidur":
            from .vidur import fit_vidur_gemm
            vf, ew = fit_vidur_gemm(path)
            data["fit_report"]["vidur_gemm"] = vf.report() | {"elementwise": {k: v for k, v in ew.items()
                                                                              if k != "profiles"}}
            if not any(classify(Path(p)) in ("kernel_tables", "aiconfigurator_core") for p in inputs):
                for k in ("eff_bw", "eff_mm"):
                    data["coefficients"][k] = Coefficient(vf.values[k], vf.stderr[k], Source.KERNEL_TABLE,
                                                          f"Vidur operator profiles {path}").entry()
            digest = hashlib.sha256("".join(_sha256(Path(f)) for f in ew["profiles"]).encode()).hexdigest()
            provenance.append({"file": str(path), "sha256": digest, "kind": "vidur operator profiles",
                               "profiles": ew["profiles"], "sha256_of": "the concatenated sha256 of the profiles",
                               "source": "microsoft/vidur data/profiling/compute/h100 (MIT)"})
        elif kind == "probe_run":
            from ..measure.rundir import load_run
            from .probe_fit import fit_probe_run
            model = load_run(path).get("model")
            if not isinstance(model, str) or not model:
                raise ValueError(f"probe run {path}: run.json records no model; fit it with "
                                 "python -m servesim.calibrate.probe_fit RUN_DIR --model NAME")
            pf = fit_probe_run(path, model=model, gpu=gpu, engine=engine)
            for section in ("coefficients", "memory"):
                data[section].update(pf.get(section, {}))
            provenance.extend(pf.get("provenance", [{"file": str(path), "kind": "probe_run"}]))
            data["fit_report"][f"probe:{path.name}"] = pf.get("fit_report", {})
        elif kind == "mlenergy":
            rows, skipped = load_mlenergy(path)
            mlenergy_rows.extend(rows)
            targets.extend(rows)
            provenance.append({"file": str(path), "sha256": _sha256(path), "kind": "end-to-end",
                               "rows": len(rows), "skipped": skipped,
                               "source": "ML.ENERGY leaderboard v2 chat, vLLM 0.5.4, NVIDIA H100 80GB HBM3",
                               "assumptions": "see servesim.calibrate.mlenergy docstring"})
        elif kind == "silicon":
            from .silicon import calibrate_into
            calibrate_into(data, path, Profile.from_dict(data), engine, workers, max_nfev, log=log)
        elif kind == "bench_json":
            bench_inputs.append(raw)
    fitted = Profile.from_dict(data)
    table: list[dict] = []
    if bench_inputs and targets:
        raise ValueError("calibrate fits either bench results of one deployment or ML.ENERGY rows end to end, "
                         "not both in one run")
    if bench_inputs:
        from .deployment_calibrate import calibrate_deployment
        dep = deployment or Deployment(engine=engine, gpu=get_gpu(gpu).name)
        if dep.engine != engine or dep.gpu != get_gpu(gpu).name:
            dep = replace(dep, engine=engine, gpu=get_gpu(gpu).name)
        table = calibrate_deployment(data, fitted, bench_inputs, dep, params, workers, max_nfev, start,
                                     bootstrap, log, progress)
    elif targets:
        params = params or e2e_fit.DEFAULT_PARAMS
        log(f"end-to-end fit of {', '.join(params)} on {len(targets)} targets (simulation in the loop)")
        with e2e_fit.RowSimulator(workers, gpu) as sim:
            result = e2e_fit.fit(targets, fitted, params, simulator=sim, engine=engine, max_nfev=max_nfev, x0=start)
        for p in params:
            data["coefficients"][p] = Coefficient(result.values[p], result.stderr[p], Source.FITTED,
                                                  f"end-to-end fit on {len(targets)} runs (simulation in the loop)").entry()
        i = 0
        for target, simulated in zip(targets, result.sims):
            row = {"target": target.key}
            for name, measured in target.fit_metrics().items():
                row[f"{name}_measured"] = measured
                row[f"{name}_simulated"] = simulated[name]
                row[f"{name}_rel_error"] = float(np.expm1(result.residuals[i]))
                i += 1
            table.append(row)
        errs = {m: float(np.median([abs(r[f"{m}_rel_error"]) for r in table if f"{m}_rel_error" in r]))
                for m in ("output_throughput", "tpot_s", "mean_tpot_ms", "mean_ttft_ms")
                if any(f"{m}_rel_error" in r for r in table)}
        data["fit_report"]["end_to_end"] = {"params": list(params), "nfev": result.nfev, "message": result.message,
                                            "median_abs_rel_error": errs, "targets": len(targets),
                                            "jacobian": np.asarray(result.jac).tolist(),
                                            "scale": np.asarray(result.scale).tolist(),
                                            "residuals": np.asarray(result.residuals).tolist()}
        remaining = [k for k, v in data["coefficients"].items() if str(v.get("source", "")).startswith("prior")]
        data["notes"] = (f"{data['notes']} End-to-end calibration ({data['calibrated_at'] if 'calibrated_at' in data else 'this run'}): "
                         f"{', '.join(params)} fitted by simulation in the loop on {len(targets)} measured runs "
                         f"(median |error| {', '.join(f'{k} {v:.1%}' for k, v in errs.items())}). "
                         f"Still priors: {', '.join(remaining) or 'none'}.").strip()
        if mlenergy_rows:
            ml_sims = [s for t, s in zip(targets, result.sims) if isinstance(t, MLEnergyRow)]
            idle = data["power"]["idle_w"]["value"]
            pw = fit_power(mlenergy_rows, ml_sims, idle, get_gpu(gpu).tdp_w)
            for k in ("prefill_w", "decode_w"):
                data["power"][k] = Coefficient(pw[k][0], pw[k][1], Source.FITTED,
                                               f"fit to ML.ENERGY average GPU power ({pw['rows']} runs); "
                                               "Splitwise constants (700/380 W) as the check").entry()
            data["fit_report"]["power"] = {k: pw[k] for k in ("median_rel_error", "p90_rel_error", "rows")}
    data["calibrated_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    data["generated_by"] = "servesim calibrate " + " ".join(str(p) for p in inputs) + f" --engine {engine} --gpu {gpu}"
    return data, table
