"""`CacheStore`: create or reopen a fingerprinted store, plan rows for keys, write whole shards.

Crash safety: a shard's data is written whole (one zarr write per array), fsynced, and only then is
its completion record renamed into place (`stages.store.shard_files`). Readers trust records only, so a
writer killed at any point leaves that shard invisible; writing it again completes it. One writer per
shard at a time (zarr partial-shard writes from several processes lose data): each shard write holds
that shard's lock, so two jobs writing the same shard (each adding its own arrays to the same keys) take
turns; different shards are written at once. `write_shard(..., export=...)` writes the tar (with every
array complete in the store), then the zarr shards and records, in one hold of that lock: of two jobs
adding arrays to a shard at once, the second's tar holds both. Metadata changes (planning keys, creating
and resizing arrays) hold the store lock (`stages.store.locks`). Repair and removal:
`stages.store.maintenance`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import zarr
from zarr.storage import MemoryStore

from stages.config import ConfigError
from stages.image_files import ImageStamp
from stages.store.arrays import DEFAULT_COMPRESSION, ArraySpec, array_document, package_versions
from stages.store.compact import COMPACT, SCALE_SUFFIX, encode, held_dtype, is_scale_id, stored_parts
from stages.store.fingerprint import Fingerprint
from stages.store.keys import check_array_id, check_key
from stages.store.layout import ShardPlan, StorePath, new_shard_plans, write_bytes_atomic, write_index
from stages.store.location import location
from stages.store.locks import shard_lock, store_lock
from stages.store.maintenance import StoreMaintenance
from stages.store.meta import StoreDamaged, StoreMeta, is_store
from stages.store.objects import as_location
from stages.store.records import CompletionRecord
from stages.store.shard_files import write_tar_shard, write_zarr_shard

__all__ = ["CacheStore", "DEFAULT_SHARD_SIZE", "LAYOUT_VERSION"]

DEFAULT_SHARD_SIZE = 256
LAYOUT_VERSION = 3  # 3: identity digests in the records, sealed array specs; 2: every sample ends with
# its crc32c, tars have digest records; 1: neither


class CacheStore(StoreMaintenance):
    """Writer-side handle on one store directory. Use `open_or_create` or `open`.

    `meta` is its `StoreMeta`; the queries here (`shards`, `is_complete`, `failed`, `missing_shards`)
    refresh it first, so they see what other processes have written; `refresh()` returns it up to date
    for many queries at once.
    """

    def __init__(self, meta: StoreMeta) -> None:
        self.meta = meta

    @property
    def path(self) -> StorePath:
        return self.meta.paths.root

    @property
    def fingerprint(self) -> Fingerprint:
        return self.meta.fingerprint

    @property
    def shard_size(self) -> int:
        return self.meta.shard_size

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | StorePath, *, fingerprint: Fingerprint) -> "CacheStore":
        """Open an existing store, refusing one made from other inputs than `fingerprint`
        (`FingerprintMismatch`, naming the differing fields)."""
        return cls(StoreMeta.load(path, expect=fingerprint))

    @classmethod
    def open_or_create(cls, cache_root: str | StorePath, *, fingerprint: Fingerprint,
                       shard_size: int | None = None,
                       attrs: Mapping[str, Any] | None = None) -> "CacheStore":
        """The store for `fingerprint` under `cache_root` (`<root>/<fingerprint.short>`), created
        atomically (built in a temp dir, renamed) if absent. `shard_size` applies at creation; an
        explicit value different from an existing store's is an error."""
        target = as_location(cache_root) / fingerprint.short
        if not is_store(target):
            cls._create(target, fingerprint=fingerprint, shard_size=shard_size or DEFAULT_SHARD_SIZE,
                        attrs=dict(attrs or {}))
        store = cls.open(target, fingerprint=fingerprint)
        if shard_size is not None and shard_size != store.shard_size:
            raise ConfigError(f"store {target} has shard_size {store.shard_size}, not {shard_size}; "
                              "shard size is fixed when a store is created")
        return store

    @staticmethod
    def _create(target: StorePath, *, fingerprint: Fingerprint, shard_size: int, attrs: dict[str, Any]) -> None:
        """The store's two header files, created at once (`Location.create_dir`); `fingerprint.json` last, as
        a store is a directory holding both."""
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if "feature_cache" in attrs:
            raise ValueError("attrs key 'feature_cache' is reserved for the store's own metadata")
        own = {"layout_version": LAYOUT_VERSION, "fingerprint": fingerprint.fields,
               "fingerprint_json": fingerprint.json, "fingerprint_sha256": fingerprint.full,
               "shard_size": shard_size, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "versions": package_versions()}
        documents: dict[str, Any] = {}
        zarr.open_group(store=MemoryStore(store_dict=documents), mode="w", zarr_format=3,
                        attributes={**attrs, "feature_cache": own})
        location(target).create_dir(target, {"zarr/zarr.json": documents["zarr.json"].to_bytes(),
                                             "fingerprint.json": fingerprint.json.encode("utf-8")})

    # ---- helpers -------------------------------------------------------------------------
    def _group(self, mode: str = "r") -> zarr.Group:
        return location(self.meta.paths.zarr).zarr_group(self.meta.paths.zarr, mode)

    def refresh(self) -> StoreMeta:
        """The store's metadata with every plan, array and completion record written so far."""
        return self.meta.refresh()

    def _plans(self) -> list[ShardPlan]:
        return self.meta.refresh(shards=()).plans

    @property
    def n_rows(self) -> int:
        return len(self._plans()) * self.shard_size

    def shards(self) -> list[ShardPlan]:
        return list(self._plans())

    def array_ids(self) -> list[str]:
        return self.meta.refresh(shards=()).array_ids

    # ---- planning ------------------------------------------------------------------------
    def _new_keys(self, keys: Sequence[str]) -> list[str]:
        """`keys` not planned yet, in order; `StoreDamaged` while an index file is damaged (the keys
        of that shard are unknown, so planning could give a key a second row)."""
        meta = self.meta.refresh(shards=())
        if meta.damaged_index:
            raise StoreDamaged(f"store {self.path}: " + "; ".join(meta.damaged_index.values())
                               + f"; repair it first: just verify {self.path} --repair")
        known = {k for plan in meta.plans for k in plan.keys if k is not None}
        return list(dict.fromkeys(check_key(k) for k in keys if k not in known))

    def add_keys(self, keys: Sequence[str]) -> list[int]:
        """Give rows to new keys, appended from the next shard boundary so that completed shards
        never change; existing keys keep their rows. Idempotent. Returns the new shard indices.
        Locks (and so needs write access) only when there is something to plan."""
        if not self._new_keys(keys) and all(i.n_rows >= self.n_rows for i in self.meta.infos.values()):
            return []
        with store_lock(self.meta.paths):
            plans = new_shard_plans(self._plans(), self._new_keys(keys), shard_size=self.shard_size)
            for plan in plans:
                if not write_index(self.meta.paths, plan.index, plan.keys, shard_size=self.shard_size, new=True):
                    raise StoreDamaged(f"store {self.path}: index/{plan.index:06d}.json was written by another "
                                       "planner while this one held the store lock (a lease that expired?); "
                                       "run the extraction again")
            self._grow_arrays()
        return [plan.index for plan in plans]

    def _grow_arrays(self) -> None:
        group, n_rows = self._group("r+"), self.n_rows
        for array_id in self.meta.infos:  # arrays with damaged metadata are restored or recreated at full size
            array = group[array_id]
            if array.shape[0] < n_rows:
                array.resize((n_rows, *array.shape[1:]))

    def ensure_array(self, array_id: str, *, sample_shape: Sequence[int], dtype: str = "float16",
                     compression: str = DEFAULT_COMPRESSION,
                     attrs: Mapping[str, Any] | None = None) -> bool:
        """Create array `array_id` `[n_rows, *sample_shape]` unless it exists with that shape and dtype
        (another shape or dtype is an error; other arrays are never touched). True if created. A compact
        `dtype` (`stages.store.compact`) stores codes, and creates its scale array beside it.

        An array whose metadata is damaged (`StoreMeta.damaged_arrays`) is mended: when its sealed creation
        spec is intact (and equals this request) its zarr.json is rewritten from it, keeping shard files and
        records (every read still checks them); without one (a deleted array directory, an unreadable
        zarr.json, a broken seal) its records and shard files are removed and it is created again."""
        check_array_id(array_id)
        if is_scale_id(array_id):
            raise ValueError(f"array id {array_id!r}: ids ending in {SCALE_SUFFIX!r} name the scales of compact arrays")
        dtype = dtype if dtype in COMPACT else np.dtype(dtype).name
        with store_lock(self.meta.paths):
            created = [self._ensure(ArraySpec(array_id=i, sample_shape=shape, dtype=d, shard_size=self.shard_size,
                                              compression=compression), attrs if i == array_id else None)
                       for i, shape, d in stored_parts(array_id, sample_shape, dtype)]
        return any(created)

    def _ensure(self, spec: ArraySpec, attrs: Mapping[str, Any] | None) -> bool:
        """`ensure_array` for one zarr array, under the store lock."""
        array_id, meta = spec.array_id, self.meta.refresh(shards=())
        existing, damaged = meta.infos.get(array_id), meta.damaged_arrays.get(array_id)
        if existing is not None:
            if (existing.sample_shape, existing.stored_dtype) != (spec.sample_shape, spec.dtype):
                raise ValueError(
                    f"array {array_id!r} exists in {self.path} with sample shape {existing.sample_shape} "
                    f"and dtype {existing.stored_dtype}; asked for {spec.sample_shape} {spec.dtype}")
            self._grow_arrays()
            return False
        if damaged is not None and damaged.spec not in (None, spec):
            raise ValueError(f"array {array_id!r} in {self.path} was created as {damaged.spec}; asked for {spec}")
        if damaged is not None and damaged.spec is None:  # its records and shards cannot be proven
            for directory in (meta.paths.done / array_id, meta.paths.zarr / array_id / "c"):
                location(directory).remove_tree(directory)  # records first: the shards turn invisible
        path = meta.paths.zarr / array_id / "zarr.json"
        path.parent.mkdir(exist_ok=True)
        write_bytes_atomic(path, array_document(spec, n_rows=self.n_rows, fingerprint=self.fingerprint.full,
                                                attrs=dict(attrs or {})))
        self.meta.refresh(shards=())
        self._grow_arrays()
        return damaged is None or damaged.spec is None

    # ---- completion ----------------------------------------------------------------------
    def is_complete(self, array_id: str, shard: int) -> bool:
        return self.meta.refresh(shards=[shard]).is_complete(array_id, shard)

    def failed(self, shard: int, array_ids: Sequence[str]) -> dict[str, str]:
        """key -> reason for the keys of `shard` recorded as failed by `array_ids` (see `StoreMeta.failed`)."""
        return self.meta.refresh(shards=[shard]).failed(shard, array_ids)

    def record(self, array_id: str, shard: int) -> CompletionRecord:
        """The completion record of (array, shard), read now (`KeyError` when the shard is not complete)."""
        return self.meta.refresh(shards=[shard]).record(array_id, shard)

    def missing_shards(self, array_ids: Sequence[str]) -> list[int]:
        """Shards where any of `array_ids` has no completion record (work left to do)."""
        return self.refresh().missing_shards(array_ids)

    def _plan(self, index: int) -> ShardPlan:
        plans = self._plans()
        if not 0 <= index < len(plans):
            raise IndexError(f"shard {index} is not planned in {self.path} ({len(plans)} shards)")
        return plans[index]

    def _target(self, group: zarr.Group, plan: ShardPlan, array_id: str, data: np.ndarray) -> zarr.Array:
        """zarr array `array_id`, checked to take `data` as shard `plan` whole."""
        # zarr does not persist write_empty_chunks: without it an all-zero shard (every key
        # failed) would not be written at all
        array = group[array_id].with_config({"write_empty_chunks": True})
        want = (len(plan.rows), *array.shape[1:])
        if tuple(np.shape(data)) != want:
            raise ValueError(f"array {array_id!r} shard {plan.index}: got shape {tuple(np.shape(data))}, "
                             f"expected {want}")
        return array

    def _stored(self, plan: ShardPlan, arrays: Mapping[str, np.ndarray], failed: Mapping[str, str]
                ) -> dict[str, np.ndarray]:
        """`{zarr array id: data}` storing `arrays` (`stages.store.compact.encode`: cast to the stored dtype, or
        quantised with their scales); rows of failed keys and padding rows become zeros."""
        self.meta.require(arrays)
        zero = [i for i, k in enumerate(plan.keys) if k is None or k in failed]
        out: dict[str, np.ndarray] = {}
        for array_id, data in arrays.items():
            if array_id not in self.meta.infos:
                raise KeyError(f"array {array_id!r} does not exist in {self.path}; call ensure_array first")
            dtype = self.meta.infos[array_id].stored_dtype
            values = np.array(data, dtype=held_dtype(dtype), copy=bool(zero) or None, order="C")
            values[zero] = 0
            out.update(encode(array_id, values, dtype))
        return out

    def write_shard(self, index: int, arrays: Mapping[str, np.ndarray], failed: Mapping[str, str] | None = None,
                    *, export: Mapping[str, np.ndarray] | None = None,
                    images: Mapping[str, ImageStamp] | None = None,
                    decode_limits: Mapping[str, int] | None = None) -> Path | None:
        """Write shard `index` of each array whole, make it durable, then record it complete (with the
        sha256 of the shard file, the failed keys, whose rows are zeros, `images`: the stamp of each
        image file the values were computed from, and `decode_limits`: what those images were read
        under). With `export`, first write the shard's tar from it as `write_webdataset_shard` does, in the same hold of the shard lock (see the module docstring);
        returns the tar path, or None without `export`. A compact array's values are given in `held_dtype`
        (float16) and quantised here; its scales are written and recorded as an array of their own."""
        plan, failed, images = self._plan(index), dict(failed or {}), dict(images or {})
        unknown = sorted((set(failed) | set(images)) - set(plan.keys))
        if unknown:
            raise ValueError(f"failed or stamped keys {unknown[:3]} are not in shard {index}")
        stored = self._stored(plan, arrays, failed)
        group = self._group("r+")
        targets = {array_id: self._target(group, plan, array_id, data) for array_id, data in stored.items()}
        with shard_lock(self.meta.paths, index):
            tar = None if export is None else write_tar_shard(self.meta, plan, self._stored(plan, export, failed),
                                                              failed)
            for array_id, array in targets.items():
                write_zarr_shard(self.meta, plan, array_id, array, stored[array_id],
                                 failed=failed, images=images, decode_limits=dict(decode_limits or {}))
        return tar

    def write_webdataset_shard(self, index: int, arrays: Mapping[str, np.ndarray],
                               failed: Mapping[str, str] | None = None) -> Path:
        """Export shard `index` as `wds/NNNNNN.tar` (valid keys only) with `arrays` and every other array
        complete for this shard in the store (arrays another job added stay in the export), then record its
        size and sha256 in `wds/NNNNNN.json` (removed first, so a tar being rewritten has none); returns the
        tar path. A job that also writes the zarr shard exports through `write_shard(..., export=...)`."""
        plan, failed = self._plan(index), dict(failed or {})
        stored = self._stored(plan, arrays, failed)
        with shard_lock(self.meta.paths, index):
            return write_tar_shard(self.meta, plan, stored, failed)
