"""Repair: turn a damaged store into one that the next extraction completes byte for byte.

A `Problem` says what is wrong and which `fix` undoes it. Findings come from `verify` (every file
hashed) or from `cheap_problems`, which `extract` runs on every existing store: shard files present
and of their recorded size, index files that parse and match their shard, records that parse, no
record or tar beyond the last index file. `repair` applies the fixes:

- `record`: withdraw that completion record (the shard turns missing; the next run computes it again,
  reusing the shard's stored latents when those are intact);
- `shard`: withdraw every record of the shard and remove its tar (a damaged or missing export: the
  tar is rewritten only when the shard is computed);
- `index`: rewrite the shard's index file from what the store proves (`prove_index`: the tar's `.json`
  members give each valid key's row, the completion records the failed keys and the count), else from
  the run's keys (`extract` only: the keys of its data that no other shard holds, in the order
  `CacheStore.add_keys` planned them); records and tar that disagree with the rewritten index are
  withdrawn. `verify --repair` has no keys: an index it cannot prove is removed with its shard's
  records and tar, and the next `extract` plans those keys again;
- `file`: remove a leftover `*.partial` / `.*.tmp` file (a writer killed mid-write; never run a
  repair while an extraction writes to the store);
- `group`: write back the group's `shard_size` that every array was created with (`restore_shard_size`:
  an edit of `zarr/zarr.json`; until then the store does not open);
- `extract`: nothing to repair, the next extraction completes it; `none`: no automatic fix.
"""
from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from stages.store.layout import StorePaths, file_sha256, read_json, write_bytes_atomic
from stages.store.meta import EditedShardSize, StoreMeta
from stages.store.objects import as_location
from stages.store.writer import CacheStore

__all__ = ["Problem", "cheap_problems", "structural_problems", "index_disagreements", "leftover_problems",
           "prove_index", "restore_shard_size", "repair_store", "repair"]

FIXES = ("record", "shard", "index", "file", "group", "extract", "none")


@dataclass(frozen=True)
class Problem:
    """One finding; `shard`, `array_id` and `path` say what `fix` acts on."""

    message: str
    fix: str
    shard: int | None = None
    array_id: str | None = None
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.fix not in FIXES:
            raise ValueError(f"unknown fix {self.fix!r}")


def structural_problems(meta: StoreMeta) -> list[Problem]:
    """Damage found without reading any shard: damaged index files (also missing ones that records
    or tars beyond the last index file show were written) and unreadable records."""
    written = [s for records in meta.records.values() for s in records] + list(meta.tars)
    beyond = range(len(meta.plans), max(written, default=-1) + 1)
    problems = [Problem(reason, "index", shard=s) for s, reason in sorted(meta.damaged_index.items())]
    problems += [Problem(f"index/{s:06d}.json is missing but shard {s} has records or a tar", "index", shard=s)
                 for s in beyond]
    problems += [Problem(f"array {a!r} shard {s}: {why}", "record", shard=s, array_id=a)
                 for (a, s), why in sorted(meta.bad_records.items())]
    return problems


def leftover_problems(meta: StoreMeta) -> list[Problem]:
    """Temp files of interrupted writes, zarr's `*.partial` and our hidden `.*.tmp` (not checked by
    `extract`: a running writer may own them)."""
    root = meta.paths.root
    return [Problem(f"leftover temp file {p.relative_to(root)}", "file", path=p)
            for p in sorted({*root.rglob("*.partial"), *root.rglob(".*.tmp")})]


def cheap_problems(meta: StoreMeta, array_ids: Sequence[str]) -> list[Problem]:
    """`structural_problems`, the index files that disagree with their shard's records (a changed key: the
    records name the keys they were computed for; the tars are not read here), and the completed shards
    of `array_ids` (and of their scale arrays) whose file is missing or not of the recorded size."""
    problems = structural_problems(meta)
    problems += [_disagreement(p.index) for p in meta.plans
                 if p.index not in meta.damaged_index and not _agrees(meta, p.index, p.keys, None)]
    for array_id in meta.stored_ids(array_ids):
        for shard, record in sorted(meta.records.get(array_id, {}).items()):
            path = meta.paths.zarr / array_id / record.chunk_key
            size = path.stat().st_size if path.is_file() else None
            if shard < len(meta.plans) and size != record.nbytes:
                state = "is missing" if size is None else f"has {size} bytes, recorded {record.nbytes}"
                problems.append(Problem(f"array {array_id!r} shard {shard}: shard file {state}", "record",
                                        shard=shard, array_id=array_id))
    return problems


def _disagreement(shard: int) -> Problem:
    return Problem(f"index/{shard:06d}.json disagrees with shard {shard}'s completion records or tar", "index",
                   shard=shard)


def index_disagreements(meta: StoreMeta) -> list[Problem]:
    """Intact-looking index files that disagree with their shard's records or tar (a changed key)."""
    return [_disagreement(p.index) for p in meta.plans if p.index not in meta.damaged_index
            and not _agrees(meta, p.index, p.keys, _tar_rows(meta, p.index))]


def _tar_rows(meta: StoreMeta, shard: int) -> dict[int, str] | None:
    """row -> key from the `.json` members of shard `shard`'s tar; None without a tar that matches
    its digest record (when it has one) and whose members all name this shard."""
    path, record = meta.paths.tar(shard), meta.tars.get(shard)
    if not path.is_file() or (record is not None and file_sha256(path) != (record.nbytes, record.sha256)):
        return None
    rows: dict[int, str] = {}
    try:
        with path.open("rb") as fh, tarfile.open(fileobj=fh) as tar:
            for member in tar:
                if member.name.partition(".")[2] == "json":
                    entry = json.load(tar.extractfile(member))
                    if entry["shard"] != shard:
                        return None
                    rows[int(entry["row"])] = entry["key"]
    except (tarfile.TarError, OSError, ValueError, KeyError, TypeError):
        return None
    return rows


