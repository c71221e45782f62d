"""`StoreReader`: the trainer's read-only view of a store (no Ray, no pipeline imports).

Only shards with a completion record are visible. Uncompressed arrays (the default) are read by
parsing the zarr v3 shard index and `preadv`-ing the inner chunks straight into the output, a whole
shard in one call; compressed arrays go through zarr. Either way the bytes are the zarr array's.

Every sample served is checked: against its own crc32c (layout 2: the inner chunks end with one), or,
for arrays written before that (layout 1), by hashing the shard file against its completion record
once per process before any of its samples is served. A mismatch raises `StoreCorruption`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import zarr
from zarr.storage import LocalStore

from stages.errors import UserError
from stages.image_files import ImageStamp
from stages.store.arrays import ArrayInfo
from stages.store.fingerprint import Fingerprint
from stages.store.layout import ChunkCorruption, StorePaths, file_sha256, read_raw_rows
from stages.store.meta import StoreMeta, StoreNotFound, is_store
from stages.store.registry import describe_missing

__all__ = ["StoreReader", "KeyNotInStore", "StoreNotFound", "StoreCorruption"]


class KeyNotInStore(UserError, KeyError):
    """A key the store cannot serve; the message says whether it was never planned, failed, or is
    in a shard that is not complete yet."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0])


class StoreCorruption(UserError, OSError):
    """Stored bytes that differ from what was written: a sample failing its crc32c, or a layout-1 shard
    file failing its recorded sha256. The message names store, array, shard and keys, and the repair."""


