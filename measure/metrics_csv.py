"""vLLM's Prometheus ``/metrics``: parsing, and ``metrics.csv`` with a header that grows.

:func:`parse_metrics` turns exposition text into ``{series: value}`` with the reference parser
(``prometheus_client.parser.text_string_to_metric_families``).  A series is named as Prometheus
prints it, ``name{label="value",...}`` with labels sorted (histogram samples keep their ``_bucket``
/ ``_sum`` / ``_count`` suffix; ``_created`` timestamps are dropped: they are not measurements).

:class:`MetricsCSV` appends one row per scrape.  Its header is the union of every series seen so
far: when a scrape brings a new series (a histogram appears at the first request, a label set at
the first preemption) the file is rewritten once with the wider header, earlier rows left empty in
the new columns, so nothing that appears late is lost and every row stays aligned.

Readers: :func:`read_metrics` (a DataFrame), :func:`column` (one metric, labels ignored, summed
over label sets) and :func:`cache_config` (the labels of ``vllm:cache_config_info``).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

TIME_COLUMN = "time_s"  # Unix time of the scrape (s)
# Names one quantity has had across vLLM generations: first match wins.
ALIASES = {
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "preemptions": ("vllm:num_preemptions_total",),
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "generation_tokens": ("vllm:generation_tokens_total",),
}


def series_name(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def split_series(series: str) -> tuple[str, dict[str, str]]:
    """Inverse of :func:`series_name` (label values holding ``",`` are not supported)."""
    if "{" not in series:
        return series, {}
    name, _, rest = series.partition("{")
    labels = {}
    for part in rest.rstrip("}").split('",'):
        if part:
            key, _, value = part.partition('="')
            labels[key] = value.rstrip('"')
    return name, labels


def parse_metrics(text: str) -> dict[str, float]:
    """``{series: value}`` of one ``/metrics`` page; raises ``ValueError`` on malformed text."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            out[series_name(sample.name, sample.labels)] = float(sample.value)
    return out


class MetricsCSV:
    """``metrics.csv``: ``time_s`` then one column per series ever seen (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.columns: list[str] = [TIME_COLUMN]
        self.rows = 0
        if self.path.exists() and self.path.stat().st_size:  # resume: keep what is there
            with self.path.open(newline="") as fh:
                header = next(csv.reader(fh), None)
                self.rows = sum(1 for _ in fh)
            if header and header[0] == TIME_COLUMN:
                self.columns = header
        self._fh = None
        self._index = {c: i for i, c in enumerate(self.columns)}

    def append(self, time_s: float, values: dict[str, float]) -> None:
        new = [k for k in values if k not in self._index]
        if new:
            self._widen(sorted(new))
        if self._fh is None:
            fresh = not self.path.exists() or self.path.stat().st_size == 0
            self._fh = self.path.open("a", newline="", buffering=1)
            self._writer = csv.writer(self._fh)
            if fresh:
                self._writer.writerow(self.columns)
        row = [""] * len(self.columns)
        row[0] = repr(round(time_s, 6))
        for key, value in values.items():
            row[self._index[key]] = repr(value)
        self._writer.writerow(row)
        self.rows += 1

    def _widen(self, new: list[str]) -> None:
        """Rewrite the file with ``new`` columns appended to the header (atomically, by rename)."""
        self.close()
        old_width = len(self.columns)
        self.columns = self.columns + new
        self._index = {c: i for i, c in enumerate(self.columns)}
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with self.path.open(newline="") as src, tmp.open("w", newline="") as dst:
            reader, writer = csv.reader(src), csv.writer(dst)
            next(reader, None)
            writer.writerow(self.columns)
            pad = [""] * (len(self.columns) - old_width)
            for row in reader:
                writer.writerow(row + pad)
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_metrics(path: str | Path) -> pd.DataFrame:
    """``metrics.csv`` as a DataFrame (empty cells are NaN: the series did not exist then)."""
    return pd.read_csv(path)


def column(df: pd.DataFrame, quantity: str) -> pd.Series | None:
    """One metric by name or :data:`ALIASES` key, summed over its label sets; None when absent."""
    for name in ALIASES.get(quantity, (quantity,)):
        cols = [c for c in df.columns if c == name or c.startswith(name + "{")]
        if cols:
            return df[cols].sum(axis=1, min_count=1)
    return None


def cache_config(df_or_values) -> dict[str, str]:
    """Labels of ``vllm:cache_config_info`` (``num_gpu_blocks``, ``block_size``, ...), or {}."""
    names = df_or_values.columns if isinstance(df_or_values, pd.DataFrame) else df_or_values.keys()
    for series in names:
        name, labels = split_series(series)
        if name == "vllm:cache_config_info":
            return labels
    return {}
