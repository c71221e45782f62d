"""YAML configs with `key=value` command-line overrides, turned into frozen dataclasses.

Both `pipeline/` and `train/` describe their settings as frozen dataclasses; this module is the one
place that reads YAML, applies overrides (dotted keys reach into nested mappings, values are parsed
as YAML so `trials=2`, `features=[a,b]` and `pad_color=[0,0,0]` work), rejects unknown fields and
checks every value against its field's type, naming the field (a single value where a list is expected
is a one-element list: `data=x.json`; a number is finite: `lr=.inf` and `nan` are refused).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from stages.errors import UserError

__all__ = ["ConfigError", "load_config", "parse_overrides", "build_dataclass"]

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config file, override or setting (or the file a setting names) that cannot be used as given."""


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """`["a.b=1", "name=x"]` -> `{"a": {"b": 1}, "name": "x"}`."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return tree


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def load_config(default_path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read the YAML named by a `config=` override (else `default_path`) and apply the other overrides."""
    tree = parse_overrides(overrides)
    path = Path(tree.pop("config", default_path))
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with path.open() as fh:
        base = yaml.safe_load(fh) or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return _merge(base, tree)


_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _expected(annotation: Any) -> str:
    """How a value of `annotation` is described in an error: `an integer`, `a list (a string each)`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _expected(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list ({_expected(args[0])} each)"
        return f"a list of {len(args)} ({_expected(args[0])} each)"
    if dataclasses.is_dataclass(annotation):
        return "a mapping"
    return _EXPECTED.get(annotation, getattr(annotation, "__name__", str(annotation)))


class _Mismatch(Exception):
    """A value that is not of the annotated type (turned into a `ConfigError` naming the field)."""


class _NotFinite(_Mismatch):
    """An infinite or NaN number where a number is expected: no setting means "no limit" by infinity."""


def _convert(value: Any, annotation: Any) -> Any:
    """`value` as `annotation`'s type: YAML lists -> tuples (a single value -> a one-element tuple),
    ints -> float, integral floats -> int (never a bool: only YAML's true/false are bools). Raises
    `_Mismatch`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        error: _Mismatch = _Mismatch()
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg)
            except _NotFinite as exc:
                error = exc
            except _Mismatch:
                pass
        raise error
    if origin is tuple:
        variable = len(args) == 2 and args[1] is Ellipsis
        if variable and not isinstance(value, (list, tuple, Mapping, type(None))):
            value = [value]
        if not isinstance(value, (list, tuple)) or not variable and len(value) != len(args):
            raise _Mismatch
        inner = [args[0]] * len(value) if variable else args
        return tuple(_convert(v, a) for v, a in zip(value, inner))
    if dataclasses.is_dataclass(annotation):  # a mapping is built by `_coerce`
        raise _Mismatch
    if annotation not in _EXPECTED:  # Any, and types with no YAML form: as given
        return value
    if annotation in (bool, str) and isinstance(value, annotation):
        return value
    if annotation in (int, float) and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads `2e-3` and `1e8` (no dot) as strings
            number = float(value)
        except ValueError:
            raise _Mismatch from None
        if annotation is float:
            if not math.isfinite(number):
                raise _NotFinite
            return number
        if number.is_integer():
            return int(value) if isinstance(value, int) else int(number)
    raise _Mismatch


def _coerce(value: Any, annotation: Any, where: str, field: str) -> Any:
    """`_convert`, with mappings -> nested dataclasses; a mismatch is a `ConfigError` naming the field."""
    if dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
        return build_dataclass(annotation, value, where=where, prefix=f"{field}.")
    try:
        return _convert(value, annotation)
    except _NotFinite:
        raise ConfigError(f"{where}: {field} must be a finite number, got {value!r}") from None
    except _Mismatch:
        raise ConfigError(f"{where}: {field} must be {_expected(annotation)}, got {value!r}") from None


def build_dataclass(cls: type[T], values: Mapping[str, Any], *, where: str = "config", prefix: str = "") -> T:
    """Instantiate a (frozen) dataclass from a mapping; unknown fields, values of the wrong type (named
    `prefix + field`) and the class's own validation (`ValueError` from `__post_init__`) become a
    `ConfigError` naming `where`."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {[prefix + k for k in unknown]}; "
                          f"valid: {[prefix + k for k in sorted(fields)]}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], where, prefix + k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:  # a nested build_dataclass already named its place
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
