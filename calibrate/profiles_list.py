"""``servesim profiles``: every shipped profile with its deployment, provenance and measured error.

A profile describes one deployment (engine version, scheduling options, kernels, API server).
Its JSON carries where its coefficients came from (``provenance``: the files fitted, with digests)
and, when it has been cross-validated, ``measured_error``: median |error| on held-out runs per
split (written by :mod:`servesim.calibrate.fidelity` or, for the ML.ENERGY fit,
:mod:`servesim.calibrate.crossval`).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..sim.profile import shipped_profiles


def _origins(provenance: list[dict]) -> str:
    kinds = Counter(str(p.get("kind") or p.get("framework") or "kernel table") for p in provenance)
    return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))


def describe_profile(name: str, path: Path, aliases: list[str]) -> list[str]:
    data = json.loads(path.read_text())
    dep = data.get("deployment") or {}
    lines = [f"{name}  [{data['engine']} {data.get('engine_version', '')}, gpu {data['gpu']}]"
             + (f"  aliases: {', '.join(aliases)}" if aliases else "")]
    if dep:
        lines.append("  deployment: " + ", ".join(f"{k}={v}" for k, v in dep.items() if k != "name" and v is not None))
    if data.get("description"):
        lines.append(f"  {data['description']}")
    lines.append(f"  provenance: {_origins(data.get('provenance', []))}; regenerate: {data.get('generated_by', 'n/a')}")
    err = data.get("measured_error")
    if err:
        lines.append(f"  measured error: {err.get('source', '')}")
        for split, metrics in err.get("splits", {}).items():
            lines.append(f"    {split:<28} " + ", ".join(f"{k} {v:.1%}" for k, v in metrics.items()))
    else:
        lines.append("  measured error: not cross-validated")
    lines.append(f"  file: {path}")
    return lines


def describe_profiles() -> str:
    by_file: dict[Path, list[str]] = {}
    for name, path in shipped_profiles().items():
        by_file.setdefault(path, []).append(name)
    out: list[str] = []
    for path, names in sorted(by_file.items(), key=lambda kv: kv[1][0]):
        stem = path.stem
        out += describe_profile(stem, path, [n for n in names if n != stem])
        out.append("")
    return "\n".join(out).rstrip()
