"""Reading scenario YAML files into validated :class:`~.schema.Scenario` objects.

The YAML mirrors the dataclasses of :mod:`.schema` section by section (``deployment``,
``workload``, ``sweep``, ``economics``, ``slos``, ``regions``, ``advice``).  Loading checks every
key against the dataclass fields and every value against the field's type, so an error names the
file, the field path and what is allowed::

    scn.yaml: deployment.knobs: unknown field 'max_num_seq'; allowed: ['block_size', ...]
    scn.yaml: deployment.tp: expected an integer, got 'two'
    scn.yaml: sweep: points must be finite and > 0, got [0, 4]

``variants:`` lists overrides of the base; each is applied with ``dataclasses.replace`` section by
section (nested sections recursively), so a variant is again a fully validated scenario.
The same builder reads back the resolved ``scenario.json`` a sweep writes (:func:`scenario_to_dict`).
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from .schema import (
    SLO,
    Advice,
    Axis,
    Deployment,
    Economics,
    RegionRules,
    Scenario,
    ScenarioFile,
    Sweep,
    WorkloadSection,
    check_name,
)

TOP_KEYS = ("name", "description", "base_variant", "run_base", "deployment", "workload", "sweep",
            "economics", "slos", "regions", "advice", "exact", "sample_interval_s", "variants", "cluster")
SECTION_KEYS = ("deployment", "workload", "sweep", "economics", "slos", "regions", "advice", "exact",
                "sample_interval_s", "cluster")
INTEGER_AXES = (Axis.BURST, Axis.CONCURRENCY, Axis.INPUT_LEN, Axis.OUTPUT_LEN)
_SLO_TEXT = re.compile(r"^\s*(mean|median|p(\d+(?:\.\d+)?))_(ttft|tpot|e2el|itl)_ms\s*<=\s*([0-9.eE+]+)\s*$")


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file, the field and the fix."""


# ------------------------------------------------------------------------------ value converters


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """``value`` as type ``tp`` (from the dataclass annotations); raises naming ``path``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], path)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ScenarioError(f"{path}: expected a mapping of {[f.name for f in dataclasses.fields(tp)]}, "
                                f"got {value!r}")
        return _build(typing.cast(type, tp), value, path)
    if isinstance(tp, type) and issubclass(tp, Enum):
        allowed = [m.value for m in tp]
        if value not in allowed:
            raise ScenarioError(f"{path}: must be one of {allowed}, got {value!r}")
        return tp(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ScenarioError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise ScenarioError(f"{path}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ScenarioError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ScenarioError(f"{path}: expected a string, got {value!r}")
        return str(value)
    return value


def parse_points(value: Any, axis: Axis, path: str) -> tuple[float, ...]:
    """A list of numbers, ``{start, stop, num, scale: linear|log}`` or ``{start, stop, step}``."""
    if isinstance(value, dict):
        unknown = set(value) - {"start", "stop", "num", "step", "scale"}
        if unknown:
            raise ScenarioError(f"{path}: unknown key(s) {sorted(unknown)}; a range takes start, stop and "
                                "num (with scale linear or log) or step")
        try:
            start, stop = float(value["start"]), float(value["stop"])
        except (KeyError, TypeError, ValueError):
            raise ScenarioError(f"{path}: a range needs numeric start and stop, got {value!r}") from None
        if start <= 0 or stop < start:
            raise ScenarioError(f"{path}: a range needs 0 < start <= stop, got start {start}, stop {stop}")
        if "step" in value:
            step = _convert(value["step"], float, f"{path}.step")
            if step <= 0:
                raise ScenarioError(f"{path}.step: must be > 0, got {step}")
            raw = [start + i * step for i in range(int(math.floor((stop - start) / step + 1e-9)) + 1)]
        else:
            num = _convert(value.get("num", 10), int, f"{path}.num")
            scale = value.get("scale", "linear")
            if scale not in ("linear", "log") or num < 1:
                raise ScenarioError(f"{path}: scale must be 'linear' or 'log' and num >= 1, got {scale!r}, {num}")
            if num == 1:
                raw = [start]
            elif scale == "log":
                raw = [start * (stop / start) ** (i / (num - 1)) for i in range(num)]
            else:
                raw = [start + (stop - start) * i / (num - 1) for i in range(num)]
    elif isinstance(value, (list, tuple)):
        raw = [_convert(v, float, f"{path}[{i}]") for i, v in enumerate(value)]
    else:
        raise ScenarioError(f"{path}: expected a list of numbers or a range mapping "
                            "{start, stop, num, scale} / {start, stop, step}, got {value!r}")
    if axis in INTEGER_AXES:
        if isinstance(value, (list, tuple)) and any(v != round(v) for v in raw):
            raise ScenarioError(f"{path}: the {axis.value} axis takes whole numbers, got {raw}")
        raw = [float(round(v)) for v in raw]
    else:
        raw = [round(v, 9) for v in raw]
    return tuple(sorted(set(raw)))


def parse_slo(value: Any, path: str) -> SLO:
    """A mapping ``{metric, percentile, max_ms}`` or text like ``"p99_ttft_ms <= 2000"``."""
    if isinstance(value, str):
        m = _SLO_TEXT.match(value)
        if not m:
            raise ScenarioError(f"{path}: cannot read SLO {value!r}; write e.g. 'p99_ttft_ms <= 2000', "
                                "'mean_tpot_ms <= 50' or 'median_e2el_ms <= 8000'")
        pct = 0.0 if m.group(1) == "mean" else 50.0 if m.group(1) == "median" else float(m.group(2))
        value = {"metric": m.group(3), "percentile": pct, "max_ms": float(m.group(4))}
    return _build(SLO, value, path)


def _special(cls: type, name: str, value: Any, path: str, partial: dict) -> Any:
    """Fields that are not a plain type: sweep points/seeds, SLO lists, model overrides."""
    if cls is Sweep and name == "points":
        axis = partial.get("axis")
        return parse_points(value, axis if isinstance(axis, Axis) else Axis.RATE, path)
    if cls is Sweep and name == "seeds":
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ScenarioError(f"{path}: a seed count must be >= 1, got {value}")
            return tuple(range(value))
        if not isinstance(value, (list, tuple)):
            raise ScenarioError(f"{path}: expected a count or a list of seeds, got {value!r}")
        return tuple(_convert(v, int, f"{path}[{i}]") for i, v in enumerate(value))
    if cls is Scenario and name == "slos":
        if not isinstance(value, (list, tuple)):
            raise ScenarioError(f"{path}: expected a list of SLOs, got {value!r}")
        return tuple(parse_slo(v, f"{path}[{i}]") for i, v in enumerate(value))
    if cls is Deployment and name == "model_overrides":
        from ..sim.models import ModelSpec
        pairs = list(value.items()) if isinstance(value, dict) else [tuple(p) for p in value]
        hints = typing.get_type_hints(ModelSpec)
        allowed = [f.name for f in dataclasses.fields(ModelSpec) if f.name != "name"]
        out = []
        for key, v in pairs:
            if key not in allowed:
                raise ScenarioError(f"{path}: unknown model field {key!r}; allowed: {allowed}")
            out.append((key, _convert(v, hints[key], f"{path}.{key}")))
        return tuple(out)
    raise KeyError(name)


def _join(path: str, name: str) -> str:
    """``file: section.field`` paths: a dot inside a section, a space after the file's colon."""
    if not path:
        return name
    return f"{path} {name}" if path.endswith(":") else f"{path}.{name}"


