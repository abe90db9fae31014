"""Figures of a run directory, one PNG per probe family present, written to ``RUN_DIR/plots/``.

* ``prefill.png``      TTFT vs prompt length (every request, median per point)
* ``decode.png``       mean TPOT and output throughput vs concurrency
* ``context.png``      mean TPOT vs prompt length, one line per concurrency
* ``concurrency.png``  output throughput, TTFT and TPOT vs burst size (the H100 study's curves)
* ``seqlen.png``       output throughput and TPOT per (input, output) pair
* ``rate.png``         achieved throughput and latencies vs offered Poisson rate
* ``timeline.png``     running / waiting requests and KV-cache usage from ``metrics.csv``

Times are as measured (wall clock; multiply by ``time_scale`` for ``servesim serve --speed``).
Failed requests are counted in each figure's title, never silently dropped.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .metrics_csv import column, read_metrics  # noqa: E402
from .rundir import METRICS, load_requests  # noqa: E402


def point_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per point: params, counts, mean/median latencies (ms) and output throughput."""
    rows = []
    for pid, g in df.groupby("point_id", sort=False):
        ok = g[g.status == "ok"]
        span = (ok.send_time + ok.e2e_s).max() - ok.send_time.min() if len(ok) else float("nan")
        rows.append({"point_id": pid, "family": g.family.iloc[0], **g.params.iloc[0], "n": len(g), "n_ok": len(ok),
                     "ttft_ms": ok.ttft_s.mean() * 1e3, "median_ttft_ms": ok.ttft_s.median() * 1e3,
                     "tpot_ms": ok.tpot_s.mean() * 1e3, "e2e_ms": ok.e2e_s.mean() * 1e3,
                     "output_throughput": ok.output_tokens.sum() / span if span and span > 0 else float("nan")})
    return pd.DataFrame(rows)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _title(ax, what: str, s: pd.DataFrame) -> None:
    failed = int((s.n - s.n_ok).sum())
    ax.set_title(what + (f"  ({failed} failed requests)" if failed else ""), fontsize=10)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write every figure the run's data allows; returns their paths."""
    run_dir = Path(run_dir)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    df = load_requests(run_dir)
    written = []
    if not df.empty:
        summary = point_summary(df)
        for family, plot in _FAMILY_PLOTS.items():
            s = summary[summary.family == family]
            if not s.empty:
                written.append(plot(df[df.family == family], s, out / f"{family}.png"))
    if (run_dir / METRICS).exists():
        written.append(_timeline(read_metrics(run_dir / METRICS), out / "timeline.png"))
    return written


def _prefill(df, s, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(df.prompt_tokens, df.ttft_s * 1e3, s=8, alpha=0.4, label="requests")
    s = s.sort_values("prompt_len")
    ax.plot(s.prompt_len, s.median_ttft_ms, "o-", label="median")
    ax.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="TTFT (ms)")
    ax.legend()
    _title(ax, "prefill sweep: TTFT vs prompt length (1 output token)", s)
    return _save(fig, path)


def _decode(df, s, path):
    s = s.sort_values("concurrency")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(s.concurrency, s.tpot_ms, "o-")
    a.set(xscale="log", xlabel="concurrent requests", ylabel="mean TPOT (ms)")
    b.plot(s.concurrency, s.output_throughput, "o-")
    b.set(xscale="log", xlabel="concurrent requests", ylabel="output tokens / s")
    _title(a, "decode sweep", s)
    return _save(fig, path)


def _context(df, s, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    for n, g in s.groupby("concurrency"):
        g = g.sort_values("prompt_len")
        ax.plot(g.prompt_len, g.tpot_ms, "o-", label=f"{n} concurrent")
    ax.set(xscale="log", xlabel="prompt tokens (context)", ylabel="mean TPOT (ms)")
    ax.legend()
    _title(ax, "context sweep: decode at long contexts", s)
    return _save(fig, path)


def _concurrency(df, s, path):
    s = s.sort_values("concurrency")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(s.concurrency, s.output_throughput, "o-")
    a.set(xscale="log", xlabel="burst size (requests)", ylabel="output tokens / s")
    b.plot(s.concurrency, s.ttft_ms, "o-", label="mean TTFT")
    b.plot(s.concurrency, s.tpot_ms, "s-", label="mean TPOT")
    b.set(xscale="log", yscale="log", xlabel="burst size (requests)", ylabel="ms")
    b.legend()
    _title(a, "concurrency sweep", s)
    return _save(fig, path)


def _seqlen(df, s, path):
    labels = [f"{p}/{o}" for p, o in zip(s.prompt_len, s.output_len)]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.bar(labels, s.output_throughput)
    a.set(xlabel="input/output tokens", ylabel="output tokens / s")
    b.bar(labels, s.tpot_ms)
    b.set(xlabel="input/output tokens", ylabel="mean TPOT (ms)")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=45)
    _title(a, "sequence-length sweep", s)
    return _save(fig, path)


def _rate(df, s, path):
    s = s.sort_values("rate")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(s.rate, s.output_throughput, "o-")
    a.set(xlabel="offered rate (requests/s)", ylabel="output tokens / s")
    b.plot(s.rate, s.ttft_ms, "o-", label="mean TTFT")
    b.plot(s.rate, s.e2e_ms, "s-", label="mean E2E")
    b.set(yscale="log", xlabel="offered rate (requests/s)", ylabel="ms")
    b.legend()
    _title(a, "Poisson rate sweep", s)
    return _save(fig, path)


def _timeline(m: pd.DataFrame, path: Path) -> Path:
    t = m.time_s - m.time_s.iloc[0] if len(m) else m.time_s
    fig, (a, b) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    for key, label in (("running", "running"), ("waiting", "waiting")):
        series = column(m, key)
        if series is not None:
            a.plot(t, series, label=label)
    a.set(ylabel="requests")
    a.legend()
    usage = column(m, "kv_cache_usage")
    if usage is not None:
        b.plot(t, usage * 100)
    b.set(xlabel="seconds since first scrape", ylabel="KV cache usage (%)")
    a.set_title("server metrics (/metrics every scrape)", fontsize=10)
    return _save(fig, path)


_FAMILY_PLOTS = {"prefill": _prefill, "decode": _decode, "context": _context, "concurrency": _concurrency,
                 "seqlen": _seqlen, "rate": _rate}
