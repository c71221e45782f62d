"""webdataset export of one shard: a plain tar readable by `webdataset.WebDataset(...).decode()`.

Members, in row order, per valid key (not padding, not failed):
`<encode_key(key)>.<array_id>.npy` (one per array, in sorted array-id order, `np.save` format) and
`<encode_key(key)>.json` (sorted keys)
(`{"key", "row", "shard", "store", "sha256": {"<array_id>.npy": hex digest of that member's bytes}}`,
so one sample can be checked on its own; the writer records the whole tar's digest). webdataset
lower-cases field names when reading, so array ids must stay distinct once lower-cased. Written to a
hidden temp name and fsynced (`stage_tar_shard`); the caller renames it into place (with its digest
record, `stages.store.shard_files`), so a `NNNNNN.tar` that exists is complete and a failed write changes
nothing.
`tar_shard_size` is the size of that tar from its keys and the arrays' `.npy` sizes alone (the dry run's).
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from stages.store.keys import check_array_id, encode_key
from stages.store.layout import staged_file

__all__ = ["stage_tar_shard", "tar_shard_size", "npy_size"]


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644  # fixed mtime: same content, same bytes
    return info


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    tar.addfile(_info(name, len(payload)), io.BytesIO(payload))


def _npy_bytes(sample: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(sample), allow_pickle=False)
    return buf.getvalue()


def _sample_json(key: str, *, row: int, shard: int, store: str, digests: Mapping[str, str]) -> bytes:
    meta = {"key": key, "row": row, "shard": shard, "store": store, "sha256": digests}
    return json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")


def npy_size(sample_shape: Sequence[int], dtype: str) -> int:
    """Bytes of one sample's `.npy` member (header and data)."""
    return len(_npy_bytes(np.zeros(tuple(sample_shape), dtype)))


def _member_size(name: str, size: int) -> int:
    """A member as `tarfile` writes it: its header blocks (a PAX header first for a long or non-ASCII
    name) and its data padded to whole blocks."""
    header = _info(name, size).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "strict")  # as `TarFile` writes
    return len(header) + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def tar_shard_size(keys: Sequence[str | None], *, rows: range, shard: int, npy_sizes: Mapping[str, int],
                   store: str) -> int:
    """Bytes of the tar `stage_tar_shard` writes for a shard whose valid keys are `keys` (None: padding or
    failed), with one `.npy` member of `npy_sizes[array_id]` bytes per array (`npy_size`)."""
    digests = {f"{a}.npy": "0" * 64 for a in npy_sizes}  # hex sha256 digests: their length is fixed
    total = 0
    for row, key in zip(rows, keys):
        if key is not None:
            stem = encode_key(key)
            total += sum(_member_size(f"{stem}.{a}.npy", size) for a, size in npy_sizes.items())
            total += _member_size(f"{stem}.json", len(_sample_json(key, row=row, shard=shard, store=store,
                                                                     digests=digests)))
    end = total + 2 * tarfile.BLOCKSIZE  # two zero blocks close the archive, padded to a whole record
    return -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def stage_tar_shard(path: Path, *, keys: Sequence[str | None], rows: range,
                    arrays: Mapping[str, np.ndarray], failed: Mapping[str, str], store: str) -> Path:
    """Write the tar for one shard to a hidden temp sibling of `path` and return it (removed again when
    writing fails); `arrays[id]` is `(len(keys), *sample_shape)` in row order."""
    if len({a.lower() for a in arrays}) != len(arrays):
        raise ValueError(f"array ids {sorted(arrays)} collide once lower-cased, as webdataset reads field names")
    for array_id, data in arrays.items():
        check_array_id(array_id)
        if len(data) != len(keys):
            raise ValueError(f"array {array_id!r}: {len(data)} rows for a shard of {len(keys)}")
    shard = int(path.stem)
    with staged_file(path) as (fh, tmp):
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for i, key in enumerate(keys):
                if key is None or key in failed:
                    continue
                stem, digests = encode_key(key), {}
                for array_id in sorted(arrays):  # canonical: a tar does not depend on how it was computed
                    payload = _npy_bytes(arrays[array_id][i])
                    digests[f"{array_id}.npy"] = hashlib.sha256(payload).hexdigest()
                    _add(tar, f"{stem}.{array_id}.npy", payload)
                _add(tar, f"{stem}.json", _sample_json(key, row=rows[i], shard=shard, store=store, digests=digests))
    return tmp
