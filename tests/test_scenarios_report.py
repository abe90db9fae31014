"""report.html is self-contained (every image an embedded PNG, no scripts, no external URL) and
opens in headless Chromium without console errors.  The browser test is skipped when no Chromium
is installed (Debian: ``apt-get install -y chromium``); it first checks that it does see the
console errors of a deliberately broken page, so a pass means something."""
from __future__ import annotations

import base64
import re
import shutil
import subprocess
import textwrap

import pytest

from servesim.scenarios.loader import load_scenario
from servesim.scenarios.sweep import SweepOptions, run_sweep

SCENARIO = textwrap.dedent("""
    name: report-check
    description: "Report test: <b>markup</b> & ampersands are escaped"
    deployment: {model: llama-3.1-8b, gpu: h100-sxm}
    workload: {kind: closed, input_len: 256, output_len: 32, requests_per_user: 2}
    sweep: {axis: concurrency, points: [1, 8, 32, 64], seeds: [0]}
    economics:
      prices: {input_per_1m_tokens: 0.05, output_per_1m_tokens: 0.2}
      costs: {gpu_capex_per_gpu: 30000, amortisation_years: 4, staff_per_gpu_month: 100}
    slos: ["p99_ttft_ms <= 300"]
    variants:
      - name: rate
        workload: {kind: poisson, num_requests: 300}
        sweep: {axis: rate, points: [4, 400], seeds: [0, 1]}
""")
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    (folder / "s.yaml").write_text(SCENARIO)
    sf = load_scenario(folder / "s.yaml")
    return sf, run_sweep(sf, SweepOptions(out_dir=folder / "out", workers=1, progress=False))


@pytest.fixture(scope="module")
def report(swept):
    return swept[1].out_dir / "report.html"


def test_figures_label_every_axis_with_a_unit_and_clip_none(swept) -> None:
    from servesim.scenarios.report import build_figures
    sf, result = swept
    figs = build_figures(result.out_dir, sf, result.curve, result.regions)
    assert figs
    for f in figs:
        assert f.clipped == (), (f.name, f.clipped)
        assert f.axis_labels and all("(" in lab and lab.endswith(")") for lab in f.axis_labels), (f.name, f.axis_labels)
    econ = [f for f in figs if f.name.endswith("economics.png")]
    assert econ and any("USD/h" in lab for lab in econ[0].axis_labels)


def test_numbers_read_right_and_unstable_points_are_named(swept, report) -> None:
    from servesim.scenarios.report import _fmt
    assert _fmt(30896.0) == "30,896" and _fmt(30896) == "30,896" and _fmt(0.1234567) == "0.1235"
    text = report.read_text()
    kv = int(swept[1].curve["kv_capacity_tokens"].iloc[0])
    assert f"{kv:,}" in text and "e+0" not in text.split("<h2>Figures</h2>")[0]
    assert "unstable" in text  # the 400 req/s point of the rate variant cannot keep up
    rate = [r for r in swept[1].regions if r.variant == "rate"][0]
    assert rate.saturation.value == 400.0 and rate.slo_limit.value in (None, 4.0)


def test_report_is_self_contained(report) -> None:
    text = report.read_text()
    assert text.startswith("<!DOCTYPE html>") and "</html>" in text
    assert "<script" not in text.lower()
    assert "&lt;b&gt;markup&lt;/b&gt; &amp; ampersands" in text
    sources = re.findall(r"src='([^']*)'", text) + re.findall(r'src="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for s in sources:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"(href|src)=['\"]https?://", text)
    for heading in ("Variants", "Regions", "Advice", "Figures", "Curves (mean over seeds)"):
        assert f"<h2>{heading}</h2>" in text


def _chromium(url: str) -> tuple[int, str, str]:
    proc = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--dump-dom", url], capture_output=True, text=True, timeout=90)
    return proc.returncode, proc.stdout, proc.stderr


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium/chromium-browser/google-chrome on PATH "
                                             "(Debian: apt-get install -y chromium)")
def test_report_opens_in_headless_chromium_without_console_errors(report, tmp_path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    _, _, stderr = _chromium(broken.as_uri())
    assert any("undefinedFunction" in line for line in _console_lines(stderr)), "the check cannot see console errors"
    rc, dom, stderr = _chromium(report.as_uri())
    assert rc == 0
    assert "servesim sweep: report-check" in dom and dom.count("<img") >= 5
    assert _console_lines(stderr) == []
    # the rendered page names every figure's axes, each with its unit or currency
    rendered = re.findall(r"Axes: ([^<]*)\.</span>", dom)
    assert len(rendered) == dom.count("<img")
    for labels in rendered:
        assert all("(" in lab and lab.strip().endswith(")") for lab in labels.split("; ")), labels
