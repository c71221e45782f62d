"""Finding stores under a cache root and summarising them (`caches` command)."""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from stages.store.fingerprint import Fingerprint, FingerprintMismatch, diff_fields
from stages.store.layout import StorePaths, load_plans, read_json

__all__ = ["CacheInfo", "find_store", "list_caches", "describe_missing"]

_TIMESTEP = re.compile(r"@t(\d+)")


@dataclasses.dataclass(frozen=True)
class CacheInfo:
    """One store as `caches` shows it. `n_done[a]`: valid keys in completed shards of array `a`."""

    path: Path
    fingerprint: str
    created: str
    model_ids: Any
    array_ids: tuple[str, ...]
    timesteps: tuple[int, ...]
    n_planned: int
    n_done: dict[str, int]
    bytes_on_disk: int


def _is_store(path: Path) -> bool:
    return (path / "fingerprint.json").is_file() and (path / "zarr" / "zarr.json").is_file()


def find_store(cache_root: str | Path, fingerprint: Fingerprint) -> Path | None:
    """`<cache_root>/<fingerprint.short>` if it holds this fingerprint; None if absent.
    A directory of that name with another fingerprint raises `FingerprintMismatch`."""
    path = Path(cache_root) / fingerprint.short
    if not _is_store(path):
        return None
    stored = Fingerprint.from_json(StorePaths(path).fingerprint.read_text(encoding="utf-8"))
    if stored.full != fingerprint.full:
        raise FingerprintMismatch(path, store=stored, requested=fingerprint)
    return path


def describe_missing(cache_root: str | Path, fingerprint: Fingerprint) -> str:
    """Why no store matches: the stores that do exist and how their fingerprints differ."""
    lines = [f"no store for fingerprint {fingerprint.short} under {cache_root}"]
    root = Path(cache_root)
    others = sorted(p for p in root.iterdir() if _is_store(p)) if root.is_dir() else []
    for path in others:
        stored = Fingerprint.from_json(StorePaths(path).fingerprint.read_text(encoding="utf-8"))
        diffs = diff_fields(stored, fingerprint)
        lines.append(f"  {path.name} differs in {len(diffs)} field(s) (requested != store): " + "; ".join(diffs[:6]))
    if not others:
        lines.append("  (no stores there at all; run the extraction first)")
    return "\n".join(lines)


def _bytes_on_disk(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_blocks * 512
            except OSError:
                continue
    return total


def _summarise(path: Path) -> CacheInfo:
    paths = StorePaths(path)
    attrs = read_json(paths.zarr / "zarr.json").get("attributes", {})
    own = attrs.get("feature_cache", {})
    plans = load_plans(paths, [])
    array_ids = tuple(sorted(p.parent.name for p in paths.zarr.glob("*/zarr.json")
                             if read_json(p).get("node_type") == "array"))
    n_done = {}
    for array_id in array_ids:
        done = 0
        for plan in plans:
            record = paths.record(array_id, plan.index)
            if record.is_file():
                done += read_json(record)["n_valid"]
        n_done[array_id] = done
    timesteps = sorted({int(m.group(1)) for a in array_ids if (m := _TIMESTEP.search(a))})
    return CacheInfo(path=path, fingerprint=path.name, created=own.get("created", "?"),
                     model_ids=attrs.get("model_ids"), array_ids=array_ids, timesteps=tuple(timesteps),
                     n_planned=sum(k is not None for plan in plans for k in plan.keys),
                     n_done=n_done, bytes_on_disk=_bytes_on_disk(path))


def list_caches(root: str | Path) -> list[CacheInfo]:
    """Every store directly under `root`, sorted by creation time."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((_summarise(p) for p in root.iterdir() if _is_store(p)), key=lambda c: (c.created, c.fingerprint))
