"""How much the POLCA answer rests on the power model's two assumptions (docs/cluster.md).

The power-cap model (:mod:`servesim.sim.power`) has two numbers that are assumptions, not fits (no
capped runs are in ``../shared/data``): the power-clock exponent (dynamic power ~ clock **
exponent; 1 is the conservative end, 3 the cubic voltage-frequency law) and the memory-clock
sensitivity (how much of ``1/c - 1`` a memory-bound step part pays; 0 = HBM-bound parts ignore the
SM clock entirely).  This re-runs the shipped ``polca-power-budget`` sweep with each assumption at
a low, mid and high value, the other at its default (one at a time), and answers the POLCA
question on each run (:func:`~.cluster_point.power_headroom`): the most servers that fit under the
budget within ``max_slowdown`` of the baseline's p99 latency.

    python -m servesim.scenarios.power_sensitivity              # prints the markdown table
    python -m servesim.scenarios.power_sensitivity --out table.md --workers 2

Only the sweep points up to ``--max-demand`` are simulated (the question's range), so a run takes
a few minutes on a small machine.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from .cluster_point import power_headroom
from .loader import load_scenario
from .schema import ScenarioFile
from .sweep import SweepOptions, run_sweep

DEFAULT_EXPONENT = 1.0     # sim/power.py PowerCap defaults (the schema's ClusterSection defaults too)
DEFAULT_SENSITIVITY = 0.1
# (assumption, level, exponent, memory sensitivity); the defaults are the "mid"/"default" rows.
SETTINGS: tuple[tuple[str, str, float, float], ...] = (
    ("defaults", "default", DEFAULT_EXPONENT, DEFAULT_SENSITIVITY),
    ("power_clock_exponent", "mid", 2.0, DEFAULT_SENSITIVITY),
    ("power_clock_exponent", "high (cubic)", 3.0, DEFAULT_SENSITIVITY),
    ("memory_clock_sensitivity", "low", DEFAULT_EXPONENT, 0.0),
    ("memory_clock_sensitivity", "high", DEFAULT_EXPONENT, 0.3),
)


@dataclass(frozen=True)
class SensitivityRow:
    """The POLCA answer under one setting of the two assumptions."""

    assumption: str
    level: str
    exponent: float
    memory_clock_sensitivity: float
    answer: str | None                 # the variant with the most GPUs within the slowdown
    slowdowns: dict[str, float]        # variant -> worst slowdown over the demands asked


def with_assumptions(sf: ScenarioFile, exponent: float, sensitivity: float, max_demand: float) -> ScenarioFile:
    """Every variant of ``sf`` with the two power-model assumptions set and the sweep cut at
    ``max_demand`` (the points beyond do not enter the answer)."""
    variants = []
    for sc in sf.variants:
        if sc.cluster is None:
            raise ValueError(f"variant {sc.name!r} has no cluster: section; the sensitivity needs cluster variants")
        points = tuple(p for p in sc.sweep.points if p <= max_demand)
        if not points:
            raise ValueError(f"no sweep point of {sc.name!r} is <= --max-demand {max_demand:g}")
        variants.append(replace(sc, cluster=replace(sc.cluster, power_clock_exponent=exponent,
                                                    memory_clock_sensitivity=sensitivity),
                                sweep=replace(sc.sweep, points=points)))
    return replace(sf, variants=tuple(variants))


def run(scenario: str = "polca-power-budget", baseline: str = "servers-4", max_demand: float = 4.0,
        max_slowdown: float = 0.1, metric: str = "p99_e2el_ms", workers: int | None = None,
        out_dir: str | None = None, progress: bool = True) -> list[SensitivityRow]:
    """One sweep and one POLCA answer per :data:`SETTINGS` row."""
    sf = load_scenario(scenario)
    rows = []
    with tempfile.TemporaryDirectory(prefix="servesim-power-sensitivity-") as tmp:
        root = Path(out_dir or tmp)
        for assumption, level, exponent, sensitivity in SETTINGS:
            if progress:
                print(f"[power-sensitivity] exponent {exponent:g}, memory sensitivity {sensitivity:g} ...",
                      file=sys.stderr, flush=True)
            folder = root / f"exp{exponent:g}-mem{sensitivity:g}"
            run_sweep(with_assumptions(sf, exponent, sensitivity, max_demand),
                      SweepOptions(out_dir=folder, workers=workers, progress=False, report=False))
            table, answer = power_headroom(pd.read_csv(folder / "curve.csv"), baseline, metric, max_slowdown,
                                           max_demand)
            rows.append(SensitivityRow(assumption, level, exponent, sensitivity, answer,
                                       {r.variant: float(r.worst_slowdown) for r in table.itertuples()}))
    return rows


def markdown(rows: list[SensitivityRow], baseline: str, max_slowdown: float) -> str:
    """The table docs/cluster.md shows: one row per setting, the worst slowdown of each variant."""
    variants = [v for v in rows[0].slowdowns if v != baseline]
    head = ("| assumption varied | level | exponent | memory sensitivity | "
            + " | ".join(variants) + f" | most servers within {max_slowdown:.0%} |")
    lines = [head, "|" + "---|" * (5 + len(variants))]
    for r in rows:
        cells = [f"{r.slowdowns.get(v, float('nan')):+.1%}" for v in variants]
        lines.append(f"| {r.assumption} | {r.level} | {r.exponent:g} | {r.memory_clock_sensitivity:g} | "
                     + " | ".join(cells) + f" | {r.answer or 'none'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="polca-power-budget", help="a cluster scenario under one power budget")
    p.add_argument("--baseline", default="servers-4")
    p.add_argument("--max-demand", type=float, default=4.0, help="the question's demand range (default 4)")
    p.add_argument("--max-slowdown", type=float, default=0.1)
    p.add_argument("--metric", default="p99_e2el_ms")
    p.add_argument("--workers", type=int)
    p.add_argument("--keep", help="keep the sweep folders under this directory")
    p.add_argument("--out", help="also write the markdown table to this file")
    args = p.parse_args(argv)
    try:
        rows = run(args.scenario, args.baseline, args.max_demand, args.max_slowdown, args.metric, args.workers,
                   args.keep)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = markdown(rows, args.baseline, args.max_slowdown)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