class StoreReader:
    """Read-only, picklable (for DataLoader workers) view of the completed part of a store.

    `expect` is the fingerprint the caller needs (`FingerprintMismatch` otherwise; None only to
    inspect, as `verify` does). `array_ids` selects the arrays this reader serves (default: all);
    `keys` are those whose shard is complete for every selected array and that failed in none, in row
    order. The metadata is read once, at construction (`meta`).
    """

    def __init__(self, path: str | Path, *, expect: Fingerprint | None,
                 array_ids: Sequence[str] | None = None) -> None:
        self.meta = StoreMeta.load(path, expect=expect)
        self.array_ids: list[str] = self._check_ids(array_ids if array_ids is not None else self.meta.array_ids)
        self._row = {k: plan.rows[i] for plan in self.meta.plans for i, k in enumerate(plan.keys) if k is not None}
        self.keys: list[str] = [k for shard in self.meta.complete_shards(self.array_ids)
                                for k in self.meta.valid_keys(self.meta.plans[shard], self.array_ids)]
        self._index_cache: dict[tuple[str, int], np.ndarray] = {}
        self._hashed: set[tuple[str, int, int, int]] = set()  # (array, shard, size, mtime_ns) of checked files
        self._zarr: dict[str, zarr.Array] = {}

    @classmethod
    def open(cls, cache_root: str | Path, fingerprint: Fingerprint, *,
             array_ids: Sequence[str] | None = None) -> "StoreReader":
        """The store for `fingerprint` under `cache_root`; a clear error (naming the differing fields
        of the stores that do exist) when there is none."""
        path = Path(cache_root) / fingerprint.short
        if not is_store(path):
            raise StoreNotFound(describe_missing(cache_root, fingerprint))
        return cls(path, expect=fingerprint, array_ids=array_ids)

    @property
    def paths(self) -> StorePaths:
        return self.meta.paths

    @property
    def fingerprint(self) -> Fingerprint:
        return self.meta.fingerprint

    @property
    def attrs(self) -> dict[str, Any]:
        return self.meta.attrs

    @property
    def infos(self) -> dict[str, ArrayInfo]:
        return self.meta.infos

    def _check_ids(self, array_ids: Sequence[str]) -> list[str]:
        unknown = [a for a in array_ids if a not in self.meta.infos]
        if unknown:
            raise KeyError(f"arrays {unknown} are not in store {self.paths.root}; it has {self.meta.array_ids}")
        return list(array_ids)

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_zarr"] = {}  # zarr handles are reopened lazily in each worker
        state["_hashed"] = set()  # each process checks the files it reads itself
        return state

    def sample_shape(self, array_id: str) -> tuple[int, ...]:
        return self.infos[array_id].sample_shape

    def row_of(self, key: str, array_ids: Sequence[str] | None = None) -> int:
        """The row of `key`, or `KeyNotInStore` saying why it cannot be read."""
        array_ids = self.array_ids if array_ids is None else self._check_ids(array_ids)
        row = self._row.get(key)
        if row is None:
            raise KeyNotInStore(f"key {key!r} was never planned in store {self.paths.root} "
                                f"({len(self._row)} keys planned)")
        shard = row // self.meta.shard_size
        waiting = [a for a in array_ids if not self.meta.is_complete(a, shard)]
        if waiting:
            raise KeyNotInStore(f"key {key!r} is in shard {shard}, which is not complete for {waiting}")
        reason = self.meta.failed(shard, array_ids).get(key)
        if reason is not None:
            raise KeyNotInStore(f"key {key!r} failed: {reason}")
        return row

    def image_stamps(self, keys: Sequence[str]) -> dict[str, ImageStamp]:
        """key -> the stamp of the image file the selected arrays' rows of `key` were computed from
        (`stages.image_files`); keys without one (unplanned, or written before stamps) are absent."""
        shards = {self._row[k] // self.meta.shard_size for k in keys if k in self._row}
        recorded: dict[str, ImageStamp] = {}
        for shard in sorted(shards):
            recorded.update(self.meta.image_stamps(shard, self.array_ids))
        return {k: recorded[k] for k in keys if k in recorded}

    # ---- data ------------------------------------------------------------------------------
    def _zarr_array(self, array_id: str) -> zarr.Array:
        if array_id not in self._zarr:
            group = zarr.open_group(store=LocalStore(self.paths.zarr, read_only=True), mode="r")
            self._zarr[array_id] = group[array_id]
        return self._zarr[array_id]

    def _corruption(self, array_id: str, shard: int, local: Sequence[int], what: str) -> StoreCorruption:
        path = self.paths.shard_file(array_id, shard, len(self.infos[array_id].sample_shape))
        keys = self.meta.plans[shard].keys
        named = [keys[r] if keys[r] is not None else f"row {r} (padding)" for r in local]
        more = f" and {len(named) - 5} more" if len(named) > 5 else ""
        root = self.paths.root
        return StoreCorruption(
            f"store {root} is corrupt: array {array_id!r} shard {shard} ({path}): {what}; keys "
            f"{', '.join(map(repr, named[:5]))}{more}. Withdraw the damaged shards with "
            f"`just verify {root} --repair`, then recompute them with `just extract` (same config as before).")

    def _check_file(self, array_id: str, shard: int, local: np.ndarray) -> None:
        """Layout-1 arrays carry no per-sample checksum: hash the whole shard file against its completion
        record, once per process (and again if the file changes), before any of its samples is served."""
        path = self.paths.shard_file(array_id, shard, len(self.infos[array_id].sample_shape))
        stat = path.stat()
        checked = (array_id, shard, stat.st_size, stat.st_mtime_ns)
        if checked in self._hashed:
            return
        record = self.meta.record(array_id, shard)
        nbytes, digest = file_sha256(path)
        if (nbytes, digest) != (record.nbytes, record.sha256):
            raise self._corruption(array_id, shard, local.tolist(), (
                f"the shard file has {nbytes} bytes with sha256 {digest[:12]}…, its completion record says "
                f"{record.nbytes} bytes with sha256 {record.sha256[:12]}…"))
        self._hashed.add(checked)

    def _read_zarr_rows(self, array_id: str, shard: int, local: np.ndarray, out: np.ndarray) -> None:
        """Compressed arrays: one zarr slice over the wanted span (orthogonal selection is far slower).
        zarr checks each chunk's crc32c; on a mismatch the rows are probed one by one to name the bad ones."""
        array, first = self._zarr_array(array_id), shard * self.infos[array_id].shard_size
        try:
            span = array[first + int(local[0]):first + int(local[-1]) + 1]
        except ValueError:
            bad = []
            for r in local.tolist():
                try:
                    array[first + r]
                except ValueError:
                    bad.append(r)
            if not bad:
                raise
            raise ChunkCorruption(bad) from None
        out[...] = span if len(span) == len(local) else span[local - local[0]]

    def _read_shard_rows(self, array_id: str, shard: int, local: np.ndarray, out: np.ndarray) -> None:
        """Rows `local` (sorted ascending, within shard `shard`) of one array into `out`, checked."""
        info = self.infos[array_id]
        path = self.paths.shard_file(array_id, shard, len(info.sample_shape))
        if not path.is_file():  # its completion record says it was written (zarr would read fill values)
            raise self._corruption(array_id, shard, local.tolist(), "the shard file is missing")
        if not info.checksummed:
            self._check_file(array_id, shard, local)
        try:
            if info.raw:
                cache_key = (array_id, shard)
                self._index_cache[cache_key] = read_raw_rows(
                    path, local, n_chunks=info.shard_size, chunk_nbytes=info.chunk_nbytes,
                    checksummed=info.checksummed, out=out, index=self._index_cache.get(cache_key))
            else:
                self._read_zarr_rows(array_id, shard, local, out)
        except ChunkCorruption as exc:
            what = ("its shard index fails its crc32c" if exc.rows is None
                    else f"{len(exc.rows)} sample(s) fail their crc32c")
            raise self._corruption(array_id, shard, local.tolist() if exc.rows is None else exc.rows, what) from None

    def read(self, keys: Sequence[str], array_ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """`{array_id: (len(keys), *sample_shape)}` in the order of `keys`, read shard by shard."""
        array_ids = self.array_ids if array_ids is None else self._check_ids(array_ids)
        rows = np.fromiter((self.row_of(k, array_ids) for k in keys), dtype=np.int64, count=len(keys))
        order = np.argsort(rows, kind="stable")
        shard_size = self.meta.shard_size
        shards = rows[order] // shard_size
        bounds = np.flatnonzero(np.diff(shards)) + 1
        out = {a: np.empty((len(keys), *self.infos[a].sample_shape), self.infos[a].dtype) for a in array_ids}
        for group in np.split(np.arange(len(order)), bounds) if len(order) else []:
            positions, shard = order[group], int(shards[group[0]])
            local = rows[positions] - shard * shard_size
            direct = bool(np.all(np.diff(positions) == 1))  # keys given in row order: read in place
            for a in array_ids:
                if direct:
                    self._read_shard_rows(a, shard, local, out[a][positions[0]:positions[-1] + 1])
                else:
                    tmp = np.empty((len(local), *self.infos[a].sample_shape), self.infos[a].dtype)
                    self._read_shard_rows(a, shard, local, tmp)
                    out[a][positions] = tmp
        return out

    def iter_shards(self, array_ids: Sequence[str] | None = None, *,
                    shards: Sequence[int] | None = None) -> Iterator[tuple[list[str], dict[str, np.ndarray]]]:
        """`(keys, {array_id: (len(keys), *sample_shape)})` per complete shard in shard order, valid
        rows only; `shards` restricts to those indices (e.g. one DataLoader worker's share)."""
        array_ids = self.array_ids if array_ids is None else self._check_ids(array_ids)
        wanted = None if shards is None else set(shards)
        for shard in self.meta.complete_shards(array_ids):
            if wanted is not None and shard not in wanted:
                continue
            keys = self.meta.valid_keys(self.meta.plans[shard], array_ids)
            if keys:
                yield keys, self.read(keys, array_ids)

    def read_shard(self, array_id: str, shard: int) -> np.ndarray:
        """Every row of one shard (padding and failed rows included, as zeros): `(shard_size, *sample)`."""
        info = self.infos[array_id]
        out = np.empty((self.meta.shard_size, *info.sample_shape), info.dtype)
        self._read_shard_rows(array_id, shard, np.arange(self.meta.shard_size), out)
        return out

    def complete_shards(self, array_ids: Sequence[str] | None = None) -> list[int]:
        array_ids = self.array_ids if array_ids is None else self._check_ids(array_ids)
        return self.meta.complete_shards(array_ids)
