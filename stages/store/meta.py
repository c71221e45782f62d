"""`StoreMeta`: what a store says about itself, parsed in one place.

The fingerprint (`fingerprint.json`), the group attributes (`zarr/zarr.json`), the shard plans
(`index/NNNNNN.json`), the array infos (`zarr/<array>/zarr.json`), the completion records
(`done/<array>/NNNNNN.json`) and the webdataset tars' digest records (`wds/NNNNNN.json`); the records'
types and the queries over plans and records are `stages.store.records`. The writer,
the reader, the registry and `verify` ask this object; nobody else reads those files. Every load
names the fingerprint it expects (`None` only for inspection: `verify`, `caches`), so a store made from
other inputs is refused where it is opened.

Each array's zarr.json is checked against how the array was created (`stages.store.arrays`): an array
whose metadata cannot be trusted is listed in `damaged_arrays`, never in `infos`, and its records do not
count. A store whose fingerprint or group metadata is unreadable, or that holds a link where a
directory belongs, is refused (`StoreDamaged`, one line).

A `StoreMeta` is a snapshot. `refresh` brings in what other processes wrote since: extraction actors
complete shards while the driver holds its `CacheStore`, and a rewrite removes a shard's record first.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from stages.errors import UserError
from stages.store.arrays import ArrayInfo, ArraySpec, array_info, document_problem, legacy_problem, sealed_spec
from stages.store.damage import StoreDamaged
from stages.store.compact import COMPACT, is_scale_id, scale_id
from stages.store.fingerprint import Fingerprint, FingerprintMismatch
from stages.store.layout import ShardPlan, StorePaths, read_json
from stages.store.records import CompletionRecord, ShardRecords, TarRecord

__all__ = ["StoreMeta", "DamagedArray", "StoreNotFound", "StoreDamaged", "EditedShardSize", "is_store",
           "read_header"]


class StoreNotFound(UserError, FileNotFoundError):
    """No feature store at a path, or none for a fingerprint under a cache root."""


class EditedShardSize(StoreDamaged):
    """The group's `shard_size` differs from the one every array was created with (`shard_size`, which
    `stages.store.repair.restore_shard_size` writes back)."""

    def __init__(self, message: str, *, shard_size: int) -> None:
        super().__init__(message)
        self.shard_size = shard_size


@dataclass(frozen=True)
class DamagedArray:
    """An array whose metadata cannot be trusted: why (naming the file and field), the shards that still
    have a completion record file, and its sealed creation spec when that is intact (its zarr.json can
    then be restored from it: `CacheStore.ensure_array`; otherwise its records must be withdrawn)."""

    reason: str
    recorded: tuple[int, ...]
    spec: ArraySpec | None


def is_store(path: str | Path) -> bool:
    paths = StorePaths(path)
    return paths.fingerprint.is_file() and (paths.zarr / "zarr.json").is_file()


def read_header(path: str | Path, *, expect: Fingerprint | None) -> tuple[Fingerprint, dict[str, Any]]:
    """The fingerprint and group attributes of the store at `path` (a cheap read: no plans, no records).

    `FingerprintMismatch` (naming the differing fields) when `expect` is given and differs;
    `StoreNotFound` when `path` is not a store."""
    paths = StorePaths(path)
    if not is_store(paths.root):
        raise StoreNotFound(f"{path} is not a feature store (it needs fingerprint.json and zarr/zarr.json)")
    try:
        fingerprint = Fingerprint.from_json(paths.fingerprint.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError, UnicodeDecodeError, not a mapping, unreadable
        raise StoreDamaged(f"store {paths.root}: fingerprint.json is damaged ({exc}); the store cannot be "
                           "identified: restore the file (zarr/zarr.json holds its text as "
                           "feature_cache.fingerprint_json) or extract into a new cache root") from None
    if expect is not None and fingerprint.full != expect.full:
        raise FingerprintMismatch(paths.root, store=fingerprint, requested=expect)
    try:
        attrs = read_json(paths.zarr / "zarr.json")["attributes"]
        shard_size = attrs["feature_cache"]["shard_size"]
        if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1:
            raise ValueError(f"feature_cache.shard_size is {shard_size!r}")
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise StoreDamaged(f"store {paths.root}: zarr/zarr.json is damaged ({exc!r}); restore it from a copy or "
                           "extract into a new cache root") from None
    return fingerprint, attrs


def _refuse_links(paths: StorePaths, *names: str) -> None:
    """`StoreDamaged` if any of these paths inside the store is a symbolic link: writes through a link to
    a directory would land outside the cache root (only the store directory itself may be one)."""
    for name in names:
        path = paths.root / name
        if path.is_symlink():
            raise StoreDamaged(f"store {paths.root}: {name} is a symbolic link (to {os.readlink(path)}); a store "
                               "holds no links, since writes through one land outside the cache root: replace it "
                               "with a real directory or extract into a new cache root")


def _read_record(path: Path, kind: type[CompletionRecord] | type[TarRecord] = CompletionRecord
                 ) -> CompletionRecord | TarRecord | None:
    """None when absent, or removed between listing and reading (a writer restarting the shard)."""
    try:
        return kind.from_json(read_json(path))
    except FileNotFoundError:
        return None


def _parse_plan(entry: Any, shard: int, size: int) -> ShardPlan:
    """An index file's content as the plan of shard `shard`; `ValueError` saying how it differs."""
    if not isinstance(entry, dict):
        raise ValueError("not a JSON object")
    keys = entry.get("keys")
    if entry.get("shard") != shard or entry.get("first_row") != shard * size:
        raise ValueError(f"it says shard {entry.get('shard')} first_row {entry.get('first_row')}, "
                         f"expected {shard} and {shard * size}")
    if not isinstance(keys, list) or len(keys) != size or not all(k is None or isinstance(k, str) for k in keys):
        raise ValueError(f"its keys are not {size} strings or nulls")
    return ShardPlan(index=shard, rows=range(shard * size, (shard + 1) * size), keys=tuple(keys))


