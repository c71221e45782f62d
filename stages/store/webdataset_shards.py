"""webdataset export of one shard: a plain tar readable by `webdataset.WebDataset(...).decode()`.

Members, in row order, per valid key (not padding, not failed):
`<encode_key(key)>.<array_id>.npy` (one per array, in sorted array-id order, `np.save` format) and
`<encode_key(key)>.json` (sorted keys)
(`{"key", "row", "shard", "store", "sha256": {"<array_id>.npy": hex digest of that member's bytes}}`,
so one sample can be checked on its own; the writer records the whole tar's digest). webdataset
lower-cases field names when reading, so array ids must stay distinct once lower-cased. Written to a
hidden temp name and fsynced (`stage_tar_shard`); the caller renames it into place (with its digest
record, `CacheStore`), so a `NNNNNN.tar` that exists is complete and a failed write changes nothing.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from stages.store.keys import check_array_id, encode_key
from stages.store.layout import clear_stale_temps

__all__ = ["stage_tar_shard"]


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o644  # fixed mtime: same content, same bytes
    tar.addfile(info, io.BytesIO(payload))


def _npy_bytes(sample: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(sample), allow_pickle=False)
    return buf.getvalue()


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
    path.parent.mkdir(parents=True, exist_ok=True)
    shard = int(path.stem)
    clear_stale_temps(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for i, key in enumerate(keys):
                    if key is None or key in failed:
                        continue
                    stem, digests = encode_key(key), {}
                    for array_id in sorted(arrays):  # canonical: a tar does not depend on how it was computed
                        payload = _npy_bytes(arrays[array_id][i])
                        digests[f"{array_id}.npy"] = hashlib.sha256(payload).hexdigest()
                        _add(tar, f"{stem}.{array_id}.npy", payload)
                    meta = {"key": key, "row": rows[i], "shard": shard, "store": store, "sha256": digests}
                    _add(tar, f"{stem}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
