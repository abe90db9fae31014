"""The top-level command line registers the package CLIs explicitly, and nothing imports it back."""
from __future__ import annotations

import ast
from pathlib import Path

from servesim import cli

REPO = Path(__file__).resolve().parents[1]


def _imported(path: Path) -> set[str]:
    """Modules a file imports, relative ones resolved against the servesim package layout."""
    parts = ("servesim", *path.relative_to(REPO).with_suffix("").parts)
    if parts[1] == "servesim":  # servesim/cli.py is servesim.cli
        parts = parts[1:]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(parts[:-node.level]) if node.level else []
            out.add(".".join(base + ([node.module] if node.module else [])))
            if not node.module:
                out |= {".".join(base + [a.name]) for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_commands_are_registered_explicitly():
    source = (REPO / "servesim/cli.py").read_text()
    assert "importlib" not in source
    sub = next(a for a in cli.build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"simulate", "calibrate", "validate", "measure", "serve", "sweep", "regions", "plan",
            "power-headroom", "models", "gpus", "profiles"} <= set(sub.choices)


def test_nothing_imports_the_top_level_cli_back():
    for folder in ("calibrate", "measure", "scenarios", "serve", "sim"):
        for path in (REPO / folder).rglob("*.py") if (REPO / folder).is_dir() else ():
            assert "servesim.cli" not in _imported(path), f"{path.relative_to(REPO)} imports servesim.cli"
    for name in ("cluster_cli.py", "simulate_run.py", "argtypes.py"):
        assert "servesim.cli" not in _imported(REPO / "servesim" / name), name
