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

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np

__all__ = ["ShardPlan", "StorePaths", "remove_durably", "clear_stale_temps", "write_json_atomic", "read_json",
           "fsync_path", "shard_chunk_key", "read_shard_index", "read_raw_rows", "file_sha256", "ChunkCorruption",
           "MISSING"]

MISSING = np.uint64(2**64 - 1)  # zarr's shard-index marker for an inner chunk that was never written
_IOV_MAX = os.sysconf("SC_IOV_MAX")  # buffers one preadv call takes
_BLOCK = 1 << 24


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


class StorePaths:
    """Path arithmetic for one store root."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.fingerprint = self.root / "fingerprint.json"
        self.zarr = self.root / "zarr"
        self.index = self.root / "index"
        self.done = self.root / "done"
        self.wds = self.root / "wds"
        self.lock = self.root / ".lock"

    def index_file(self, shard: int) -> Path:
        return self.index / f"{shard:06d}.json"

    def record(self, array_id: str, shard: int) -> Path:
        return self.done / array_id / f"{shard:06d}.json"

    def tar(self, shard: int) -> Path:
        return self.wds / f"{shard:06d}.tar"

    def tar_record(self, shard: int) -> Path:
        return self.wds / f"{shard:06d}.json"

    def shard_file(self, array_id: str, shard: int, sample_ndim: int) -> Path:
        return self.zarr / array_id / shard_chunk_key(shard, sample_ndim)


def shard_chunk_key(shard: int, sample_ndim: int) -> str:
    """zarr v3 default chunk-key encoding with '/' for shard `shard` of an `[N, *sample]` array."""
    return "/".join(["c", str(shard)] + ["0"] * sample_ndim)


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (directory entries need their own fsync to be durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_durably(path: Path) -> None:
    """Unlink `path` if it exists and make the removal durable (fsync of its directory)."""
    if path.exists():
        path.unlink()
        fsync_path(path.parent)


def clear_stale_temps(path: Path) -> None:
    """Remove `.<name>.<pid>.tmp` siblings of `path` left by a writer killed mid-write. Safe because each
    file has one writer at a time (one per shard; index files under the store lock)."""
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)


def write_json_atomic(path: Path, value: Any) -> None:
    """tmp file + fsync + rename + fsync(dir): readers see the old file, the new one, or none."""
    clear_stale_temps(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(value, fh, sort_keys=True, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def file_sha256(path: Path) -> tuple[int, str]:
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


def _run_views(data: memoryview, crcs: memoryview | None, j: int, k: int, chunk_nbytes: int) -> list[memoryview]:
    """The buffers that receive inner chunks `j..k-1` as they lie back to back in the file: one view of
    the output, or, for checksummed chunks, each chunk's values then its 4 checksum bytes."""
    if crcs is None:
        return [data[j * chunk_nbytes:k * chunk_nbytes]]
    return [view for i in range(j, k)
            for view in (data[i * chunk_nbytes:(i + 1) * chunk_nbytes], crcs[4 * i:4 * i + 4])]


def read_raw_rows(path: Path, local_rows: np.ndarray, *, n_chunks: int, chunk_nbytes: int, checksummed: bool,
                  out: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
    """Read inner chunks `local_rows` of one uncompressed shard file straight into `out` `(n, *sample)`.

    Runs of wanted rows whose chunks lie back to back in the file are read with one `preadv` each
    (a whole shard is a single call, no intermediate copy). A `checksummed` chunk is its values then
    their crc32c: the same call scatters the values into `out` and the checksums into a side buffer,
    and every chunk is then checked (`ChunkCorruption` naming the positions that fail). Never-written
    chunks read as zeros, the fill value. Returns the shard index so callers can cache it.
    """
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    n = len(local_rows)
    samples = out.reshape(n, -1).view(np.uint8)  # (n, chunk_nbytes)
    data = memoryview(samples.reshape(-1))
    crcs = np.zeros(n, "<u4") if checksummed else None
    crc_view = None if crcs is None else memoryview(crcs.view(np.uint8))
    stride = chunk_nbytes + 4 * checksummed
    max_run = _IOV_MAX // 2 if checksummed else n
    fd = os.open(path, os.O_RDONLY)
    try:
        if index is None:
            index = read_shard_index(fd, n_chunks)
        picked = index[np.asarray(local_rows)]
        present = picked[:, 0] != MISSING
        if np.any(present & (picked[:, 1] != stride)):
            raise OSError(f"{path}: inner chunks are not {stride} raw bytes (compressed array?)")
        j = 0
        while j < n:
            if not present[j]:
                out[j] = 0
                j += 1
                continue
            k, start = j + 1, int(picked[j, 0])
            while k < n and k - j < max_run and present[k] and int(picked[k, 0]) == start + (k - j) * stride:
                k += 1
            _preadv_all(fd, _run_views(data, crc_view, j, k, chunk_nbytes), start)
            j = k
    finally:
        os.close(fd)
    if crcs is not None:
        bad = [i for i, crc in enumerate(crcs.tolist()) if present[i] and google_crc32c.value(samples[i]) != crc]
        if bad:
            raise ChunkCorruption(np.asarray(local_rows)[bad].tolist())
    return index