def _build(cls: type, data: dict, path: str, base: Any = None) -> Any:
    """An instance of the dataclass ``cls`` from ``data`` (or ``base`` with ``data`` replaced)."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ScenarioError(f"{path}: unknown field {unknown[0]!r}; allowed: {sorted(fields)}")
    values: dict[str, Any] = {}
    for name in sorted(data, key=lambda k: k != "axis"):  # the axis first: points depend on it
        sub = _join(path, name)
        current = getattr(base, name) if base is not None else None
        try:
            context = {"axis": values.get("axis", getattr(base, "axis", None))}
            values[name] = _special(cls, name, data[name], sub, context)
            continue
        except KeyError:
            pass
        tp = hints[name]
        sub_cls = next((a for a in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)), None)
        if sub_cls is not None and isinstance(data[name], dict) and current is not None:
            values[name] = _build(typing.cast(type, sub_cls), data[name], sub, base=current)
        else:
            values[name] = _convert(data[name], tp, sub)
    if cls is Sweep and base is not None and "points" not in values and "axis" in values:
        values["points"] = parse_points(list(base.points), values["axis"], f"{path}.points")
    try:
        if base is not None:
            return dataclasses.replace(base, **values)
        missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ScenarioError(f"{path.rstrip(':') or 'scenario'}: missing required field(s) {missing}")
        return cls(**values)
    except ScenarioError:
        raise
    except (ValueError, TypeError) as exc:
        raise ScenarioError(f"{path.rstrip(':') or 'scenario'}: {exc}") from None


# ------------------------------------------------------------------------------------ catalogues


def _check_names(sc: Scenario, where: str) -> None:
    """The model, GPU and profile exist (feasibility, e.g. fitting in memory, is a sweep result)."""
    from ..sim.gpus import get_gpu
    from ..sim.model_catalog import get_model
    from ..sim.profile import shipped_profiles
    dep = sc.deployment
    try:
        model_path = Path(sc.base_dir) / dep.model
        get_model(str(model_path) if model_path.suffix == ".json" else dep.model)
        get_gpu(dep.gpu)
    except (ValueError, FileNotFoundError) as exc:
        raise ScenarioError(f"{where}.deployment: {exc}") from None
    from ..sim.config import ParallelConfig
    try:  # what vLLM refuses outright is not a sweep result: TP that the heads or a node cannot take
        model = get_model(str(model_path) if model_path.suffix == ".json" else dep.model)
        if dep.model_overrides:
            model = dataclasses.replace(model, **dict(dep.model_overrides))  # type: ignore[arg-type]
        ParallelConfig(dep.tp).verify_with_model(model)
    except ValueError as exc:
        raise ScenarioError(f"{where}.deployment.tp: {exc}") from None
    trace = sc.workload.trace
    if trace and not trace.startswith("shared:"):
        path = Path(trace).expanduser()
        path = path if path.is_absolute() else Path(sc.base_dir) / path
        if not path.is_file():
            raise ScenarioError(f"{where}.workload.trace: {trace!r} ({path}) "
                                f"{'is a directory' if path.is_dir() else 'not found'}; expected a trace file")
    if dep.profile and dep.profile not in shipped_profiles() and not (Path(sc.base_dir) / dep.profile).exists():
        raise ScenarioError(f"{where}.deployment.profile: {dep.profile!r} is neither a shipped profile "
                            f"{sorted(shipped_profiles())} nor an existing file")


def scenario_from_dict(data: dict, source: str = "<dict>", base_dir: str = ".") -> ScenarioFile:
    """Build a :class:`ScenarioFile` from the parsed YAML (or a resolved ``scenario.json``)."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    if "resolved_variants" in data:  # written by scenario_to_dict
        resolved = tuple(_build(Scenario, v, f"{source}: variants[{i}]")
                         for i, v in enumerate(data["resolved_variants"]))
        return ScenarioFile(data.get("name", "scenario"), data.get("description", ""), resolved, source)
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise ScenarioError(f"{source}: unknown top-level key {unknown[0]!r}; allowed: {list(TOP_KEYS)}")
    # A scenario built in code (no file) and given no name is called "scenario", as resolved ones are.
    name = str(data.get("name") or (Path(source).stem if source != "<dict>" else "scenario"))
    try:
        check_name(name, "name")
    except ValueError as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    description = str(data.get("description", ""))
    base_data = {k: data[k] for k in SECTION_KEYS if k in data}
    base_data["name"] = str(data.get("base_variant", name))
    base_data["description"] = description
    base_data["base_dir"] = base_dir
    base = _build(Scenario, base_data, f"{source}:")
    variants: list[Scenario] = [base] if data.get("run_base", True) else []
    raw_variants = data.get("variants") or []
    if not isinstance(raw_variants, list):
        raise ScenarioError(f"{source}: variants: expected a list of overrides, got {raw_variants!r}")
    for i, raw in enumerate(raw_variants):
        where = f"{source}: variants[{i}]:"
        if not isinstance(raw, dict) or "name" not in raw:
            raise ScenarioError(f"{where} each variant needs a name and the sections it overrides")
        bad = [k for k in raw if k not in (*SECTION_KEYS, "name", "description")]
        if bad:
            raise ScenarioError(f"{where} unknown key {bad[0]!r}; a variant may override "
                                f"{['name', 'description', *SECTION_KEYS]}")
        variants.append(_build(Scenario, raw, where, base=base))
    if not variants:
        raise ScenarioError(f"{source}: nothing to run (run_base is false and there are no variants)")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ScenarioError(f"{source}: variant names must be distinct, got {names}")
    for i, sc in enumerate(variants):
        _check_names(sc, f"{source}: {'variants' if i or not data.get('run_base', True) else 'base'}[{sc.name}]")
    return ScenarioFile(name, description, tuple(variants), source)


