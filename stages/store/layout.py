"""Where things live inside one store directory, durable small-file writes, and the raw shard parser
(the JSON files are parsed by `stages.store.meta`), and `file_sha256`.

    <cache_root>/<fingerprint.short>/
        fingerprint.json           canonical fingerprint JSON (the exact bytes hashed)
        zarr/                      zarr v3 group; one array per array id, [rows, *sample_shape]
        index/NNNNNN.json          the keys of shard NNNNNN, one per row (null = padding row)
        done/<array_id>/NNNNNN.json  completion record of (array, shard), written last
        wds/NNNNNN.tar             optional webdataset export of shard NNNNNN
        wds/NNNNNN.json            its digest record (size and sha256 of the tar), written last
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

import google_crc32c
import numpy as np

from stages.store.location import clear_stale_temps, fsync_path, location
from stages.store.objects import ObjectPath, as_location

__all__ = ["ShardPlan", "new_shard_plans", "StorePaths", "remove_durably", "clear_stale_temps", "stage_bytes",
           "stage_json", "staged_file", "publish", "write_bytes_atomic", "write_json_atomic", "write_index", "read_json", "fsync_path",
           "shard_chunk_key", "read_shard_index", "read_raw_rows", "empty_aligned", "file_sha256", "ChunkCorruption",
           "MISSING"]

MISSING = np.uint64(2**64 - 1)  # zarr's shard-index marker for an inner chunk that was never written
_IOV_MAX = os.sysconf("SC_IOV_MAX")  # buffers one preadv call takes
_CALL_BYTES = 1 << 20  # bytes per preadv call, so that they are still in the CPU cache for their crc32c
_BLOCK = 1 << 24
StorePath = Path | ObjectPath


class ChunkCorruption(OSError):
    """Bytes of a shard file that fail their crc32c: `rows`, the positions of the failing inner chunks
    in the shard, or None when the shard index itself fails. The reader turns it into a user error."""

    def __init__(self, rows: list[int] | None) -> None:
        super().__init__(f"crc32c mismatch in {'the shard index' if rows is None else f'inner chunks {rows}'}")
        self.rows = rows


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """Rows `rows` of every array form shard `index`; `keys[i]` is row `rows[i]` (None = padding)."""

    index: int
    rows: range
    keys: tuple[str | None, ...]


def new_shard_plans(plans: Sequence[ShardPlan], keys: Sequence[str], *, shard_size: int) -> list[ShardPlan]:
    """The shards `CacheStore.add_keys` appends for the `keys` that `plans` do not hold: from the next shard
    boundary, in order, `shard_size` keys each, the last padded with None (completed shards never change)."""
    known = {k for plan in plans for k in plan.keys if k is not None}
    new = [k for k in dict.fromkeys(keys) if k not in known]
    out = []
    for offset in range(0, len(new), shard_size):
        index, chunk = len(plans) + offset // shard_size, new[offset:offset + shard_size]
        out.append(ShardPlan(index=index, rows=range(index * shard_size, (index + 1) * shard_size),
                             keys=(*chunk, *[None] * (shard_size - len(chunk)))))
    return out


class StorePaths:
    """Path arithmetic for one store root."""

    def __init__(self, root: str | Path | ObjectPath) -> None:
        self.root = as_location(root)
        self.fingerprint = self.root / "fingerprint.json"
        self.zarr = self.root / "zarr"
        self.index = self.root / "index"
        self.done = self.root / "done"
        self.wds = self.root / "wds"
        self.sources = self.root / "sources"
        self.lock = self.root / ".lock"

    def index_file(self, shard: int) -> Path:
        return self.index / f"{shard:06d}.json"

    def record(self, array_id: str, shard: int) -> Path:
        return self.done / array_id / f"{shard:06d}.json"

    def source(self, source_id: str) -> Path:
        return self.sources / f"{source_id}.json"

    def tar(self, shard: int) -> Path:
        return self.wds / f"{shard:06d}.tar"

    def tar_record(self, shard: int) -> Path:
        return self.wds / f"{shard:06d}.json"

    def shard_file(self, array_id: str, shard: int, sample_ndim: int) -> Path:
        return self.zarr / array_id / shard_chunk_key(shard, sample_ndim)


def shard_chunk_key(shard: int, sample_ndim: int) -> str:
    """zarr v3 default chunk-key encoding with '/' for shard `shard` of an `[N, *sample]` array."""
    return "/".join(["c", str(shard)] + ["0"] * sample_ndim)


def remove_durably(path: StorePath) -> None:
    """Remove `path` if it exists, durably (`Location.remove`)."""
    location(path).remove(path)


@contextlib.contextmanager
def staged_file(path: StorePath) -> Iterator[tuple[BinaryIO, Path]]:
    """(file, its path): a local temp file to write what becomes `path`, fsynced when the block ends; removed
    again when writing fails (a full disk). `publish(tmp, path)` puts it in place: the first half of an
    atomic write, for callers publishing several files."""
    tmp = location(path).staging(path)
    try:
        with tmp.open("wb") as fh:
            yield fh, tmp
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish(staged: Path, path: StorePath) -> None:
    """Move a file staged by `staged_file` into place (atomic: readers see the old `path` or the new)."""
    location(path).publish(staged, path)


def stage_bytes(path: StorePath, data: bytes) -> Path:
    """`data` in a local temp file for `path`, fsynced (`staged_file`)."""
    with staged_file(path) as (fh, tmp):
        fh.write(data)
    return tmp


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")


def stage_json(path: Path, value: Any) -> Path:
    """`stage_bytes` of `value` as JSON (sorted keys, UTF-8)."""
    return stage_bytes(path, _json_bytes(value))


def write_bytes_atomic(path: StorePath, data: bytes) -> None:
    """Readers see the old file, the new one, or none (`Location.put_atomic`)."""
    location(path).put_atomic(path, data)


def write_json_atomic(path: StorePath, value: Any) -> None:
    """`write_bytes_atomic` of `value` as JSON (sorted keys, UTF-8)."""
    write_bytes_atomic(path, _json_bytes(value))


def write_index(paths: StorePaths, shard: int, keys: Sequence[str | None], *, shard_size: int,
                new: bool = False) -> bool:
    """Write the index file of shard `shard`: the key of each of its rows (None: padding). `new`: only if it
    does not exist yet (a conditional write: planning never replaces another planner's index); whether
    it was written."""
    path, value = paths.index_file(shard), {"shard": shard, "first_row": shard * shard_size, "keys": list(keys)}
    if new:
        return location(path).put_new(path, _json_bytes(value))
    write_json_atomic(path, value)
    return True


def read_json(path: StorePath) -> Any:
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def file_sha256(path: StorePath) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in blocks."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def read_shard_index(fd: int, n_chunks: int) -> np.ndarray:
    """The `(offset, nbytes)` table at the end of an uncompressed-index shard file: `(n_chunks, 2)`
    little-endian uint64 followed by the 4-byte crc32c of the table (checked: `ChunkCorruption`)."""
    size = os.fstat(fd).st_size
    table_bytes = n_chunks * 16
    if size < table_bytes + 4:
        raise OSError(f"shard file too small for {n_chunks} chunks ({size} bytes)")
    raw = os.pread(fd, table_bytes + 4, size - table_bytes - 4)
    if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
        raise ChunkCorruption(None)
    return np.frombuffer(raw[:-4], dtype="<u8").reshape(n_chunks, 2)


def _preadv_all(fd: int, views: list[memoryview], offset: int) -> None:
    """Fill `views` (in order) from the bytes at `offset`, retrying short reads."""
    while views:
        n = os.preadv(fd, views, offset)
        if n <= 0:
            raise OSError(f"unexpected end of shard file at byte {offset}")
        offset += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views = views[1:]
        if views and n:
            views[0] = views[0][n:]


def empty_aligned(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """`np.empty` starting on a 64-byte boundary. On this project's machine the kernel copies page-aligned
    file data (layout-1 shards, `np.fromfile`) into a buffer that is not 64-byte aligned (numpy's are
    16) about 3x slower than into one that is (docs/benchmarks.md)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def read_raw_rows(path: Path, local_rows: np.ndarray, *, out: np.ndarray, dest: np.ndarray, n_chunks: int,
                  chunk_nbytes: int, checksummed: bool, want_crcs: bool,
                  index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Read inner chunks `local_rows` (ascending) of one uncompressed shard file straight into
    `out[dest[j]]` (`out` is `(n, *sample)`, C-contiguous; no intermediate copy).

    Runs of wanted chunks that lie back to back in the file are read with one `preadv` each, of at most
    `_CALL_BYTES`: a `checksummed` chunk is its values then their crc32c, so the call scatters the values
    into `out` and the checksums into a side buffer. The crc32c of every chunk it read (when `checksummed`
    or `want_crcs`) is computed right after each call, while the bytes are still in the CPU cache; a
    checksummed chunk that fails raises `ChunkCorruption`. Never-written chunks read as zeros (the fill
    value; crc 0). Returns the shard index (for the caller to cache) and each chunk's crc32c, or None.
    """
    samples = out.reshape(len(out), -1).view(np.uint8)  # (n, chunk_nbytes)
    if not samples.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    n, stride = len(local_rows), chunk_nbytes + 4 * checksummed
    stored = np.zeros(n, "<u4") if checksummed else None
    stored_view = None if stored is None else memoryview(stored.view(np.uint8))
    crcs = np.zeros(n, np.uint32) if checksummed or want_crcs else None
    per_call = max(1, min(_CALL_BYTES // max(stride, 1), _IOV_MAX // 2))
    fd = os.open(path, os.O_RDONLY)
    try:
        if index is None:
            index = read_shard_index(fd, n_chunks)
        picked = index[local_rows]
        if np.any((picked[:, 0] != MISSING) & (picked[:, 1] != stride)):
            raise OSError(f"{path}: inner chunks are not {stride} raw bytes (compressed array?)")
        offsets, outputs, j = picked[:, 0].tolist(), dest.tolist(), 0
        while j < n:
            if offsets[j] == int(MISSING):
                samples[outputs[j]] = 0
                j += 1
                continue
            k = j + 1
            while k < n and k - j < per_call and offsets[k] == offsets[j] + (k - j) * stride:
                k += 1
            targets = [samples[d] for d in outputs[j:k]]
            _preadv_all(fd, [memoryview(t) for t in targets] if stored_view is None else [
                view for i, t in enumerate(targets, j) for view in (memoryview(t), stored_view[4 * i:4 * i + 4])],
                offsets[j])
            if crcs is not None:
                crcs[j:k] = [google_crc32c.value(t) for t in targets]
            j = k
    finally:
        os.close(fd)
    if stored is not None:
        bad = np.flatnonzero(crcs != stored)
        if bad.size:
            raise ChunkCorruption(np.asarray(local_rows)[bad].tolist())
    return index, crcs
