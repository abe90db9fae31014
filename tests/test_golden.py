"""Back-tests against committed golden outputs (``tests/golden/*.json``).

Each scenario of ``tests/golden/make_golden.py`` is simulated again and every summary key is
compared with the committed value (relative tolerance 1e-9); keys added to the summary since the
files were made are not compared until they are regenerated.  A failure means results changed:
if the change is intended, regenerate with ``python tests/golden/make_golden.py`` and explain it.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def _load_make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN_DIR / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_golden = _load_make_golden()


def test_every_scenario_has_a_golden_file_and_no_file_is_stale():
    files = {p.stem for p in GOLDEN_DIR.glob("*.json")}
    assert files == set(make_golden.SCENARIOS)


@pytest.mark.parametrize("name", list(make_golden.SCENARIOS))
def test_golden(name):
    path = make_golden.path_of(name)
    assert path.exists(), f"{path} missing: run python tests/golden/make_golden.py {name}"
    expected = json.loads(path.read_text())
    actual = make_golden.run(name)
    missing = sorted(set(expected) - set(actual))
    assert not missing, f"summary keys {missing} disappeared"  # new keys are fine until regenerated
    mismatched = {}
    for key, want in expected.items():
        got = actual[key]
        if isinstance(want, float) or isinstance(got, float):
            if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12):
                mismatched[key] = (want, got)
        elif got != want:
            mismatched[key] = (want, got)
    assert not mismatched, f"{name}: (golden, now) differ for {mismatched}"


def test_golden_scenarios_cover_preemption_and_both_engines():
    summaries = {name: json.loads(make_golden.path_of(name).read_text()) for name in make_golden.SCENARIOS}
    assert any(s["num_preemptions"] > 0 for s in summaries.values())
    assert all(s["completed"] > 0 and s["failed"] == 0 for s in summaries.values())
    engines = {make_golden.SCENARIOS[name][0]().engine.value for name in summaries}
    assert engines == {"vllm-v1", "vllm-v0"}
