"""Field metadata for the configuration dataclasses the command line and scenario files expose.

A field declared with :func:`arg` carries, once, everything the surfaces that expose it need
(:class:`ArgSpec`): its help text and unit, its command-line flags, the vLLM name it mirrors, the
scenario key and section it is written under, and the values it allows.  From that declaration

* :func:`check_value` validates a value (``ValueError`` naming the field, the bad value and what
  is allowed), for the dataclass itself and for every section derived from it;
* ``servesim.argtypes.add_args`` builds the argparse flags (types, choices, help with unit and
  default), so the command line cannot drift from the dataclass;
* :func:`derive_fields` adds the fields to a scenario section dataclass (``scenarios/schema.py``),
  under their scenario keys, with the section's own defaults.

Used by :class:`~servesim.sim.engine_args.EngineArgs` and
:class:`~servesim.sim.workload.WorkloadSpec`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_META_KEY = "servesim_arg"


@dataclass(frozen=True)
class ArgSpec:
    """How one configuration field is documented, exposed and checked.

    ``vllm`` is the name of vLLM's ``EngineArgs`` attribute it mirrors (its flag:
    :func:`vllm_flags`; empty: servesim's own).  ``flags`` are the command-line option strings (the first is the canonical one; none: the field
    has no flag).  ``scenario`` is its key in a scenario file (default: the field name) inside
    ``section`` (none: scenarios do not set it).  Numbers must lie in ``[lo, hi]`` (``(lo, hi]``
    with ``lo_open``); ``choices`` lists the allowed values (``cli_choices`` False: argparse does
    not refuse others, the dataclass's check does, with ``validator``'s message).  ``omitted``
    says what ``None`` means, ``defaults`` the default per engine generation for the docs.
    """

    help: str
    unit: str = ""
    flags: tuple[str, ...] = ()
    vllm: str = ""
    scenario: str = ""
    section: str = ""
    choices: tuple[Any, ...] = ()
    cli_choices: bool = True
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    allow_inf: bool = False
    input_file: bool = False
    omitted: str = ""
    defaults: tuple[tuple[str, str], ...] = ()
    validator: Callable[[Any], object] | None = None


def arg(default: Any = None, **spec: Any) -> Any:
    """A dataclass field with default ``default`` described by ``ArgSpec(**spec)``."""
    return dataclasses.field(default=default, metadata={_META_KEY: ArgSpec(**spec)})


def vllm_flags(spec: ArgSpec) -> str:
    """vLLM's command-line spelling of ``spec.vllm`` (``max_num_seqs`` -> ``--max-num-seqs``)."""
    return " / ".join(f"--{name.strip().replace('_', '-')}" for name in spec.vllm.split("/")) if spec.vllm else ""


def spec_of(f: dataclasses.Field) -> ArgSpec:
    """The :class:`ArgSpec` of a field declared with :func:`arg` (``KeyError`` otherwise)."""
    return f.metadata[_META_KEY]


def arg_fields(cls: type) -> Iterator[tuple[dataclasses.Field, ArgSpec, type, bool]]:
    """Each field of ``cls`` declared with :func:`arg`: (field, spec, base type, optional)."""
    return iter(_arg_fields(cls))


@functools.cache
def _arg_fields(cls: type) -> tuple[tuple[dataclasses.Field, ArgSpec, type, bool], ...]:
    # Resolving the string annotations costs ~100 us; configurations are built per sweep point.
    hints = typing.get_type_hints(cls)
    return tuple((f, spec_of(f), *base_type(hints[f.name])) for f in dataclasses.fields(cls) if _META_KEY in f.metadata)


