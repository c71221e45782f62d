"""`StoreMeta`: what a store says about itself, parsed in one place.

The fingerprint (`fingerprint.json`), the group attributes (`zarr/zarr.json`), the shard plans
(`index/NNNNNN.json`), the array infos (`zarr/<array>/zarr.json`), the completion records
(`done/<array>/NNNNNN.json`) and the webdataset tars' digest records (`wds/NNNNNN.json`). The writer,
the reader, the registry and `verify` ask this object; nobody else reads those files. Every load
names the fingerprint it expects (`None` only for inspection: `verify`, `caches`), so a store made from
other inputs is refused where it is opened.

A `StoreMeta` is a snapshot. `refresh` brings in what other processes wrote since: extraction actors
complete shards while the driver holds its `CacheStore`, and a rewrite removes a shard's record first.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from stages.errors import UserError
from stages.image_files import ImageStamp
from stages.store.arrays import ArrayInfo, array_info
from stages.store.fingerprint import Fingerprint, FingerprintMismatch
from stages.store.layout import ShardPlan, StorePaths, read_json

__all__ = ["StoreMeta", "CompletionRecord", "TarRecord", "StoreNotFound", "StoreDamaged", "is_store", "read_header"]


class StoreNotFound(UserError, FileNotFoundError):
    """No feature store at a path, or none for a fingerprint under a cache root."""


class StoreDamaged(UserError):
    """A store whose metadata is damaged in a way that must be repaired before it can be planned into."""


@dataclass(frozen=True)
class CompletionRecord:
    """`done/<array_id>/NNNNNN.json`, written last: the proof that the shard file is whole (its size and
    sha256 as written), with the keys that failed (their rows are zeros), the count of valid rows and
    the stamp of each image file the values were computed from (`images`; empty in stores written before
    stamps were recorded, whose rows cannot be checked against their files)."""

    array_id: str
    shard: int
    rows: tuple[int, int]  # [start, stop) of the shard's rows
    chunk_key: str  # the shard file, relative to the array's directory
    nbytes: int
    sha256: str
    dtype: str
    sample_shape: tuple[int, ...]
    failed: Mapping[str, str]  # key -> reason
    n_valid: int
    written: str  # UTC, ISO 8601
    images: Mapping[str, ImageStamp] = field(default_factory=dict)  # key -> the file's bytes when read

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "CompletionRecord":
        values = {f.name: value[f.name] for f in fields(cls) if f.name != "images"}
        return cls(**{**values, "rows": tuple(values["rows"]), "sample_shape": tuple(values["sample_shape"]),
                      "failed": dict(values["failed"]),
                      "images": {k: ImageStamp.from_json(v) for k, v in value.get("images", {}).items()}})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TarRecord:
    """`wds/NNNNNN.json`, written after `wds/NNNNNN.tar` is in place: its size and sha256 as written.
    (Each sample's `.json` member also carries the sha256 of its `.npy` members.)"""

    shard: int
    nbytes: int
    sha256: str
    written: str  # UTC, ISO 8601

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "TarRecord":
        return cls(**{f.name: value[f.name] for f in fields(cls)})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
    fingerprint = Fingerprint.from_json(paths.fingerprint.read_text(encoding="utf-8"))
    if expect is not None and fingerprint.full != expect.full:
        raise FingerprintMismatch(paths.root, store=fingerprint, requested=expect)
    return fingerprint, read_json(paths.zarr / "zarr.json").get("attributes", {})


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


class StoreMeta:
    """One store's metadata. Use `StoreMeta.load(path, expect=fingerprint)`.

    `plans[i]` is shard `i`; `infos[array_id]` its zarr array; `records[array_id][shard]` the completion
    record of a written shard; `tars[shard]` the digest record of an exported tar. Queries over several
    arrays treat a shard as complete when every one of them has a record.

    Damage is reported, never raised: `damaged_index[shard]` says why an index file below the highest
    one is missing, unreadable or not the plan of its shard (its `plans` entry is all padding until
    repaired, see `stages.store.repair`); `bad_records[(array_id, shard)]` says why a completion
    record cannot be trusted (it counts as absent).
    """

    def __init__(self, paths: StorePaths, fingerprint: Fingerprint, attrs: dict[str, Any]) -> None:
        self.paths, self.fingerprint, self.attrs = paths, fingerprint, attrs
        self.shard_size: int = attrs["feature_cache"]["shard_size"]
        self.plans: list[ShardPlan] = []
        self.infos: dict[str, ArrayInfo] = {}
        self.records: dict[str, dict[int, CompletionRecord]] = {}
        self.damaged_index: dict[int, str] = {}
        self.bad_records: dict[tuple[str, int], str] = {}
        self.tars: dict[int, TarRecord] = {}

    @classmethod
    def load(cls, path: str | Path, *, expect: Fingerprint | None) -> "StoreMeta":
        """The metadata of the store at `path`; `expect` is the fingerprint the caller needs (None:
        inspection only). Raises `StoreNotFound` or `FingerprintMismatch` (see `read_header`)."""
        fingerprint, attrs = read_header(path, expect=expect)
        return cls(StorePaths(path), fingerprint, attrs).refresh()

    def refresh(self, *, shards: Iterable[int] | None = None) -> "StoreMeta":
        """Re-read, in place, what may have changed: new shard plans (index files never change once
        written), the array infos (arrays are created and grown) and the completion records of `shards`
        (of every shard when None, with the tar records; of none for `()`). Returns self."""
        numbers = [int(p.stem) for p in self.paths.index.glob("[0-9]*.json") if p.stem.isdigit()]
        for shard in range(max(numbers, default=-1) + 1):  # damaged ones are re-read until repaired
            if shard >= len(self.plans):
                self.plans.append(self._read_plan(shard))
            elif shard in self.damaged_index:
                self.plans[shard] = self._read_plan(shard)
        self.infos = {}
        for meta_path in sorted(self.paths.zarr.glob("*/zarr.json")):
            meta = read_json(meta_path)
            if meta.get("node_type") == "array":
                self.infos[meta_path.parent.name] = array_info(meta_path.parent.name, meta)
        self.records = {a: r for a, r in self.records.items() if a in self.infos}  # arrays may be dropped
        wanted = None if shards is None else tuple(shards)
        for array_id in self.infos:
            if wanted is None or array_id not in self.records:  # every record (also those of a new array)
                self.records[array_id] = {}
                todo = sorted(int(p.stem) for p in (self.paths.done / array_id).glob("[0-9]*.json"))
            else:
                todo = wanted
            for shard in todo:
                record = self._read_completion(array_id, shard)
                if record is None:
                    self.records[array_id].pop(shard, None)
                else:
                    self.records[array_id][shard] = record
        if shards is None:
            self.tars = {}
            for path in sorted(self.paths.wds.glob("[0-9]*.json")):
                if (tar := _read_record(path, TarRecord)) is not None:
                    self.tars[int(path.stem)] = tar
        return self

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
        except (ValueError, KeyError, TypeError) as exc:
            self.bad_records[(array_id, shard)] = f"unreadable completion record: {exc!r}"
            return None
        return record

    # ---- queries -----------------------------------------------------------------------------
    @property
    def array_ids(self) -> list[str]:
        return sorted(self.infos)

    @property
    def n_keys(self) -> int:
        """Keys planned (padding rows excluded)."""
        return sum(k is not None for plan in self.plans for k in plan.keys)

    def record(self, array_id: str, shard: int) -> CompletionRecord:
        if not self.is_complete(array_id, shard):
            raise KeyError(f"shard {shard} of array {array_id!r} has no completion record in {self.paths.root}")
        return self.records[array_id][shard]

    def is_complete(self, array_id: str, shard: int) -> bool:
        return shard in self.records.get(array_id, {})

    def complete_shards(self, array_ids: Sequence[str]) -> list[int]:
        """Planned shards with a completion record for every one of `array_ids`, in order."""
        return [p.index for p in self.plans if all(self.is_complete(a, p.index) for a in array_ids)]

    def missing_shards(self, array_ids: Sequence[str]) -> list[int]:
        """Planned shards where some of `array_ids` has no completion record (work left to do)."""
        done = set(self.complete_shards(array_ids))
        return [p.index for p in self.plans if p.index not in done]

    def failed(self, shard: int, array_ids: Sequence[str]) -> dict[str, str]:
        """key -> reason for the keys of `shard` that failed in the recorded arrays among `array_ids` (the
        first array listing a key gives its reason)."""
        out: dict[str, str] = {}
        for array_id in array_ids:
            record = self.records.get(array_id, {}).get(shard)
            if record is not None:
                for key, reason in record.failed.items():
                    out.setdefault(key, reason)
        return out

    def image_stamps(self, shard: int, array_ids: Sequence[str] | None = None) -> dict[str, ImageStamp]:
        """key -> the stamp of the image file the recorded arrays (all when None) of `shard` were
        computed from; keys of records written before stamps existed are absent."""
        out: dict[str, ImageStamp] = {}
        for array_id in self.array_ids if array_ids is None else array_ids:
            record = self.records.get(array_id, {}).get(shard)
            if record is not None:
                for key, stamp in record.images.items():
                    out.setdefault(key, stamp)
        return out

    def valid_keys(self, plan: ShardPlan, array_ids: Sequence[str]) -> list[str]:
        """The keys of `plan` that failed in none of `array_ids`, in row order (padding excluded)."""
        failed = self.failed(plan.index, array_ids)
        return [k for k in plan.keys if k is not None and k not in failed]

    def n_valid(self, array_id: str) -> int:
        """Valid keys in the planned shards `array_id` has completed."""
        return sum(self.records[array_id][s].n_valid for s in self.complete_shards([array_id]))
