"""`--dataset sharegpt` means what `vllm bench serve --dataset-name sharegpt` sends (first-turn
prompts, ~200 tokens), from the shipped table derived from the Lambda runs; the whole-conversation
table is `sharegpt-conversations`.  The shipped table must be what the derivation gives."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from servesim.sim import sharegpt_first_turn as derivation
from servesim.sim.data_paths import find_shared_data
from servesim.sim.lengths import SHAREGPT_FIRST_TURN_STATS, first_turn_lengths, first_turn_table
from servesim.sim.workload import WorkloadSpec, build_workload


def shared_data_path(relative: str):
    try:
        return find_shared_data(relative)
    except FileNotFoundError:
        return None


def test_table_statistics_are_the_ones_stated_in_help() -> None:
    i, o = first_turn_table()
    stated = (f"{i.size} prompts, input mean {i.mean():.0f} / median {np.median(i):.0f} tokens, output mean "
              f"{o.mean():.0f} / median {np.median(o):.0f}")
    assert stated == SHAREGPT_FIRST_TURN_STATS
    assert 150 < i.mean() < 250 and (i >= 4).all() and (o >= 1).all()
    assert (i <= 1024).all() and (i + o <= 2048).all()  # vllm bench serve's ShareGPT filters


def test_provenance_names_every_file_with_its_digest() -> None:
    prov = json.loads(derivation.PROVENANCE.read_text())
    assert len(prov["files"]) == 86 and all(len(f["sha256"]) == 64 for f in prov["files"])
    assert "max over runs" in prov["rule"]


@pytest.mark.skipif(shared_data_path("h100/lambda_sep2024") is None, reason="needs ../shared/data (Lambda runs)")
def test_shipped_table_is_what_the_derivation_gives() -> None:
    rows, _ = derivation.derive(Path(shared_data_path("h100")))
    with derivation.TABLE.open() as fh:
        shipped = [{k: (v if k == "tokenizer" else int(v)) for k, v in r.items()} for r in csv.DictReader(fh)]
    assert rows == shipped


def test_sharegpt_is_first_turns_and_conversations_keep_their_table() -> None:
    first = build_workload(WorkloadSpec(kind="burst", num_requests=4000, dataset="sharegpt"), seed=0)
    assert 150 < first.input_tokens.mean() < 250
    assert build_workload(WorkloadSpec(kind="burst", num_requests=4000, dataset="sharegpt"), seed=0) \
        .input_tokens.tolist() == first.input_tokens.tolist()
    i, o = first_turn_lengths(100, np.random.default_rng(0), max_input=50)
    assert (i <= 50).all()
    with pytest.raises(ValueError, match="no ShareGPT first-turn pair"):
        first_turn_lengths(1, np.random.default_rng(0), max_input=1)


@pytest.mark.skipif(shared_data_path("traces/sharegpt_lengths_llama2.csv") is None, reason="needs ../shared/data")
def test_conversations_dataset_is_the_old_table() -> None:
    conv = build_workload(WorkloadSpec(kind="burst", num_requests=4000, dataset="sharegpt-conversations"), seed=0)
    assert conv.input_tokens.mean() > 2000
