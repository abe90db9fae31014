"""Derive the ShareGPT first-turn length table (``sim/data/sharegpt_first_turn.csv``) from real runs.

What ``vllm bench serve --dataset-name sharegpt`` sends: the *first* human turn of a ShareGPT
conversation as the prompt, and the token count of the first reply as ``max_tokens`` (the
benchmark drops pairs with a prompt or reply under 4 tokens, a prompt over 1,024 tokens or a pair
over 2,048).  The Lambda runs in ``../shared/data/h100/lambda_sep2024/`` (Meta-Llama-3 models,
Llama-3 tokenizer) and ``lambda_aug2024/`` (Mistral-7B-v0.3, Mistral tokenizer) are such runs,
each file carrying the tokenized ``input_lens`` and ``output_lens`` of every request.

Derivation (deterministic; rerun with ``python -m servesim.sim.sharegpt_first_turn``):

1. group the files by tokenizer (the folder); within a group every file sends the same prompts in
   the same order (a run of N requests sends the first N of the 320), checked here;
2. per prompt index: the input length (identical in every file, checked), and the output length
   as the **largest** output any run of that prompt produced, over runs that produced output
   (0-token outputs are failures the client counted as completed).  Generation stops at the
   reply's token count or earlier at EOS, so the maximum over the runs is the closest the data
   come to the ``max_tokens`` vLLM's benchmark set;
3. prompts no run completed are dropped.

The CSV (``prompt_index, tokenizer, input_tokens, output_tokens, num_runs``) and its provenance
(``sharegpt_first_turn.json``: every file with its sha256, the origin and the rule) are shipped
as package data; only these length pairs are kept, none of the runs' measurements.
"""
from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

from .data_paths import find_shared_data

FAMILIES = {"lambda_sep2024": "llama3", "lambda_aug2024": "mistral"}
OUT_DIR = Path(__file__).parent / "data"
TABLE = OUT_DIR / "sharegpt_first_turn.csv"
PROVENANCE = OUT_DIR / "sharegpt_first_turn.json"


def derive(h100_dir: Path) -> tuple[list[dict], dict]:
    """The rows of the table and its provenance, from the Lambda folders under ``h100_dir``."""
    rows: list[dict] = []
    files: list[dict] = []
    for folder, tokenizer in FAMILIES.items():
        paths = sorted((h100_dir / folder).glob("prompt_*/*/*.json"))
        if not paths:
            raise ValueError(f"no Lambda run files under {h100_dir / folder}")
        inputs: list[int] = []
        best: dict[int, int] = {}
        runs: dict[int, int] = {}
        for path in paths:
            raw = path.read_bytes()
            data = json.loads(raw)
            ins, outs = data["input_lens"], data["output_lens"]
            common = min(len(ins), len(inputs))
            if ins[:common] != inputs[:common]:
                raise ValueError(f"{path}: prompts differ from the other {folder} runs")
            if len(ins) > len(inputs):
                inputs = list(ins)
            for i, out in enumerate(outs):
                if out > 0:
                    best[i] = max(best.get(i, 0), int(out))
                    runs[i] = runs.get(i, 0) + 1
            files.append({"file": str(path.relative_to(h100_dir.parent)), "sha256": hashlib.sha256(raw).hexdigest(),
                          "requests": len(ins), "failed_0_token": sum(1 for o in outs if o == 0)})
        for i, n_in in enumerate(inputs):
            if i in best:
                rows.append({"prompt_index": i, "tokenizer": tokenizer, "input_tokens": int(n_in),
                             "output_tokens": best[i], "num_runs": runs[i]})
    provenance = {
        "what": "ShareGPT first-turn (prompt, reply) token lengths as vllm bench serve --dataset-name sharegpt "
                "sends them, one row per distinct prompt and tokenizer",
        "origin": "LambdaLabsML/vllm-benchmark results/ (lambda_sep2024: commit a4f9f437, runs 2024-09-07/08; "
                  "lambda_aug2024: commits de55d46 and siblings, runs 2024-08-19..25), via ../shared/data/h100/",
        "rule": "inputs identical across a tokenizer's runs (checked); output = max over runs with output > 0; "
                "prompts with no successful run dropped",
        "derived_by": "python -m servesim.sim.sharegpt_first_turn",
        "files": files,
    }
    return rows, provenance


def write(rows: list[dict], provenance: dict) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with TABLE.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["prompt_index", "tokenizer", "input_tokens", "output_tokens",
                                                "num_runs"])
        writer.writeheader()
        writer.writerows(rows)
    PROVENANCE.write_text(json.dumps(provenance, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    h100 = Path(argv[0]) if argv else find_shared_data("h100")
    rows, provenance = derive(Path(h100))
    write(rows, provenance)
    for tok in FAMILIES.values():
        part = [r for r in rows if r["tokenizer"] == tok]
        mean_in = sum(r["input_tokens"] for r in part) / len(part)
        mean_out = sum(r["output_tokens"] for r in part) / len(part)
        print(f"{tok}: {len(part)} prompts, mean input {mean_in:.0f}, mean output {mean_out:.0f} tokens")
    print(f"wrote {TABLE} and {PROVENANCE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
