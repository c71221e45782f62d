"""Finding a spec's store: by the fingerprint of an extraction YAML's `CacheSpec` under a cache root (the
lookup `just extract` itself does, so both sides agree without paths), or an explicit store directory
checked against the `cache_spec` it records. A store that is missing or was made from other inputs is
a `StoreNotFound` naming the differing fingerprint fields and the `just extract` command that fills it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from stages.cache_spec import CacheSpec, cache_spec_from, cache_spec_from_yaml, fingerprint_for
from stages.store import Fingerprint, FingerprintMismatch, StoreNotFound, find_store
from stages.store.meta import read_header
from stages.store.objects import ObjectPath, as_location
from stages.store.registry import describe_missing

__all__ = ["LocatedStore", "YamlStore", "find_yaml_store", "explicit_store"]


class LocatedStore(NamedTuple):
    """A store directory and the fingerprint it must have (every `StoreReader` on it checks it again)."""

    path: Path | ObjectPath
    fingerprint: Fingerprint


@dataclass(frozen=True)
class YamlStore:
    """An extraction YAML's spec and fingerprint, the cache root its store belongs under, and the store
    found there (None: not extracted yet)."""

    yaml_path: str
    spec: CacheSpec
    fingerprint: Fingerprint
    cache_root: str
    yaml_root: str  # the YAML's own cache_root
    store: LocatedStore | None

    @property
    def fill_hint(self) -> str:
        extra = f" cache_root={self.cache_root}" if self.cache_root != self.yaml_root else ""
        return f"fill it with:  just extract config={self.yaml_path}{extra}"

    def required(self) -> LocatedStore:
        """The store, or `StoreNotFound` saying how the stores that exist differ and how to fill it."""
        if self.store is None:
            raise StoreNotFound(f"no feature store for {self.yaml_path}: "
                                f"{describe_missing(self.cache_root, self.fingerprint)}\n{self.fill_hint}")
        return self.store


def find_yaml_store(yaml_path: str | Path, *, cache_root: str | Path | None = None) -> YamlStore:
    """The store of an extraction YAML under `cache_root` (default: the YAML's); a directory holding another
    fingerprint is a `StoreNotFound` with the command that fills the right one."""
    spec, yaml_root = cache_spec_from_yaml(yaml_path)
    root, fingerprint = str(cache_root or yaml_root), fingerprint_for(spec)
    found = YamlStore(yaml_path=str(yaml_path), spec=spec, fingerprint=fingerprint, cache_root=root,
                      yaml_root=yaml_root, store=None)
    try:
        path = find_store(root, fingerprint)
    except FingerprintMismatch as exc:
        raise StoreNotFound(f"{exc}\n{found.fill_hint}") from exc
    return found if path is None else replace(found, store=LocatedStore(path, fingerprint))


def explicit_store(store: str | Path, *, setting: str = "store") -> LocatedStore:
    """A store directory named by the user (`setting` names where, in messages). It must have the
    fingerprint its own recorded `cache_spec` gives with the model weights as they are now: a pass on its
    latents reloads that model."""
    try:
        _, attrs = read_header(store, expect=None)
    except StoreNotFound as exc:
        raise StoreNotFound(f"{setting}: {exc}") from exc
    if "cache_spec" not in attrs:
        raise StoreNotFound(f"{setting} {store} records no cache_spec; re-create it with `just extract`")
    expected = fingerprint_for(cache_spec_from(attrs["cache_spec"], where=f"{store} (recorded cache_spec)"))
    try:
        read_header(store, expect=expected)
    except FingerprintMismatch as exc:
        raise StoreNotFound(f"{setting} {store} does not have the fingerprint its recorded cache_spec gives with "
                            f"the model as it is now; re-extract it with `just extract`.\n{exc}") from exc
    return LocatedStore(as_location(store), expected)
