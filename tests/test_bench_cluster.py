"""benchmarks/bench_cluster.py prints the router-decision table at 4, 16 and 64 replicas (issue 14's
performance section: router cost O(1) or O(log N)).  Timings are printed, not asserted: a shared
machine's CPU time is too noisy for a timed unit test."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from servesim.sim.router import RouterKind

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cluster.py"


def test_router_table_prints_every_router_at_three_sizes():
    out = subprocess.run([sys.executable, str(BENCH), "--routers-only", "--decisions", "3000"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    lines = out.splitlines()
    assert "4 rep" in lines[1] and "64 rep" in lines[1] and "64/4" in lines[1]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert set(rows) == {k.value for k in RouterKind}
    for cells in rows.values():
        assert len(cells) == 4 and all(float(c.replace(",", "")) > 0 for c in cells)


def test_router_table_as_json():
    out = subprocess.run([sys.executable, str(BENCH), "--routers-only", "--decisions", "2000", "--json"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    table = json.loads(out)["router_ns_per_decision"]
    assert set(table["least-outstanding-tokens"]) == {"4", "16", "64"}
