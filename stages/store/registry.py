"""Finding stores under a cache root and summarising them (`caches` command)."""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from stages.errors import UserError
from stages.store.fingerprint import Fingerprint, diff_fields
from stages.store.meta import StoreMeta, is_store, read_header
from stages.store.objects import ObjectPath, as_location

__all__ = ["CacheInfo", "find_store", "list_caches", "describe_missing"]

_TIMESTEP = re.compile(r"@t(\d+)")


@dataclasses.dataclass(frozen=True)
class CacheInfo:
    """One store as `caches` shows it. `n_done[a]`: valid keys in completed shards of array `a`, `dtypes[a]`
    its stored dtype;
    `problems`: why the store cannot be opened (then the other fields are empty), or which of its arrays
    cannot be trusted (one line each; `verify` says how to fix them)."""

    path: Path
    fingerprint: str
    created: str
    model_ids: Any
    array_ids: tuple[str, ...]
    timesteps: tuple[int, ...]
    n_planned: int
    n_done: dict[str, int]
    bytes_on_disk: int
    problems: tuple[str, ...] = ()
    dtypes: dict[str, str] = dataclasses.field(default_factory=dict)


def find_store(cache_root: str | Path, fingerprint: Fingerprint) -> Path | None:
    """`<cache_root>/<fingerprint.short>` if it holds this fingerprint; None if absent.
    A directory of that name with another fingerprint raises `FingerprintMismatch`."""
    path = as_location(cache_root) / fingerprint.short
    if not is_store(path):
        return None
    read_header(path, expect=fingerprint)
    return path


def describe_missing(cache_root: str | Path, fingerprint: Fingerprint) -> str:
    """Why no store matches: the stores that do exist and how their fingerprints differ."""
    lines = [f"no store for fingerprint {fingerprint.short} under {cache_root}"]
    root = as_location(cache_root)
    others = sorted(p for p in root.iterdir() if is_store(p)) if root.is_dir() else []
    for path in others:
        try:
            stored, _ = read_header(path, expect=None)
        except UserError as exc:
            lines.append(f"  {path.name} cannot be read: {exc}")
            continue
        diffs = diff_fields(stored, fingerprint)
        lines.append(f"  {path.name} differs in {len(diffs)} field(s) (requested != store): " + "; ".join(diffs[:6]))
    if not others:
        lines.append("  (no stores there at all; run the extraction first)")
    return "\n".join(lines)


def _bytes_on_disk(root: Path | ObjectPath) -> int:
    if isinstance(root, ObjectPath):
        return sum(meta["size"] for meta in root.walk_objects())
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_blocks * 512
            except OSError:
                continue
    return total


def _summarise(path: Path) -> CacheInfo:
    try:
        meta = StoreMeta.load(path, expect=None)
    except UserError as exc:  # a damaged store is reported, and the others are listed
        return CacheInfo(path=path, fingerprint=path.name, created="?", model_ids=None, array_ids=(), timesteps=(),
                         n_planned=0, n_done={}, bytes_on_disk=_bytes_on_disk(path), problems=(str(exc),))
    timesteps = sorted({int(m.group(1)) for a in meta.array_ids if (m := _TIMESTEP.search(a))})
    return CacheInfo(path=path, fingerprint=path.name, created=meta.attrs["feature_cache"].get("created", "?"),
                     model_ids=meta.attrs.get("model_ids"), array_ids=tuple(meta.array_ids),
                     timesteps=tuple(timesteps), n_planned=meta.n_keys,
                     n_done={a: meta.n_valid(a) for a in meta.array_ids}, bytes_on_disk=_bytes_on_disk(path),
                     problems=tuple(f"array {a!r}: {d.reason}" for a, d in sorted(meta.damaged_arrays.items())),
                     dtypes={a: meta.infos[a].stored_dtype for a in meta.array_ids})


def list_caches(root: str | Path) -> list[CacheInfo]:
    """Every store directly under `root`, sorted by creation time; damaged ones too, with their problems."""
    root = as_location(root)
    if not root.is_dir():
        return []
    return sorted((_summarise(p) for p in root.iterdir() if is_store(p)), key=lambda c: (c.created, c.fingerprint))
