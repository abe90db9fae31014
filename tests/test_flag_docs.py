"""docs/cli.md's tables are the ones the field specs generate (``python -m servesim.flag_docs``)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from servesim import flag_docs
from servesim.flag_docs import main, render
from servesim.sim.engine_args import EngineArgs

# The checkout's docs/, beside tests/.  flag_docs.DOCS is found from the module's own file, which
# is the checkout only in an editable install; the README's `pip install '.[test]'` copies the
# package into site-packages, where there is no docs/ folder.
DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(autouse=True)
def _checkout_docs(monkeypatch):
    monkeypatch.setattr(flag_docs, "DOCS", DOCS)


def test_cli_doc_tables_are_current():
    assert main(["--check"]) == 0, "docs/cli.md is stale: run python -m servesim.flag_docs"


def test_every_engine_flag_is_in_the_doc():
    text = (DOCS / "cli.md").read_text()
    assert render(text) == text
    for f in dataclasses.fields(EngineArgs):
        assert f"deployment.{'knobs.' if f.metadata['servesim_arg'].section == 'knobs' else ''}" in text
        assert f"`{f.metadata['servesim_arg'].flags[0]}`" in text, f.name


def test_without_a_docs_folder_it_says_so(tmp_path, capsys):
    """An installed package has no docs/: a clear error naming the path and --docs, status 2."""
    assert main(["--check", "--docs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "cli.md") in err and "--docs" in err