def load_scenario(path: str | Path) -> ScenarioFile:
    """Read and validate a scenario YAML file (or a sweep's resolved ``scenario.json``)."""
    path = Path(path)
    if not path.exists():
        shipped = shipped_scenarios()
        if str(path) in shipped:
            path = shipped[str(path)]
        else:
            raise FileNotFoundError(f"scenario file {path} not found; shipped scenarios: {sorted(shipped)}")
    if path.is_dir():
        raise ScenarioError(f"scenario {path} is a directory; expected a YAML file")
    from ..argtypes import yaml_error
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {yaml_error(exc)}") from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text ({exc.reason})") from None
    return scenario_from_dict(data, str(path), str(path.resolve().parent))


def shipped_scenarios() -> dict[str, Path]:
    """The scenarios shipped in ``scenarios/shipped``, by file stem."""
    folder = Path(__file__).resolve().parent / "shipped"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def scenario_to_dict(sf: ScenarioFile) -> dict:
    """The resolved scenario as plain data; :func:`scenario_from_dict` reads it back."""
    return {"name": sf.name, "description": sf.description, "source": sf.source,
            "resolved_variants": [_plain(dataclasses.asdict(v)) for v in sf.variants]}


__all__ = ["ScenarioError", "load_scenario", "parse_points", "parse_slo", "scenario_from_dict",
           "scenario_to_dict", "shipped_scenarios", "Advice", "Economics", "RegionRules", "WorkloadSection"]
