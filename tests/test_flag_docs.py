"""docs/cli.md's tables are the ones the field specs generate (``python -m servesim.flag_docs``)."""
from __future__ import annotations

import dataclasses

from servesim.flag_docs import DOCS, main, render
from servesim.sim.engine_args import EngineArgs


def test_cli_doc_tables_are_current():
    assert main(["--check"]) == 0, "docs/cli.md is stale: run python -m servesim.flag_docs"


def test_every_engine_flag_is_in_the_doc():
    text = (DOCS / "cli.md").read_text()
    assert render(text) == text
    for f in dataclasses.fields(EngineArgs):
        assert f"deployment.{'knobs.' if f.metadata['servesim_arg'].section == 'knobs' else ''}" in text
        assert f"`{f.metadata['servesim_arg'].flags[0]}`" in text, f.name