def _agrees(meta: StoreMeta, shard: int, keys: Sequence[str | None], rows: dict[int, str] | None) -> bool:
    """Whether the shard's records (key count, failed keys, the keys whose images they stamped) and tar
    rows fit `keys` as its index."""
    present = {k for k in keys if k is not None}
    for records in meta.records.values():
        record = records.get(shard)
        if record is not None and (record.n_valid + len(record.failed) != len(present)
                                   or not set(record.failed) <= present or not set(record.images) <= present):
            return False
    first = shard * meta.shard_size
    return rows is None or all(0 <= r - first < len(keys) and keys[r - first] == k for r, k in rows.items())


def prove_index(meta: StoreMeta, shard: int) -> list[str | None] | None:
    """The keys of shard `shard` as the store proves them, or None. Needs a completion record (the
    count of keys and the failed ones) and, unless every key failed, the tar (each valid key's row).
    Keys fill rows from the first, padding follows; the failed keys, whose rows the tar does not
    carry, take the free rows in sorted order, as the pipeline plans keys sorted."""
    records = [r[shard] for r in meta.records.values() if shard in r]
    if not records:
        return None
    failed, n_keys = sorted(records[0].failed), records[0].n_valid + len(records[0].failed)
    rows = _tar_rows(meta, shard)
    if rows is None and records[0].n_valid:
        return None
    keys: list[str | None] = [None] * meta.shard_size
    for row, key in (rows or {}).items():
        local = row - shard * meta.shard_size
        if not 0 <= local < n_keys:
            return None
        keys[local] = key
    free = [i for i in range(n_keys) if keys[i] is None]
    if len(free) != len(failed):
        return None
    for i, key in zip(free, failed):
        keys[i] = key
    return keys if _agrees(meta, shard, keys, rows) else None


def _repair_indexes(store: CacheStore, shards: list[int], keys: Sequence[str] | None) -> list[str]:
    meta, size, done = store.refresh(), store.shard_size, []
    proven = {s: k for s in shards if (k := prove_index(meta, s)) is not None}
    known = {k for p in meta.plans if p.index not in shards for k in p.keys if k is not None}
    known.update(k for ks in proven.values() for k in ks if k is not None)
    remaining = [k for k in (keys or ()) if k not in known]
    for shard in shards:
        if shard in proven:
            store.rewrite_index(shard, proven[shard])
            done.append(f"index of shard {shard} rewritten from its records and tar")
            continue
        if keys is None:
            store.withdraw_shard(shard)
            store.rewrite_index(shard, None)
            done.append(f"index of shard {shard} cannot be proven from the store: removed with its records and "
                        "tar; the next extract with its data plans its keys again")
            continue
        chunk, remaining = remaining[:size], remaining[size:]
        index = chunk + [None] * (size - len(chunk))
        store.rewrite_index(shard, index)
        if _agrees(meta, shard, index, _tar_rows(meta, shard)):
            done.append(f"index of shard {shard} rewritten from this run's keys")
        else:
            store.withdraw_shard(shard)
            done.append(f"index of shard {shard} rewritten from this run's keys; its records disagreed "
                        "and were withdrawn")
    return done


def restore_shard_size(root: Path, shard_size: int) -> str:
    """Write `shard_size` (the arrays' own, `EditedShardSize.shard_size`) back into the group attributes of
    the store at `root`, as zarr writes `zarr/zarr.json`."""
    path = StorePaths(root).zarr / "zarr.json"
    document = read_json(path)
    own = document["attributes"]["feature_cache"]
    edited, own["shard_size"] = own["shard_size"], shard_size
    write_bytes_atomic(path, json.dumps(document, indent=2, allow_nan=True).encode())
    return f"zarr/zarr.json: shard_size {edited} restored to {shard_size}, the size every array was created with"


def repair_store(path: str | Path, problems: Sequence[Problem]) -> list[str]:
    """`repair` for `verify --repair`, which has no keys: an edited group `shard_size` first (the store
    opens only once it is restored; what else `verify` finds then shows on its next run)."""
    if any(p.fix == "group" for p in problems):
        try:
            StoreMeta.load(path, expect=None)
        except EditedShardSize as exc:
            return [restore_shard_size(as_location(path), exc.shard_size)]
    return repair(CacheStore(StoreMeta.load(path, expect=None)), problems)


def repair(store: CacheStore, problems: Sequence[Problem], *, keys: Sequence[str] | None = None) -> list[str]:
    """Apply the fixes of `problems` (see the module docstring); `keys` are the run's keys in planning
    order (extract), None for `verify --repair`. Returns what was done, one line each."""
    index_shards = sorted({p.shard for p in problems if p.fix == "index"})
    done = _repair_indexes(store, index_shards, keys) if index_shards else []
    for problem in problems:
        if problem.fix == "record":
            store.withdraw(problem.array_id, problem.shard)
            done.append(f"withdrew array {problem.array_id!r} shard {problem.shard} ({problem.message})")
        elif problem.fix == "shard" and problem.shard not in index_shards:
            store.withdraw_shard(problem.shard)
            done.append(f"withdrew shard {problem.shard} and its tar ({problem.message})")
        elif problem.fix == "file":
            problem.path.unlink(missing_ok=True)
            done.append(f"removed {problem.message}")
    store.refresh()
    return done
