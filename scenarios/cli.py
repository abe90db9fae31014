"""``servesim sweep``, ``servesim regions`` and ``servesim plan`` (registered by ``servesim.cli``).

Handlers return the exit status; input errors raise ``ValueError``/``FileNotFoundError``, which
``servesim.cli.main`` prints as one line and turns into status 2.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .. import argtypes as at
from ..sim.gpus import LINK_CATALOG
from ..sim.lengths import SHAREGPT_CONVERSATIONS_STATS, SHAREGPT_FIRST_TURN_STATS
from ..sim.router import RouterKind
from .loader import load_scenario, parse_slo, scenario_to_dict, shipped_scenarios
from .schema import SLO, ArrivalKind, Costs, ScenarioFile, WorkloadSection

MEASURED = "measured"  # placeholder model name of a measured sweep read without a scenario


def register(sub) -> None:
    p = sub.add_parser("sweep", help="sweep a scenario's demand axis; curve, regions and report",
                       description="Run every point x seed of every variant of a scenario (resuming a previous "
                                   "run in the same --out), then write curve.csv/.parquet, regions.json and "
                                   "report.html/report.md. SCENARIO is a YAML file or a shipped scenario name: "
                                   + ", ".join(shipped_scenarios()))
    p.add_argument("scenario")
    p.add_argument("--out", help="output folder (default sweeps/<scenario name>)")
    p.add_argument("--executor", choices=["local", "dask"], default="local",
                   help="local processes (default) or a Dask distributed cluster")
    p.add_argument("--workers", type=at.POSITIVE_INT, help="processes (default: every core) or LocalCluster workers")
    p.add_argument("--dask-address", help="scheduler of an existing Dask cluster (default: start a LocalCluster)")
    p.add_argument("--variant", action="append", help="run only this variant (repeatable)")
    p.add_argument("--no-report", action="store_true", help="skip report.html/report.md")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)

    r = sub.add_parser("regions", help="re-derive the regions of a finished or measured sweep folder",
                       description="DIR is a folder written by `servesim sweep`, or a measured sweep: curve.csv "
                                   "(demand,seed,output_throughput,...) or run folders with requests.jsonl "
                                   "(docs/scenarios.md, 'Measured sweeps').")
    r.add_argument("dir")
    r.add_argument("--scenario", help="YAML whose economics, slos and regions rules apply (measured sweeps; "
                                      "for a sweep folder they replace the recorded ones)")
    r.add_argument("--slo", help="SLOs, e.g. 'p99_ttft_ms<=2000,p99_tpot_ms<=100' (replaces the scenario's)")
    r.add_argument("--out", help="write curve, regions and report here (default: the sweep folder itself; "
                                 "nothing is written for a measured folder unless given)")
    r.add_argument("--axis", default="concurrency", choices=["burst", "concurrency", "rate"],
                   help="what a measured curve's demand is (default concurrency; ignored with --scenario)")
    r.add_argument("--json", action="store_true", help="print regions.json to stdout")
    r.add_argument("--no-report", action="store_true", help="write curve and regions but not the report")
    r.set_defaults(func=cmd_regions)

    q = sub.add_parser("plan", help="cheapest GPU x TP x replicas x max_num_seqs meeting SLOs at a demand",
                       description="Search deployments for the cheapest that meets the SLOs at --demand req/s, "
                                   "simulating one replica at demand/replicas.")
    q.add_argument("--demand", type=at.POSITIVE, required=True, help="total request rate (req/s)")
    q.add_argument("--model", default="llama-3.1-8b")
    q.add_argument("--workload", default="fixed:1024:256",
                   help="fixed:IN:OUT, random:IN:OUT[:RATIO], sharegpt (first-turn prompts as `vllm bench serve` "
                        f"sends them: {SHAREGPT_FIRST_TURN_STATS}), sharegpt-conversations (whole conversations: "
                        f"{SHAREGPT_CONVERSATIONS_STATS}), dist:IN_DIST,OUT_DIST, trace:PATH (or "
                        "shared:traces/FILE), or a scenario YAML (its workload)")
    q.add_argument("--slo", default="p99_ttft_ms<=2000,p99_tpot_ms<=100", help="comma-separated SLOs")
    q.add_argument("--gpus", default="h100-sxm,h200", help="comma-separated GPU names")
    q.add_argument("--tp", default="1,2,4,8", help="tensor-parallel sizes to try")
    q.add_argument("--max-num-seqs", default="64,128,256,512", help="admission limits to try")
    q.add_argument("--engine", default="vllm-v1", choices=["vllm-v1", "vllm-v0"])
    q.add_argument("--dtype", help="weight dtype (default: the checkpoint's)")
    q.add_argument("--kv-cache-dtype", default="auto")
    q.add_argument("--max-model-len", type=at.int_range(2), help="default: the workload's longest request (fixed/random "
                                                      "lengths), else 16384, capped at the model's context")
    q.add_argument("--burstiness", type=at.float_range(0.0, allow_inf=True), default=1.0, help="gamma shape of arrivals (1 = Poisson)")
    q.add_argument("--gpu-price", action="append", default=[], metavar="GPU=USD",
                   help="rental price per GPU-hour (repeatable); defaults are illustrative list prices")
    q.add_argument("--energy-price", type=at.NON_NEGATIVE, default=0.0, help="USD per kWh (with --pue)")
    q.add_argument("--pue", type=at.float_range(1.0, 10.0, lo_open=False), default=1.0)
    q.add_argument("--duration", type=at.float_range(0.0, 1e7), help="fix the simulated seconds of arrivals per run (default: as long "
                                                  "as the convergence rule asks, docs/scenarios.md)")
    q.add_argument("--confidence", type=at.float_range(0.0, 1.0), default=0.95, help="the SLOs must hold with this confidence "
                                                                  "(default 0.95)")
    q.add_argument("--seeds", type=at.POSITIVE_INT, default=3, help="independent replications per candidate (default 3)")
    q.add_argument("--profile-draws", type=at.NON_NEGATIVE_INT, default=3, help="parametric-bootstrap draws of the profile's "
                                                                "coefficients per candidate (default 3; 0: none)")
    q.add_argument("--json", action="store_true", help="print the answer as JSON (best, options, assumptions)")
    q.add_argument("--router", choices=[k.value for k in RouterKind],
                   help="simulate the whole cluster of r replicas behind this router at the full demand (r times "
                        "the work per candidate; docs/cluster.md); default: one replica at demand / r, an ideal split")
    q.add_argument("--router-staleness", type=at.NON_NEGATIVE, default=1.0,
                   help="with --router: seconds between the router's snapshots of replica state")
    q.add_argument("--disaggregated", action="store_true",
                   help="also search prefill/decode pools (1:1, 2:1, 1:2, 3:1, 1:3 at each replica count) simulated "
                        "as whole clusters behind --router (default round-robin) and compare them with collocated "
                        "replicas (docs/cluster.md)")
    q.add_argument("--kv-link", default="infiniband", choices=sorted(LINK_CATALOG),
                   help="with --disaggregated: the KV transfer link (sim/gpus.py LINK_CATALOG)")
    q.add_argument("--slack", type=at.NON_NEGATIVE, default=0.3, help="also search pairs whose bound is within this "
                                                            "fraction of the best cost (ranked alternatives)")
    q.add_argument("--top", type=at.POSITIVE_INT, default=10)
    q.add_argument("--workers", type=at.POSITIVE_INT)
    q.add_argument("--seed", type=at.SEED, default=0)
    q.set_defaults(func=cmd_plan)


# ------------------------------------------------------------------------------------------ sweep


def _print_regions(sf: ScenarioFile, regions, curve, file=None) -> None:
    from .advice import node_advice
    file = file or sys.stdout
    from .regions import mean_curve
    from .report import BOUNDARY_LABELS
    for sc, r in zip(sf.variants, regions):
        label = "measured sweep" if sc.deployment.model == MEASURED else sc.deployment.label
        print(f"{sc.name}  ({label}; {sc.sweep.axis.label})", file=file)
        for key, label in BOUNDARY_LABELS:
            print(f"  {label:<30} {getattr(r, key).describe()}", file=file)
        part = curve[curve["variant"] == sc.name] if not curve.empty else curve
        if "error" in part:
            part = part[part["error"].fillna("") == ""]
        advice = node_advice(sc, r, mean_curve(part) if not part.empty else part)
        for line in advice.lines:
            print(f"  > {line.split(': ', 1)[-1]}", file=file)
        for note in r.notes:
            print(f"  note: {note}", file=file)


def cmd_sweep(args) -> int:
    from dataclasses import replace

    from .sweep import SweepOptions, run_sweep
    sf = load_scenario(args.scenario)
    if args.variant:
        chosen = tuple(sf.variant(v) for v in args.variant)
        sf = replace(sf, variants=chosen)
    out = at.check_writable_dir(args.out or Path("sweeps") / sf.name)  # before the sweep, not after
    try:
        result = run_sweep(sf, SweepOptions(out_dir=out, executor=args.executor, workers=args.workers,
                                            dask_address=args.dask_address, progress=not args.quiet,
                                            report=not args.no_report))
    except KeyboardInterrupt:
        done = len(list((out / "points").rglob("*.json"))) if (out / "points").exists() else 0
        print(f"servesim sweep: interrupted; {done} finished point(s) are kept in {out / 'points'}. "
              "Run the same command again to resume.", file=sys.stderr)
        return 130
    total = result.num_run + result.num_skipped
    print(f"servesim sweep {sf.name}: {total} points ({result.num_run} run, {result.num_skipped} already done) "
          f"in {result.wall_s:.1f} s wall")
    _print_regions(sf, result.regions, result.curve)
    for key in ("curve_csv", "curve_parquet", "regions_json", "report_html", "report_md"):
        if key in result.files:
            print(f"  {key.replace('_', '.', 1) if key.startswith('curve') else key}: {result.files[key]}")
    return 0


# ---------------------------------------------------------------------------------------- regions


def _slos(text: str) -> tuple[SLO, ...]:
    return tuple(parse_slo(part, "--slo") for part in text.split(",") if part.strip())


def cmd_regions(args) -> int:
    from dataclasses import replace

    import pandas as pd

    from .measured import load_measured
    from .regions import regions_frame
    from .schema import Axis, Scenario, Sweep
    from .sweep import analyse, load_sweep_dir, write_outputs
    folder = Path(args.dir)
    slos = _slos(args.slo) if args.slo else None  # a typo fails before any folder is read
    if not folder.is_dir():
        raise ValueError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'}; expected a folder "
                         "written by `servesim sweep` or a measured sweep")
    if args.out:
        at.check_writable_dir(args.out)
    measured = not (folder / "scenario.json").exists()
    override = load_scenario(args.scenario) if args.scenario else None
    if measured:
        curve = load_measured(folder)
        base = override.variants[0] if override else None
        variants = []
        for name in curve["variant"].unique():
            points = tuple(sorted(float(d) for d in curve.loc[curve["variant"] == name, "demand"].unique()))
            seeds = tuple(sorted(int(s) for s in curve.loc[curve["variant"] == name, "seed"].unique()))
            if base is not None:
                sc = replace(base, name=str(name), sweep=replace(base.sweep, points=points, seeds=seeds))
            else:
                from .schema import Deployment
                axis = Axis(args.axis)
                kind = {Axis.BURST: ArrivalKind.BURST, Axis.CONCURRENCY: ArrivalKind.CLOSED,
                        Axis.RATE: ArrivalKind.POISSON}[axis]
                sc = Scenario(str(name), Deployment(model=MEASURED), WorkloadSection(kind=kind),
                              Sweep(axis, points, seeds))
            variants.append(sc)
        sf = ScenarioFile(folder.name, f"measured sweep {folder}", tuple(variants), str(folder))
    else:
        sf, curve = load_sweep_dir(folder)
        if override:
            by_name = {v.name: v for v in override.variants}
            sf = replace(sf, variants=tuple(
                replace(v, economics=by_name.get(v.name, override.variants[0]).economics,
                        slos=by_name.get(v.name, override.variants[0]).slos,
                        regions=by_name.get(v.name, override.variants[0]).regions) for v in sf.variants))
    if slos:
        sf = replace(sf, variants=tuple(replace(v, slos=slos) for v in sf.variants))
    if curve.empty:
        raise ValueError(f"{folder}: no finished points")
    curve, regions = analyse(sf, curve)
    if args.json:
        print(json.dumps([r.to_dict() for r in regions], indent=2, default=float))
    else:
        _print_regions(sf, regions, curve)
    out = Path(args.out) if args.out else (None if measured else folder)
    if out is not None:
        if measured:
            out.mkdir(parents=True, exist_ok=True)
            (out / "scenario.json").write_text(json.dumps(scenario_to_dict(sf), indent=2))
        files = write_outputs(out, sf, curve, regions, report=not args.no_report)
        if not args.json:
            print(f"  regions written to {files['regions_json']}"
                  + (f"; report {files['report_html']}" if "report_html" in files else ""))
    elif not args.json:
        print(pd.DataFrame(regions_frame(regions))[["variant", "name", "value", "seed_lo", "seed_hi"]]
              .to_string(index=False), file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------- plan


def plan_workload(text: str, duration_s: float | None, burstiness: float) -> WorkloadSection:
    """The workload of ``--workload``; ``duration_s`` None leaves the run length to the convergence rule."""
    kind = ArrivalKind.POISSON if burstiness == 1.0 else ArrivalKind.GAMMA
    common = dict(duration_s=duration_s, min_requests=300, max_requests=3000 if duration_s else None,
                  burstiness=burstiness)
    head, _, rest = text.partition(":")
    try:
        if head == "fixed":
            i, o = rest.split(":")
            return WorkloadSection(kind=kind, dataset="fixed", input_len=int(i), output_len=int(o), **common)
        if head == "random":
            parts = rest.split(":")
            ratio = float(parts[2]) if len(parts) > 2 else 0.5
            return WorkloadSection(kind=kind, dataset="random", input_len=int(parts[0]), output_len=int(parts[1]),
                                   range_ratio=ratio, **common)
        if head in ("sharegpt", "sharegpt-conversations") and not rest:
            return WorkloadSection(kind=kind, dataset=head, **common)
        if head == "dist":
            i, o = rest.split(",")
            return WorkloadSection(kind=kind, dataset="dist", input_dist=i, output_dist=o, **common)
        if head in ("trace", "shared"):
            if head == "trace" and not Path(rest).expanduser().is_file():
                raise ValueError(f"{rest} {'is a directory' if Path(rest).is_dir() else 'not found'}; "
                                 "expected a trace file")
            return WorkloadSection(kind=ArrivalKind.TRACE, trace=rest if head == "trace" else text, **common)
    except ValueError as exc:
        raise ValueError(f"--workload {text!r}: {exc}") from None
    if text.endswith((".yaml", ".yml")) or text in shipped_scenarios():
        return load_scenario(text).variants[0].workload
    raise ValueError(f"--workload {text!r}: expected fixed:IN:OUT, random:IN:OUT[:RATIO], sharegpt, "
                     "sharegpt-conversations, "
                     "dist:IN_DIST,OUT_DIST, trace:PATH, shared:traces/FILE or a scenario YAML")


def cmd_plan(args) -> int:
    from .plan import DEFAULT_GPU_PRICES, PlanRequest, plan
    from .plan_output import plan_json, print_plan
    t0 = time.perf_counter()
    prices = dict(DEFAULT_GPU_PRICES)
    for item in args.gpu_price:
        gpu, _, usd = item.partition("=")
        try:
            prices[gpu.strip()] = float(usd)
        except ValueError:
            raise ValueError(f"--gpu-price {item!r}: expected GPU=USD_PER_GPU_HOUR, e.g. h100-sxm=2.9") from None
    from ..sim.gpus import get_gpu
    gpus = tuple(get_gpu(g).name for g in args.gpus.split(",") if g.strip())
    costs = {g: Costs(gpu_rental_per_gpu_hour=prices[g] if g in prices else None,
                      energy_price_per_kwh=args.energy_price, pue=args.pue) for g in gpus}
    missing = [g for g in gpus if g not in prices]
    if missing:
        raise ValueError(f"no price for {missing}; give --gpu-price {missing[0]}=USD_PER_GPU_HOUR")
    def ints(text: str, flag: str) -> tuple[int, ...]:
        try:
            values = tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise ValueError(f"{flag} {text!r}: expected comma-separated integers") from None
        if not values or min(values) < 1:
            raise ValueError(f"{flag} {text!r}: expected comma-separated integers >= 1")
        return values

    req = PlanRequest(model=args.model, demand_rps=args.demand,
                      workload=plan_workload(args.workload, args.duration, args.burstiness), slos=_slos(args.slo),
                      gpus=gpus, tps=ints(args.tp, "--tp"), max_num_seqs=ints(args.max_num_seqs, "--max-num-seqs"),
                      engine=args.engine, weight_dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype, costs=costs,
                      seed=args.seed, slack=args.slack, workers=args.workers, base_dir=str(Path.cwd()),
                      max_model_len=args.max_model_len, confidence=args.confidence, seeds=args.seeds,
                      profile_draws=args.profile_draws, router=args.router,
                      router_staleness_s=args.router_staleness, disaggregated=args.disaggregated,
                      kv_link=args.kv_link, progress=True)
    result = plan(req)
    if args.json:
        print(json.dumps(plan_json(req, result), indent=2, default=str))
        return 0 if result.options else 1
    print_plan(args, req, result)
    print(f"  {result.num_simulations} simulations, wall time {time.perf_counter() - t0:.1f} s")
    return 0 if result.options else 1
