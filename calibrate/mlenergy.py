"""End-to-end calibration on the ML.ENERGY v2 chat runs (vLLM 0.5.4 on H100, ``max_num_seqs`` sweep).

Each row of ``mlenergy_v2_h100_chat.csv`` is one benchmark: a model served by vLLM 0.5.4 with a
given tensor parallelism and ``max_num_seqs``, 2,000 ShareGPT first-turn requests queued at once
(500 prompts x 4), outputs generated to EOS.  It reports output throughput, mean TPOT, mean batch
size and GPU energy per request.  Here every row becomes a simulation of the same workload under
the ``vllm-v0`` policy, so coefficients can be chosen to make simulation match measurement
(:mod:`servesim.calibrate.e2e_fit`).

What the CSV does not say, and what is assumed instead (each assumption is listed in the fitted
profile's provenance):

* prompt lengths: ShareGPT first turns average about 220 Llama-tokenizer tokens (vLLM's
  ``benchmark_serving`` ShareGPT runs report ~215-220k input tokens per 1,000 prompts); drawn from a
  lognormal with that mean and sigma 1.0, clipped to [4, 2048];
* output lengths: the shape of the ShareGPT decode-length table (``traces/sharegpt_lengths_llama2.csv``)
  rescaled to the row's measured mean output length, clipped to [1, 4096];
* ``max_model_len``: min(model context, 8192) (the launch flags are not in the summary; first-turn
  chats never need more; it only sets the activation reservation of the KV-capacity model);
* rows with pipeline parallelism (Llama-3.1-405B, TP8 x PP2) are skipped: servesim does not model PP.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..sim.data_paths import find_shared_data
from ..sim.traces import read_length_pairs
from ..sim.workload import Workload, spawn_streams

MLENERGY_CSV = "h100/mlenergy_v2_chat/mlenergy_v2_h100_chat.csv"
PROMPT_MEAN_TOKENS = 220.0
PROMPT_SIGMA = 1.0
NUM_REQUESTS = 2000
MAX_MODEL_LEN_CAP = 8192


@dataclass(frozen=True)
class MLEnergyRow:
    """One measured run: configuration and what was measured."""

    model: str
    tp: int
    pp: int
    max_num_seqs: int
    avg_batch_size: float
    tpot_s: float
    output_throughput: float
    avg_output_tokens: float
    power_w_per_gpu: float
    energy_j_per_request: float
    file: str
    line: int
    num_requests: int = NUM_REQUESTS   # requests simulated (the measured runs sent 2,000)

    @property
    def key(self) -> str:
        return f"{self.model.split('/')[-1]}@{self.max_num_seqs}"

    def fit_metrics(self) -> dict[str, float]:
        """What the end-to-end fit matches: output throughput (tok/s) and mean TPOT (s)."""
        return {"output_throughput": self.output_throughput, "tpot_s": self.tpot_s}


def load_mlenergy(path: str | Path | None = None) -> tuple[list[MLEnergyRow], list[str]]:
    """Rows usable by the simulator, and a note for each row skipped (with why)."""
    path = Path(path) if path else find_shared_data(MLENERGY_CSV)
    df = pd.read_csv(path)
    needed = {"Model", "TP", "PP", "Avg TPOT (s)", "Token tput (tok/s)", "Avg Output Tokens",
              "Avg BS (reqs)", "Max BS (reqs)", "file", "Energy/req (J)"}
    missing = needed - set(df.columns)
    if missing:
        raise ValueError(f"{path}: not an ML.ENERGY summary, missing columns {sorted(missing)}")
    rows, skipped = [], []
    for i, r in df.iterrows():
        if int(r["PP"]) != 1:
            skipped.append(f"{r['Model']} {r['file']}: pipeline parallelism PP={r['PP']} is not simulated")
            continue
        m = re.search(r"bs(\d+)", str(r["file"]))
        max_num_seqs = int(m.group(1)) if m else int(r["Max BS (reqs)"])
        power = r.get("derived_avg_power_per_gpu_W", np.nan)
        rows.append(MLEnergyRow(model=r["Model"], tp=int(r["TP"]), pp=1, max_num_seqs=max_num_seqs,
                                avg_batch_size=float(r["Avg BS (reqs)"]), tpot_s=float(r["Avg TPOT (s)"]),
                                output_throughput=float(r["Token tput (tok/s)"]),
                                avg_output_tokens=float(r["Avg Output Tokens"]),
                                power_w_per_gpu=float(power), energy_j_per_request=float(r["Energy/req (J)"]),
                                file=str(r["file"]), line=int(i) + 2))
    return rows, skipped


def row_workload(row: MLEnergyRow, seed: int = 0, num_requests: int | None = None) -> Workload:
    """The assumed workload of a row (see the module docstring): a burst of ``num_requests``."""
    num_requests = num_requests or row.num_requests
    streams = spawn_streams(seed)
    # lognormal with mean PROMPT_MEAN_TOKENS: mu = ln(mean) - sigma^2 / 2
    mu = np.log(PROMPT_MEAN_TOKENS) - PROMPT_SIGMA ** 2 / 2
    inputs = np.clip(np.rint(streams.lengths.lognormal(mu, PROMPT_SIGMA, num_requests)), 4, 2048).astype(np.int64)
    _, decode = read_length_pairs(find_shared_data("traces/sharegpt_lengths_llama2.csv"))
    picks = decode[streams.lengths.integers(0, len(decode), num_requests)].astype(np.float64)
    outputs = np.clip(np.rint(picks * row.avg_output_tokens / picks.mean()), 1, 4096).astype(np.int64)
    return Workload(arrival_s=np.zeros(num_requests), input_tokens=inputs, output_tokens=outputs,
                    name=f"mlenergy:{row.key}")