class StoreMeta(ShardRecords):
    """One store's metadata. Use `StoreMeta.load(path, expect=fingerprint)`.

    `plans[i]` is shard `i`; `infos[array_id]` its zarr array; `records[array_id][shard]` the completion
    record of a written shard; `tars[shard]` the digest record of an exported tar. Queries over several
    arrays treat a shard as complete when every one of them has a record. A compact array's scales are a
    zarr array of their own (`scales[array_id]`, `stages.store.compact`): in `infos` and `records`, not in
    `array_ids`, and its shards are complete when both have records.

    Damage is reported, never raised: `damaged_index[shard]` says why an index file below the highest
    one is missing, unreadable or not the plan of its shard (its `plans` entry is all padding until
    repaired, see `stages.store.repair`); `bad_records[(array_id, shard)]` says why a completion
    record cannot be trusted (it counts as absent); `damaged_arrays[array_id]` why an array's metadata
    cannot be trusted (it is not in `infos`, its records do not count; `require` refuses it). Only what
    cannot be reported is raised (`StoreDamaged`): unreadable fingerprint or group metadata, a group
    shard size that disagrees with the arrays' sealed specs, links inside the store.
    """

    def __init__(self, paths: StorePaths, fingerprint: Fingerprint, attrs: dict[str, Any]) -> None:
        self.paths, self.fingerprint, self.attrs = paths, fingerprint, attrs
        self.shard_size: int = attrs["feature_cache"]["shard_size"]
        dtypes = fingerprint.fields.get("dtypes")
        self._dtypes: tuple[str, ...] = tuple(map(str, dtypes.values())) if isinstance(dtypes, dict) else ()
        super().__init__([], {})
        self.infos: dict[str, ArrayInfo] = {}
        self.damaged_index: dict[int, str] = {}
        self.bad_records: dict[tuple[str, int], str] = {}
        self.damaged_arrays: dict[str, DamagedArray] = {}
        self.tars: dict[int, TarRecord] = {}

    @classmethod
    def load(cls, path: str | Path, *, expect: Fingerprint | None) -> "StoreMeta":
        """The metadata of the store at `path`; `expect` is the fingerprint the caller needs (None:
        inspection only). Raises `StoreNotFound`, `FingerprintMismatch` (see `read_header`) or
        `StoreDamaged`."""
        fingerprint, attrs = read_header(path, expect=expect)
        return cls(StorePaths(path), fingerprint, attrs).refresh()

    def refresh(self, *, shards: Iterable[int] | None = None) -> "StoreMeta":
        """Re-read, in place, what may have changed: the array infos (arrays are created and grown) and
        the completion records of `shards` (of every shard when None, with the tar records; of none for
        `()`), then new shard plans (index files never change once written). Returns self."""
        _refuse_links(self.paths, "zarr", "index", "done", "wds", "locks", "sources", ".lock")
        self._refresh_arrays(None if shards is None else tuple(shards))
        numbers = [int(p.stem) for p in self.paths.index.glob("[0-9]*.json") if p.stem.isdigit()]
        for shard in range(max(numbers, default=-1) + 1):  # damaged ones are re-read until repaired
            if shard >= len(self.plans):
                self.plans.append(self._read_plan(shard))
            elif shard in self.damaged_index:
                self.plans[shard] = self._read_plan(shard)
        if shards is None:
            self.tars = {}
            for path in sorted(self.paths.wds.glob("[0-9]*.json")):
                if (tar := _read_record(path, TarRecord)) is not None:
                    self.tars[int(path.stem)] = tar
        return self

    def _refresh_arrays(self, wanted: tuple[int, ...] | None) -> None:
        """Every array with a zarr.json or with completion records: its info and records, or its damage."""
        in_zarr = {p.parent.name for p in self.paths.zarr.glob("*/zarr.json")}
        in_done = {p.name for p in self.paths.done.iterdir() if p.is_dir()} if self.paths.done.is_dir() else set()
        ids = in_zarr | {a for a in in_done - in_zarr if next((self.paths.done / a).glob("[0-9]*.json"), None)}
        self.infos, self.damaged_arrays = {}, {}
        for array_id in sorted(ids):
            _refuse_links(self.paths, f"zarr/{array_id}", f"zarr/{array_id}/c", f"done/{array_id}")
            records = self.records.get(array_id) if wanted is not None else None
            if records is None:  # every record (also those of a new or repaired array)
                records, todo = {}, sorted(int(p.stem) for p in (self.paths.done / array_id).glob("[0-9]*.json"))
            else:
                todo = wanted
            for shard in todo:
                record = self._read_completion(array_id, shard)
                if record is None:
                    records.pop(shard, None)
                else:
                    records[shard] = record
            found = self._read_array(array_id, records)
            if isinstance(found, ArrayInfo):
                self.infos[array_id], self.records[array_id] = found, records
            else:
                self.damaged_arrays[array_id] = found
        self.records = {a: r for a, r in self.records.items() if a in self.infos}  # arrays may be dropped
        self.scales = {a: scale_id(a) for a, info in self.infos.items() if info.compact is not None}

    def _read_array(self, array_id: str, records: Mapping[int, CompletionRecord]) -> ArrayInfo | DamagedArray:
        """The array's info if its zarr.json is what it was created as (`stages.store.arrays`), else why not."""
        where, spec = f"zarr/{array_id}/zarr.json", None
        try:
            document = read_json(self.paths.zarr / array_id / "zarr.json")
            if not isinstance(document, dict) or document.get("node_type") != "array":
                raise ValueError("it is not a zarr array document")
            info = array_info(array_id, document)
            spec = sealed_spec(document, fingerprint=self.fingerprint.full)
            if spec is not None and spec.shard_size != self.shard_size:
                raise EditedShardSize(
                    f"store {self.paths.root}: zarr/zarr.json says shard_size {self.shard_size}, but array "
                    f"{array_id!r} was created with shard size {spec.shard_size} (its sealed spec); the group "
                    f"metadata was edited: `just verify {self.paths.root} --repair` restores it",
                    shard_size=spec.shard_size)
            problem = (document_problem(document, spec) if spec is not None else legacy_problem(
                info, shard_size=self.shard_size, recorded=[(r.dtype, r.sample_shape) for r in records.values()],
                dtypes=self._dtypes))
            if problem is None:
                return info if spec is None or spec.dtype not in COMPACT else replace(info, compact=COMPACT[spec.dtype])
            reason = f"{where}: {problem}"
        except FileNotFoundError:
            reason = f"{where} is missing (the array directory was deleted?) but done/{array_id} has completion records"
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = f"{where} is damaged: {exc}"
        recorded = tuple(sorted(int(p.stem) for p in (self.paths.done / array_id).glob("[0-9]*.json")))
        return DamagedArray(reason=reason, recorded=recorded, spec=spec)

    def reread_plan(self, shard: int) -> None:
        """Read shard `shard`'s index file again: a repair rewrote or removed it (plans are cached, as index
        files never change otherwise)."""
        if shard < len(self.plans):
            self.plans[shard] = self._read_plan(shard)

    def _read_plan(self, shard: int) -> ShardPlan:
        """The plan in `index/<shard>.json`, or all padding with the reason in `damaged_index`."""
        path, size = self.paths.index_file(shard), self.shard_size
        try:
            plan = _parse_plan(read_json(path), shard, size)
        except FileNotFoundError:
            self.damaged_index[shard] = f"index/{path.name} is missing"
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self.damaged_index[shard] = f"index/{path.name} is damaged: {exc}"
        else:
            self.damaged_index.pop(shard, None)
            return plan
        return ShardPlan(index=shard, rows=range(shard * size, (shard + 1) * size), keys=(None,) * size)

    def _read_completion(self, array_id: str, shard: int) -> CompletionRecord | None:
        """A completion record, None when absent or untrustworthy (the reason in `bad_records`)."""
        self.bad_records.pop((array_id, shard), None)
        try:
            record = _read_record(self.paths.record(array_id, shard))
            if record is not None and (record.array_id, record.shard) != (array_id, shard):
                raise ValueError(f"it names array {record.array_id!r} shard {record.shard}")
            if record is not None and record.identity and len(record.identity) != self.shard_size:
                raise ValueError(f"it has {len(record.identity)} identity digests for a shard of {self.shard_size}")
        except (ValueError, KeyError, TypeError) as exc:
            self.bad_records[(array_id, shard)] = f"unreadable completion record: {exc!r}"
            return None
        return record

    # ---- queries -----------------------------------------------------------------------------
    @property
    def array_ids(self) -> list[str]:
        """The arrays whose metadata is intact (`damaged_arrays` are not among them), a compact array's
        with its scales' (which `infos` holds as an array of its own, not listed here)."""
        return sorted(a for a, info in self.infos.items()
                      if not is_scale_id(a) and (info.compact is None or scale_id(a) in self.infos))

    def sample_nbytes(self, array_id: str) -> int:
        """Bytes one sample of `array_id` takes in its shard files (each chunk's crc32c and a compact array's
        scales included)."""
        return sum(self.infos[a].chunk_nbytes + 4 * self.infos[a].checksummed for a in self.stored_ids([array_id]))

    def stored_ids(self, array_ids: Iterable[str]) -> list[str]:
        """The zarr arrays that store `array_ids`: each, and the scales of a compact one (when present)."""
        known = set(self.infos) | set(self.damaged_arrays)
        return [i for a in array_ids for i in (a, scale_id(a)) if i == a or i in known]

    def require(self, array_ids: Iterable[str]) -> None:
        """`StoreDamaged` (one line: store, array, file and field, and the fix) for the first of `array_ids`
        (or of their scale arrays) whose metadata cannot be trusted."""
        for array_id in self.stored_ids(array_ids):
            damaged = self.damaged_arrays.get(array_id)
            if damaged is None:
                continue
            root = self.paths.root
            fix = ("run `just extract` with the config that made the store: it rewrites the array's zarr.json from "
                   "its creation spec" if damaged.spec is not None else f"withdraw its shards with `just verify "
                   f"{root} --repair`, then `just extract` (same config) creates the array again and computes them")
            raise StoreDamaged(f"store {root}: array {array_id!r} cannot be trusted: {damaged.reason}; {fix}")

    def record(self, array_id: str, shard: int) -> CompletionRecord:
        if not self.is_complete(array_id, shard):
            raise KeyError(f"shard {shard} of array {array_id!r} has no completion record in {self.paths.root}")
        return self.records[array_id][shard]