def base_type(tp: Any) -> tuple[type, bool]:
    """``int | None`` -> ``(int, True)``; ``float`` -> ``(float, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def bounds_text(spec: ArgSpec) -> str:
    """The allowed range of a number, e.g. ``in (0, 1]`` or ``>= 1`` (empty: any)."""
    lo, hi = spec.lo, spec.hi
    if hi is not None and lo is not None:
        return f"in {'(' if spec.lo_open else '['}{_num(lo)}, {_num(hi)}{')' if spec.hi_open else ']'}"
    if lo is not None:
        return f"{'>' if spec.lo_open else '>='} {_num(lo)}"
    return f"{'<' if spec.hi_open else '<='} {_num(hi)}" if hi is not None else ""


def check_value(name: str, value: Any, spec: ArgSpec, base: type, optional: bool) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is allowed by ``spec``."""
    if value is None:
        if optional:
            return
        raise ValueError(f"{name} must be given (got None)")
    omitted = f" (or omitted for {spec.omitted})" if optional and spec.omitted else ""
    if base is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
    elif base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer {bounds_text(spec)}{omitted}, got {value!r}".replace("  ", " "))
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
                or (math.isinf(value) and not spec.allow_inf):
            raise ValueError(f"{name} must be a finite number {bounds_text(spec)}{omitted}, got {value!r}")
    if base in (int, float):
        low_ok = spec.lo is None or (value > spec.lo if spec.lo_open else value >= spec.lo)
        high_ok = spec.hi is None or (value < spec.hi if spec.hi_open else value <= spec.hi)
        if not (low_ok and high_ok):
            kind = "an integer " if base is int and spec.hi is not None else ""
            raise ValueError(f"{name} must be {kind}{bounds_text(spec)}{omitted}, got {value!r}")
    if spec.choices and value not in spec.choices:
        raise ValueError(f"{name} must be one of {list(spec.choices)}, got {value!r}")
    if spec.validator is not None:
        spec.validator(value)


def check_fields(obj: Any, names: Mapping[str, str] | None = None) -> None:
    """Check every :func:`arg` field of the dataclass instance ``obj``; ``names`` maps a field to
    the name the message uses (a scenario key)."""
    for f, spec, base, optional in arg_fields(type(obj)):
        check_value((names or {}).get(f.name, f.name), getattr(obj, f.name), spec, base, optional)


def derive_fields(source: type, section: str, *, names: Sequence[str] | None = None,
                  defaults: Mapping[str, Any] | None = None, required: Sequence[str] = (),
                  inherit: bool = False, types: Mapping[str, Any] | None = None) -> Callable[[type], type]:
    """Class decorator (put it under ``@dataclass``): give the section class the fields of
    ``source`` whose :attr:`ArgSpec.section` is ``section`` (only ``names`` of them, by scenario
    key, if given), under their scenario keys, with ``source``'s defaults unless ``defaults`` (by
    scenario key) says otherwise; ``required`` keys get no default; ``types`` replaces a field's
    annotation (an enum field kept as its text, checked against the spec's choices).  With
    ``inherit`` every field is optional and defaults to ``None`` ("as the base").  Order: the
    class's own fields without a default, the required keys, the added fields, the class's own
    fields with a default.  Their metadata travels along, so :func:`check_fields` validates them
    by ``source``'s rules."""
    hints = typing.get_type_hints(source)

    def decorate(cls: type) -> type:
        own = dict(cls.__dict__.get("__annotations__", {}))
        annotations: dict[str, Any] = {}
        for f in dataclasses.fields(source):
            spec = f.metadata.get(_META_KEY)
            key = spec.scenario or f.name if spec is not None else ""
            if spec is None or spec.section != section or (names is not None and key not in names):
                continue
            tp = (types or {}).get(key, hints[f.name])
            annotations[key] = (base_type(tp)[0] | None) if inherit else tp
            if key in required:
                setattr(cls, key, dataclasses.field(metadata=f.metadata))
                continue
            default = None if inherit else (defaults or {}).get(key, f.default)
            setattr(cls, key, dataclasses.field(default=default, metadata=f.metadata))
        required_first = {k: annotations.pop(k) for k in list(annotations) if k in required}
        own_required = {k: v for k, v in own.items() if k not in cls.__dict__}
        own_defaulted = {k: v for k, v in own.items() if k in cls.__dict__}
        cls.__annotations__ = {**own_required, **required_first, **annotations, **own_defaulted}
        return cls
    return decorate


__all__ = ["ArgSpec", "arg", "arg_fields", "base_type", "bounds_text", "check_fields", "check_value", "derive_fields", "spec_of",
           "vllm_flags"]
