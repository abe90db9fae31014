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
""")
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    (folder / "s.yaml").write_text(SCENARIO)
    run_sweep(load_scenario(folder / "s.yaml"), SweepOptions(out_dir=folder / "out", workers=1, progress=False))
    return folder / "out" / "report.html"


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
