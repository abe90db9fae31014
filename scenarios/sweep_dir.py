"""The layout of a sweep's output folder: where each point's row and time series are kept.

``points/<variant>/<key>.json`` holds one finished point x seed (written by :mod:`.sweep`),
``series/<variant>/<axis>=<value>.parquet`` the time series of a point's first seed (read by
:mod:`.plots` for the report).  Both sides take the paths from here, so the writer and the
readers agree on the layout without importing each other (docs/scenarios.md describes it).
"""
from __future__ import annotations

from pathlib import Path


def points_dir(out: Path, variant: str) -> Path:
    """The folder of a variant's point files."""
    return out / "points" / variant


def point_path(out: Path, variant: str, key: str) -> Path:
    """One point x seed of a variant (``key`` is :attr:`~.points.PointTask.key`)."""
    return points_dir(out, variant) / f"{key}.json"


def series_path(out: Path, variant: str, demand: float, axis: str) -> Path:
    """The time series kept for a variant's point at ``demand`` on ``axis`` (its first seed)."""
    return out / "series" / variant / f"{axis}={demand:g}.parquet"
