"""`StoreReader`: the trainer's read-only view of a store (no Ray, no pipeline imports).

Only shards with a completion record, of arrays whose metadata is intact, are visible. Uncompressed
arrays (the default) are read by parsing the zarr v3 shard index and `preadv`-ing the inner chunks
straight into the output; compressed arrays go through zarr. Either way the bytes are the zarr array's.

Every sample served is checked to be intact and to be *the* sample: its crc32c (layout 2: the inner
chunks end with one) and its identity digest from the completion record (store, array, dtype, shape,
row, key: `stages.store.identity`). Records written before identity digests are checked the old way:
the whole shard file against the record's sha256, once per process, before any of its samples is
served. A mismatch raises `StoreCorruption`; an array whose metadata was edited, `StoreDamaged`.

A compact array (`stages.store.compact`) is read as its codes and its scale array, each checked as any
array is, and served as float32 (`codes * scale`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import zarr

from stages.errors import UserError
from stages.image_files import ImageStamp
from stages.store.arrays import ArrayInfo
from stages.store.compact import scale_id
from stages.store.fingerprint import Fingerprint
from stages.store.identity import row_tags, values_crc32c
from stages.store.layout import ChunkCorruption, StorePaths, empty_aligned, file_sha256, read_raw_rows
from stages.store.location import location
from stages.store.meta import StoreMeta, StoreNotFound, is_store
from stages.store.objects import ObjectPath, as_location
from stages.store.shard_cache import CorruptDownload, ShardCache, files_for
from stages.store.records import CompletionRecord
from stages.store.registry import describe_missing

__all__ = ["StoreReader", "KeyNotInStore", "NOT_EXTRACTED", "INCOMPLETE", "FAILED", "StoreNotFound",
           "StoreCorruption"]


NOT_EXTRACTED, INCOMPLETE, FAILED = "not extracted", "extraction incomplete", "failed to extract"


class KeyNotInStore(UserError, KeyError):
    """A key the store cannot serve; `cause` says whether it was never planned (`NOT_EXTRACTED`), failed
    (`FAILED`, the message gives the reason), or is in a shard that is not complete yet (`INCOMPLETE`)."""

    def __init__(self, message: str, *, cause: str = "") -> None:  # a default: rebuilt from the message alone
        super().__init__(message)
        self.cause = cause

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0])


class StoreCorruption(UserError, OSError):
    """Stored bytes that are not what was written there: a sample failing its crc32c or its identity
    digest, a shard file of another size than recorded, unreadable, or failing its recorded sha256. The
    message names store, array, shard and keys, and the repair; `finding` is what was found, with the keys."""

    def __init__(self, message: str, finding: str = "") -> None:
        super().__init__(message)
        self.finding = finding


class StoreReader:
    """Read-only, picklable (for DataLoader workers) view of the completed part of a store.

    `expect` is the fingerprint the caller needs (`FingerprintMismatch` otherwise; None only to
    inspect, as `verify` does). `array_ids` selects the arrays this reader serves (default: all; one
    whose metadata cannot be trusted is refused with `StoreDamaged`); `keys` are those whose shard is
    complete for every selected array and that failed in none, in row order. The metadata is read once,
    at construction (`meta`).
    """

    def __init__(self, path: str | Path | ObjectPath, *, expect: Fingerprint | None,
                 array_ids: Sequence[str] | None = None, cache: ShardCache | None = None) -> None:
        self.meta = StoreMeta.load(path, expect=expect)
        self.files = files_for(self.meta.paths.root, cache)  # where shard files are read (a local copy)
        every = [*self.meta.array_ids, *sorted(self.meta.damaged_arrays)]
        self.array_ids: list[str] = self._check_ids(every if array_ids is None else array_ids)
        self._row = {k: plan.rows[i] for plan in self.meta.plans for i, k in enumerate(plan.keys) if k is not None}
        self.keys: list[str] = [k for shard in self.meta.complete_shards(self.array_ids)
                                for k in self.meta.valid_keys(self.meta.plans[shard], self.array_ids)]
        self._servable = {k: self._row[k] for k in self.keys}  # rows `read` serves without asking `row_of`
        self._shards: dict[tuple[str, int], _Shard] = {}  # what this process checked of each shard it read
        self._zarr: dict[str, zarr.Array] = {}

    @classmethod
    def open(cls, cache_root: str | Path | ObjectPath, fingerprint: Fingerprint, *,
             array_ids: Sequence[str] | None = None, cache: ShardCache | None = None) -> "StoreReader":
        """The store for `fingerprint` under `cache_root`; a clear error (naming the differing fields
        of the stores that do exist) when there is none."""
        path = as_location(cache_root) / fingerprint.short
        if not is_store(path):
            raise StoreNotFound(describe_missing(cache_root, fingerprint))
        return cls(path, expect=fingerprint, array_ids=array_ids, cache=cache)

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
        self.meta.require(array_ids)
        unknown = [a for a in array_ids if a not in self.meta.infos]
        if unknown:
            raise KeyError(f"arrays {unknown} are not in store {self.paths.root}; it has {self.meta.array_ids}")
        return list(array_ids)

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_zarr"] = {}  # zarr handles are reopened lazily in each worker
        state["_shards"] = {}  # each process checks the files it reads itself
        return state

    def sample_shape(self, array_id: str) -> tuple[int, ...]:
        return self.infos[array_id].sample_shape

    def row_of(self, key: str, array_ids: Sequence[str] | None = None) -> int:
        """The row of `key`, or `KeyNotInStore` saying why it cannot be read."""
        array_ids = self.array_ids if array_ids is None else self._check_ids(array_ids)
        row = self._row.get(key)
        if row is None:
            raise KeyNotInStore(f"key {key!r} was never planned in store {self.paths.root} "
                                f"({len(self._row)} keys planned)", cause=NOT_EXTRACTED)
        shard = row // self.meta.shard_size
        waiting = [a for a in array_ids if not self.meta.is_complete(a, shard)]
        if waiting:
            raise KeyNotInStore(f"key {key!r} is in shard {shard}, which is not complete for {waiting}",
                                cause=INCOMPLETE)
        reason = self.meta.failed(shard, array_ids).get(key)
        if reason is not None:
            raise KeyNotInStore(f"key {key!r} failed: {reason}", cause=FAILED)
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
            group = location(self.paths.zarr).zarr_group(self.paths.zarr, "r")
            self._zarr[array_id] = group[array_id]
        return self._zarr[array_id]

    def _corruption(self, array_id: str, shard: int, local: Sequence[int], what: str) -> StoreCorruption:
        path = self.paths.shard_file(array_id, shard, len(self.infos[array_id].sample_shape))
        keys = self.meta.plans[shard].keys
        named = [keys[r] if keys[r] is not None else f"row {r} (padding)" for r in local]
        more = f" and {len(named) - 5} more" if len(named) > 5 else ""
        root, finding = self.paths.root, f"{what}; keys {', '.join(map(repr, named[:5]))}{more}"
        return StoreCorruption(
            f"store {root} is corrupt: array {array_id!r} shard {shard} ({path}): {finding}. Withdraw the damaged "
            f"shards with `just verify {root} --repair`, then recompute them with `just extract` (same config as "
            "before).", finding)

    def _shard(self, array_id: str, shard: int, local: np.ndarray, path: Path | ObjectPath) -> "_Shard":
        """What this process checks a shard against, set up when it first reads it: the file must have its
        recorded size; rows are then checked against the record's identity digests, or, for records
        written before those, the whole file against the record's sha256 (here, before any of its samples
        is served, and again whenever the file's size or mtime changes). `StoreCorruption` otherwise."""
        found = self._shards.get((array_id, shard))
        if found is not None and found.identity is not None:  # every row read is checked: nothing to redo
            return found
        info, record = self.infos[array_id], self.meta.record(array_id, shard)
        try:
            stat = path.stat()
            if found is not None and found.stat == (stat.st_size, stat.st_mtime_ns):
                return found
            digest = None if record.identity or stat.st_size != record.nbytes else file_sha256(path)[1]
        except FileNotFoundError:  # its completion record says it was written (zarr would read fill values)
            raise self._corruption(array_id, shard, local.tolist(), "the shard file is missing") from None
        except OSError as exc:
            raise self._corruption(array_id, shard, local.tolist(), f"the shard file cannot be read ({exc})") from None
        if stat.st_size != record.nbytes:
            raise self._corruption(array_id, shard, local.tolist(), f"the shard file has {stat.st_size} bytes, its "
                                   f"completion record says {record.nbytes}")
        if digest is not None and digest != record.sha256:
            raise self._corruption(array_id, shard, local.tolist(), f"the shard file's sha256 is {digest[:12]}…, "
                                   f"its completion record says {record.sha256[:12]}…")
        plan, tags, identity = self.meta.plans[shard], None, None
        if record.identity:
            tags = row_tags(fingerprint=self.fingerprint.full, array_id=array_id, dtype=info.dtype,
                            sample_shape=info.sample_shape, rows=plan.rows, keys=plan.keys)
            identity = np.asarray(record.identity, dtype=np.uint32)
        found = _Shard(path=path, stat=(stat.st_size, stat.st_mtime_ns), tags=tags, identity=identity)
        self._shards[(array_id, shard)] = found
        return found

    def _read_zarr_rows(self, array_id: str, shard: int, local: np.ndarray, dest: np.ndarray,
                        out: np.ndarray) -> None:
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
        out[dest] = span[local - local[0]]

    def _read_rows(self, array_id: str, shard: int, local: np.ndarray, dest: np.ndarray, out: np.ndarray) -> None:
        """Rows `local` (ascending, within shard `shard`) of one array into `out[dest]`, checked: each
        sample's crc32c (layout 2) and identity digest, or the file's sha256 (see `_shard`). Uncompressed
        shards are read from a local file (`self.files`: an object store's through the local cache),
        compressed ones through zarr."""
        info, record = self.infos[array_id], self.meta.record(array_id, shard)
        remote = self.paths.shard_file(array_id, shard, len(info.sample_shape))
        try:
            with self.files.pinned(remote, record) if info.raw else contextlib.nullcontext(remote) as path:
                self._read_checked(array_id, shard, local, dest, out, path)
        except StoreCorruption:
            raise
        except CorruptDownload as exc:
            raise self._corruption(array_id, shard, local.tolist(), f"its download failed its check ({exc})") from None
        except OSError as exc:
            raise self._corruption(array_id, shard, local.tolist(), f"the shard file cannot be read ({exc})") from None

    def _read_checked(self, array_id: str, shard: int, local: np.ndarray, dest: np.ndarray, out: np.ndarray,
                      path: Path | ObjectPath) -> None:
        info, checked = self.infos[array_id], self._shard(array_id, shard, local, path)
        try:
            if info.raw:
                checked.index, crcs = read_raw_rows(
                    checked.path, local, out=out, dest=dest, n_chunks=info.shard_size, chunk_nbytes=info.chunk_nbytes,
                    checksummed=info.checksummed, want_crcs=checked.identity is not None, index=checked.index)
            else:
                self._read_zarr_rows(array_id, shard, local, dest, out)
                crcs = None if checked.identity is None else values_crc32c(out[dest])
        except ChunkCorruption as exc:
            what = ("its shard index fails its crc32c" if exc.rows is None
                    else f"{len(exc.rows)} sample(s) fail their crc32c")
            raise self._corruption(array_id, shard, local.tolist() if exc.rows is None else exc.rows, what) from None
        except OSError as exc:
            raise self._corruption(array_id, shard, local.tolist(), f"the shard file cannot be read ({exc})") from None
        if checked.identity is not None:
            wrong = local[(crcs ^ checked.tags[local]) != checked.identity[local]]
            if wrong.size:
                raise self._corruption(array_id, shard, wrong.tolist(), (
                    f"{wrong.size} sample(s) are not the ones their completion record names (identity digest "
                    "mismatch: moved, swapped or copied from another array or store)"))

    def _rows(self, keys: Sequence[str], array_ids: list[str]) -> np.ndarray:
        """The rows of `keys`; `KeyNotInStore` (from `row_of`) for one that cannot be served."""
        if array_ids == self.array_ids and all(k in self._servable for k in keys):
            return np.fromiter(map(self._servable.__getitem__, keys), dtype=np.int64, count=len(keys))
        return np.fromiter((self.row_of(k, array_ids) for k in keys), dtype=np.int64, count=len(keys))

    def read(self, keys: Sequence[str], array_ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """`{array_id: (len(keys), *sample_shape)}` in the order of `keys`, read shard by shard straight
        into the output; a compact array's codes and scales are read so, and served as float32
        (`codes * scale`, `stages.store.compact`)."""
        array_ids = self.array_ids if array_ids is None else self._check_ids(array_ids)
        rows = self._rows(keys, array_ids)
        order = np.argsort(rows, kind="stable")  # output positions in row order
        shard_size = self.meta.shard_size
        shards = rows[order] // shard_size
        stored = self.meta.stored_ids(array_ids)
        out = {a: empty_aligned((len(keys), *self.infos[a].sample_shape), self.infos[a].dtype) for a in stored}
        for dest in np.split(order, np.flatnonzero(np.diff(shards)) + 1) if len(order) else []:
            shard = int(rows[dest[0]]) // shard_size
            local = rows[dest] - shard * shard_size
            for a in stored:
                self._read_rows(a, shard, local, dest, out[a])
        compact = {a: self.infos[a].compact for a in array_ids if self.infos[a].compact is not None}
        return {a: compact[a].dequantize(out[a], out[scale_id(a)]) if a in compact else out[a] for a in array_ids}

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
        """Every row of one shard of a zarr array as stored (padding and failed rows included, as zeros; a
        compact array's codes, its scales being array `scale_id(array_id)`): `(shard_size, *sample)`."""
        info = self.infos[array_id]
        out = empty_aligned((self.meta.shard_size, *info.sample_shape), info.dtype)
        rows = np.arange(self.meta.shard_size)
        self._read_rows(array_id, shard, rows, rows, out)
        return out

    def _shard_files(self, array_ids: Sequence[str] | None) -> list[tuple[Path | ObjectPath, CompletionRecord]]:
        """(shard file, completion record) of each complete shard of the uncompressed `array_ids`, in shard order."""
        array_ids = self.array_ids if array_ids is None else self._check_ids(array_ids)
        raw = [a for a in array_ids if self.infos[a].raw]
        return [(self.paths.shard_file(a, shard, len(self.infos[a].sample_shape)), self.meta.record(a, shard))
                for shard in self.meta.complete_shards(array_ids) for a in raw]

    def prefetch(self, array_ids: Sequence[str] | None = None) -> None:
        """Start downloading the shards of an object store into the local cache ahead of the reads
        (`ShardCache.prefetch`); nothing to do for a POSIX store."""
        self.files.prefetch(self._shard_files(array_ids))

    def download_bytes(self, array_ids: Sequence[str] | None = None) -> int:
        """Bytes reading every complete shard would download now, given the local cache (0 for a POSIX store)."""
        return self.files.missing_bytes([record for _, record in self._shard_files(array_ids)])

    def complete_shards(self, array_ids: Sequence[str] | None = None) -> list[int]:
        array_ids = self.array_ids if array_ids is None else self._check_ids(array_ids)
        return self.meta.complete_shards(array_ids)


@dataclass
class _Shard:
    """One shard file as this process has checked it: its shard index once read (raw arrays), and the
    identity tags and digests of its rows (None for records written before identity digests)."""

    path: Path
    stat: tuple[int, int]  # (size, mtime_ns) when checked
    tags: np.ndarray | None
    identity: np.ndarray | None
    index: np.ndarray | None = None
