"""YAML configs with `key=value` command-line overrides, turned into frozen dataclasses.

Both `pipeline/` and `train/` describe their settings as frozen dataclasses; this module is the one
place that reads YAML, applies overrides (dotted keys reach into nested mappings, values are parsed
as YAML so `trials=2`, `features=[a,b]` and `pad_color=[0,0,0]` work) and rejects unknown fields.
"""
from __future__ import annotations

import dataclasses
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


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Turn YAML values into the field's type: lists -> tuples, mappings -> nested dataclasses."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
        return build_dataclass(annotation, value, where=where)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None) and value is not None:
                return _coerce(value, arg, where)
        return value
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(annotation)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where) for v in value)
    if annotation is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads `2e-3` (no dot) as a string
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a number") from None
    return value


def build_dataclass(cls: type[T], values: Mapping[str, Any], *, where: str = "config") -> T:
    """Instantiate a (frozen) dataclass from a mapping; unknown fields, wrong arguments and the class's
    own validation (`ValueError` from `__post_init__`) become a `ConfigError` naming `where`."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; valid: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:  # a nested build_dataclass already named its place
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
