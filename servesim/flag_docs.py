"""The tables of ``docs/cli.md``, generated from the field specs.

``python -m servesim.flag_docs`` rewrites the text between ``<!-- generated: NAME -->`` and
``<!-- end generated -->`` in that file from :class:`~servesim.sim.engine_args.EngineArgs` and
:class:`~servesim.sim.workload.WorkloadSpec`; ``--check`` only reports whether they are current
(``tests/test_flag_docs.py`` runs it), so a knob added to the dataclass cannot go undocumented.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .sim.arg_spec import ArgSpec, arg_fields, bounds_text, vllm_flags
from .sim.engine_args import EngineArgs
from .sim.workload import WorkloadSpec

DOCS = Path(__file__).resolve().parents[1] / "docs"
_BLOCK = re.compile(r"(<!-- generated: (\w[\w-]*) -->\n)(.*?)(<!-- end generated -->)", re.S)


def _default(spec: ArgSpec, default: object, engine: str) -> str:
    texts = dict(spec.defaults)
    if engine in texts:
        return texts[engine]
    if default is None:
        return spec.omitted or "none"
    return f"`{default}`"


def _allowed(spec: ArgSpec) -> str:
    if spec.choices:
        return ", ".join(f"`{c}`" for c in spec.choices)
    return bounds_text(spec)


def engine_args_table() -> str:
    """One row per :class:`EngineArgs` field: flags, scenario key, vLLM name, unit, allowed values,
    the default under each engine generation, and what it is."""
    rows = ["| flag | scenario key | vLLM flag | unit | allowed | default vllm-v1 | default vllm-v0 | what |",
            "|---|---|---|---|---|---|---|---|"]
    for f, spec, _, _ in arg_fields(EngineArgs):
        key = spec.scenario or f.name
        where = f"`deployment.{key}`" if spec.section == "deployment" else f"`deployment.knobs.{key}`"
        rows.append(f"| {', '.join(f'`{x}`' for x in spec.flags)} | {where} | {f'`{vllm_flags(spec)}`' if spec.vllm else '(servesim)'} "
                    f"| {spec.unit} | {_allowed(spec)} | {_default(spec, f.default, 'vllm-v1')} "
                    f"| {_default(spec, f.default, 'vllm-v0')} | {spec.help} |")
    return "\n".join(rows) + "\n"


def workload_table() -> str:
    """One row per :class:`WorkloadSpec` field with a flag or a scenario key."""
    rows = ["| flag | scenario key | unit | allowed | default | what |", "|---|---|---|---|---|---|"]
    for f, spec, _, _ in arg_fields(WorkloadSpec):
        key = f"`workload.{f.name}`" if spec.section == "workload" else ""
        flags = ", ".join(f"`{x}`" for x in spec.flags) or "(the arrival flag)"
        rows.append(f"| {flags} | {key} | {spec.unit} | {_allowed(spec)} | "
                    f"{_default(spec, f.default, '')} | {spec.help} |")
    return "\n".join(rows) + "\n"


TABLES = {"engine-args": engine_args_table, "workload-spec": workload_table}
FILES = ("cli.md",)


def render(text: str) -> str:
    """``text`` with every generated block replaced by its current table."""
    return _BLOCK.sub(lambda m: m.group(1) + TABLES[m.group(2)]() + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m servesim.flag_docs", description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if a table is not current; write nothing")
    ap.add_argument("--docs", type=Path, default=DOCS,
                    help="the checkout's docs/ folder (default: beside the package, as in a checkout)")
    args = ap.parse_args(argv)
    stale = []
    for name in FILES:
        path = args.docs / name
        if not path.is_file():
            print(f"python -m servesim.flag_docs: {path} not found; run it in a checkout (an installed package "
                  f"has no docs/), or pass --docs CHECKOUT/docs", file=sys.stderr)
            return 2
        text = path.read_text(encoding="utf-8")
        new = render(text)
        if new != text:
            stale.append(name)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if stale:
        print(f"{'stale' if args.check else 'rewrote'}: {', '.join(stale)}", file=sys.stderr)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
