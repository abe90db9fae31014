"""Where the project's shared data lives: the one lookup every reader of ``shared/data`` uses.

The real measurements (traces, bench results, start-up logs, kernel tables) are not in the
repository: they sit in a ``shared/data`` folder beside it (``../shared/data`` from a checkout), or
wherever ``$SERVESIM_DATA`` points.  :func:`find_shared_data` resolves a path under that folder or
raises ``FileNotFoundError`` saying where it looked; it never reads a file itself.  It lives in
``sim`` (which imports nothing of the other packages) so that ``sim``, ``calibrate``, ``serve``,
``scenarios``, the benchmarks and the tests all share it without importing each other.
"""
from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "SERVESIM_DATA"


def find_shared_data(relative: str = "") -> Path:
    """``shared/data/<relative>``: from ``$SERVESIM_DATA`` if set, else the nearest ``shared/data``.

    Without the variable, every ancestor of the working directory and of this file is tried for
    a ``shared/data`` folder holding ``relative`` (the repo sits beside ``shared/``).
    Raises ``FileNotFoundError`` listing where it looked.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        path = Path(env).expanduser() / relative
        if path.exists():
            return path
        raise FileNotFoundError(f"{path} does not exist "
                                f"(${DATA_ENV}={env!r} should be a folder like shared/data)")
    looked: list[Path] = []
    for start in (Path.cwd().resolve(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            root = folder / "shared" / "data"
            if root in looked:
                continue
            looked.append(root)
            if (root / relative).exists():
                return root / relative
    raise FileNotFoundError(f"shared data file {relative!r} not found under any of: "
                            f"{', '.join(map(str, looked))}; set ${DATA_ENV} to the shared/data folder")
