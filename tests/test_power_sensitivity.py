"""The power-model sensitivity table (docs/cluster.md): each assumption at a low/mid/high value, the
POLCA answer under each (scenarios/power_sensitivity.py)."""
from __future__ import annotations

import textwrap

import pytest

from servesim.scenarios.loader import load_scenario
from servesim.scenarios.power_sensitivity import SETTINGS, main, markdown, run, with_assumptions

TINY = textwrap.dedent("""
    name: tiny-budget
    base_variant: servers-2
    deployment: {model: llama-3.1-8b, gpu: h100-sxm, knobs: {num_gpu_blocks: 2000, max_model_len: 4096}}
    cluster: {replicas: 2, router: round-robin, power_budget_w: 1400, demand_per_replica: true}
    workload: {kind: poisson, input_len: 2048, output_len: 16, num_requests: 60}
    sweep: {axis: rate, points: [2, 4, 8], seeds: 1}
    variants:
      - name: servers-3
        cluster: {replicas: 3}
""")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("sens") / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_assumptions_are_set_on_every_variant_and_points_cut(tiny):
    sf = with_assumptions(load_scenario(tiny), 3.0, 0.0, 4.0)
    for sc in sf.variants:
        assert sc.cluster.power_clock_exponent == 3.0 and sc.cluster.memory_clock_sensitivity == 0.0
        assert sc.sweep.points == (2.0, 4.0)
    with pytest.raises(ValueError, match="max-demand"):
        with_assumptions(load_scenario(tiny), 1.0, 0.1, 1.0)


def test_table_has_one_row_per_setting_and_the_steeper_law_slows_less(tiny, tmp_path):
    rows = run(str(tiny), baseline="servers-2", max_demand=4.0, max_slowdown=0.1, workers=1,
               out_dir=str(tmp_path), progress=False)
    assert [(r.exponent, r.memory_clock_sensitivity) for r in rows] == [(s[2], s[3]) for s in SETTINGS]
    by = {(r.exponent, r.memory_clock_sensitivity): r for r in rows}
    # 3 GPUs share 1,400 W (467 W each): prefill-heavy steps throttle; a cubic law throttles less
    linear, cubic = by[(1.0, 0.1)].slowdowns["servers-3"], by[(3.0, 0.1)].slowdowns["servers-3"]
    assert by[(1.0, 0.1)].slowdowns["servers-2"] == 0.0  # the baseline against itself
    assert cubic < linear
    table = markdown(rows, "servers-2", 0.1)
    assert table.count("\n") == 1 + len(SETTINGS) and "| servers-3 |" in table.splitlines()[0]


def test_bad_scenario_is_a_clear_error(capsys):
    assert main(["--scenario", "no-such-scenario"]) == 2
    assert "not found" in capsys.readouterr().err
