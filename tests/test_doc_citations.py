"""The code and the docs cite no Markdown file outside the repository (issue 8, item 6).

The design notes the project started from lived beside the checkout (``../shared/``); what the
code cites is now ``docs/design.md`` and the other pages of ``docs/``.  This test reads every
``*.py`` and ``*.md`` file of the repository and fails on a ``.md`` reference that points outside
it: a ``../`` path that leaves the repository, an absolute path (scratch files under ``/tmp/`` in
example commands aside), anything under ``shared/`` but the real data (``shared/data/``, which is
read, never copied, and whose README documents it), or a bare upper-case name (the founding notes
were ``DESIGN`` and ``STYLE``) that is not a file at the repository's top.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Folders that are not the project's own text: virtual environments, build output, and
# typecheck/servesim (symlinks to the package folders, which are read where they are).
SKIP_DIRS = {"build", "dist", "node_modules"}
SKIP_PATHS = {ROOT / "typecheck" / "servesim"}

# A path-like token ending in .md (a Markdown link target, a backquoted path, a docstring mention).
MD_REF = re.compile(r"(?<![\w.-])(?:\.\./|/)?[\w.-]+(?:/[\w.-]+)*\.md\b")
# A value after a command-line flag (``--table FILE.md``) names an output, not a document.
FLAG_VALUE = re.compile(r"--[\w-]+[ =]$")


def _project_files() -> list[Path]:
    files = []
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if path.suffix not in (".py", ".md") or not path.is_file():
            continue
        if any(part.startswith(".") or part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if any(parent in SKIP_PATHS for parent in path.parents):
            continue
        files.append(path)
    return files


def _inside(path: Path) -> bool:
    return path == ROOT or ROOT in path.parents


def outside_references(text: str, where: Path) -> list[str]:
    """The ``.md`` references of ``text`` (the contents of file ``where``) that point outside the
    repository, each as ``"line N: token"``."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in MD_REF.finditer(line):
            token = match.group(0)
            if FLAG_VALUE.search(line[:match.start()]):
                continue
            if "shared/data/" in token:
                continue  # the real data, cited where it is read
            if token.startswith("shared/") or "/shared/" in token:
                bad = True  # the folder beside the checkout: the founding notes, hooks
            elif token.startswith("/"):
                bad = not token.startswith("/tmp/") and not _inside(Path(token).resolve())
            elif token.startswith("../"):  # relative to the citing file, or to the repository's top
                targets = [(where.parent / token).resolve(), (ROOT / token).resolve()]
                bad = not any(_inside(t) and t.is_file() for t in targets)
            elif "/" not in token and token[:-3].isupper():
                bad = not (ROOT / token).is_file()  # README.md, ARCHITECTURE.md: at the top
            else:
                bad = False
            if bad:
                found.append(f"line {number}: {token}")
    return found


FILES = _project_files()


def test_the_scan_sees_the_code_and_the_docs():
    names = {p.relative_to(ROOT).as_posix() for p in FILES}
    assert {"README.md", "ARCHITECTURE.md", "docs/design.md", "docs/oracle.md", "sim/cost_model.py",
            "tests/test_doc_citations.py"} <= names
    assert not any(n.startswith((".venv", "typecheck/servesim/")) for n in names)


def test_no_markdown_file_outside_the_repository_is_cited():
    bad = {}
    for path in FILES:
        refs = outside_references(path.read_text(encoding="utf-8", errors="replace"), path)
        if refs:
            bad[path.relative_to(ROOT).as_posix()] = refs
    assert not bad, ("these cite .md files outside the repository (cite docs/design.md or another page "
                     "of docs/ instead):\n" + "\n".join(f"  {f}: {', '.join(r)}" for f, r in bad.items()))


# The examples are built by concatenation so that this file does not cite them itself.
SHARED = "../" + "shared/"


@pytest.mark.parametrize("text", [
    "the design notes in `" + SHARED + "DESIGN" + ".md`.",
    "(facts in `" + SHARED + "notes/vllm-v1-scheduler-on-cpu" + ".md`)",
    "The form (" + "DESIGN" + '.md, "Step cost"): features are',
    "see " + "STYLE" + ".md",
    "[notes](" + "../../" + "elsewhere/notes.md)",
    "read " + "/work/" + "shared/" + "DESIGN" + ".md",
    "see shared/" + "notes/x.md",
])
def test_outside_citations_are_found(text):
    assert outside_references(text, ROOT / "sim" / "example.py")


@pytest.mark.parametrize("text", [
    "lengths from `" + SHARED + "data/traces/README.md`",
    "see docs/design.md, \"Step cost\", and [engine.md](engine.md#one-step)",
    "[ARCHITECTURE.md](../ARCHITECTURE.md) and README.md",
    "writes report.html and report.md; --table FILE.md; --out /tmp/check.md",
])
def test_in_repository_citations_pass(text):
    assert not outside_references(text, ROOT / "docs" / "example.md")
