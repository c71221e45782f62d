"""Where things live inside one store directory, durable small-file writes, and the raw shard parser
(the JSON files are parsed by `stages.store.meta`).

    <cache_root>/<fingerprint.short>/
        fingerprint.json           canonical fingerprint JSON (the exact bytes hashed)
        zarr/                      zarr v3 group; one array per array id, [rows, *sample_shape]
        index/NNNNNN.json          the keys of shard NNNNNN, one per row (null = padding row)
        done/<array_id>/NNNNNN.json  completion record of (array, shard), written last
        wds/NNNNNN.tar             optional webdataset export of shard NNNNNN
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ShardPlan", "StorePaths", "write_json_atomic", "read_json", "fsync_path", "shard_chunk_key",
           "read_shard_index", "read_raw_rows", "MISSING"]

MISSING = np.uint64(2**64 - 1)  # zarr's shard-index marker for an inner chunk that was never written


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


def write_json_atomic(path: Path, value: Any) -> None:
    """tmp file + fsync + rename + fsync(dir): readers see the old file, the new one, or none."""
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


def read_shard_index(fd: int, n_chunks: int) -> np.ndarray:
    """The `(offset, nbytes)` table at the end of an uncompressed-index shard file: `(n_chunks, 2)`
    little-endian uint64 followed by a 4-byte crc32c (not checked here; `verify` hashes the file)."""
    size = os.fstat(fd).st_size
    table_bytes = n_chunks * 16
    if size < table_bytes + 4:
        raise OSError(f"shard file too small for {n_chunks} chunks ({size} bytes)")
    raw = os.pread(fd, table_bytes, size - table_bytes - 4)
    return np.frombuffer(raw, dtype="<u8").reshape(n_chunks, 2)


def _pread_into(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        n = os.preadv(fd, [view], offset)
        if n <= 0:
            raise OSError(f"unexpected end of shard file at byte {offset}")
        view, offset = view[n:], offset + n


def read_raw_rows(path: Path, local_rows: np.ndarray, *, n_chunks: int, chunk_nbytes: int,
                  out: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
    """Read inner chunks `local_rows` of one uncompressed shard file straight into `out` `(n, *sample)`.

    Runs of wanted rows whose chunks lie back to back in the file are read with one `preadv` each
    (a whole-shard read is a single call, no intermediate copy). Never-written chunks read as zeros,
    the fill value. Returns the shard index so callers can cache it.
    """
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    flat = memoryview(out.reshape(-1).view(np.uint8))
    fd = os.open(path, os.O_RDONLY)
    try:
        if index is None:
            index = read_shard_index(fd, n_chunks)
        picked = index[np.asarray(local_rows)]
        present = picked[:, 0] != MISSING
        if np.any(present & (picked[:, 1] != chunk_nbytes)):
            raise OSError(f"{path}: inner chunks are not {chunk_nbytes} raw bytes (compressed array?)")
        j, n = 0, len(local_rows)
        while j < n:
            if not present[j]:
                out[j] = 0
                j += 1
                continue
            k, start = j + 1, int(picked[j, 0])
            while k < n and present[k] and int(picked[k, 0]) == start + (k - j) * chunk_nbytes:
                k += 1
            _pread_into(fd, flat[j * chunk_nbytes:k * chunk_nbytes], start)
            j = k
    finally:
        os.close(fd)
    return index
