"""One shard's files, written durably: a zarr shard file and its completion record, a webdataset tar and
its digest record. The caller (`CacheStore`) holds the shard's lock (`stages.store.locks`).

A completion record is removed before its shard file is rewritten and written only once that file is in
place (whole: one atomic write, `stages.store.location`), so readers, who trust records only, never see
a shard half written. A tar and its digest
record are staged aside and renamed into place, so a failed write leaves the old ones as they were.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

from stages.image_files import ImageStamp
from stages.store.identity import row_tags, values_crc32c
from stages.store.layout import (ShardPlan, file_sha256, publish, remove_durably, shard_chunk_key, stage_json,
                                 write_bytes_atomic, write_json_atomic)
from stages.store.meta import StoreDamaged, StoreMeta
from stages.store.reader import StoreReader
from stages.store.records import CompletionRecord, TarRecord
from stages.store.webdataset_shards import stage_tar_shard

__all__ = ["row_identity", "encode_shard", "write_zarr_shard", "write_tar_shard"]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def row_identity(meta: StoreMeta, plan: ShardPlan, array_id: str, values: np.ndarray) -> tuple[int, ...]:
    """The identity digest of each row of shard `plan` of `array_id` holding `values` (`stages.store.identity`)."""
    info = meta.infos[array_id]
    tags = row_tags(fingerprint=meta.fingerprint.full, array_id=array_id, dtype=info.dtype,
                    sample_shape=info.sample_shape, rows=plan.rows, keys=plan.keys)
    return tuple((values_crc32c(values) ^ tags).tolist())


def encode_shard(array: zarr.Array, values: np.ndarray) -> bytes:
    """The bytes of a shard file of `array` holding `values` (a whole shard), as zarr encodes them: written
    through zarr into memory, so the store receives them in one atomic write and their sha256 needs no
    read-back. A shard's bytes do not depend on its position in the array."""
    documents: dict[str, Any] = {}
    meta = array.metadata.update_shape(values.shape)
    documents.update(meta.to_buffer_dict(default_buffer_prototype()))
    one = zarr.open_array(MemoryStore(store_dict=documents), mode="r+").with_config({"write_empty_chunks": True})
    one[...] = values
    return documents[shard_chunk_key(0, values.ndim - 1)].to_bytes()


def write_zarr_shard(meta: StoreMeta, plan: ShardPlan, array_id: str, array: zarr.Array, values: np.ndarray, *,
                     failed: dict[str, str], images: dict[str, ImageStamp], decode_limits: dict[str, int]) -> None:
    """Write `values` (already in the stored dtype) as shard `plan` of `array` in one atomic write (a
    rename, or one PUT on an object store), then its completion record."""
    paths, info = meta.paths, meta.infos[array_id]
    record = paths.record(array_id, plan.index)
    shard_file = paths.shard_file(array_id, plan.index, values.ndim - 1)
    remove_durably(record)  # a rewrite makes the shard invisible until it is done again
    between = [shard_file.parents[i] for i in range(values.ndim - 1)]  # c/<shard>/0...
    links = [d for d in between if d.is_symlink()]
    if links:
        raise StoreDamaged(f"{links[0]} is a symbolic link; a store holds no links (the shard would be "
                           "written outside the cache root): remove it")
    data = encode_shard(array, values)
    write_bytes_atomic(shard_file, data)
    write_json_atomic(record, CompletionRecord(
        array_id=array_id, shard=plan.index, rows=(plan.rows.start, plan.rows.stop),
        chunk_key=shard_file.relative_to(paths.zarr / array_id).as_posix(),
        nbytes=len(data), sha256=hashlib.sha256(data).hexdigest(), dtype=info.dtype.str,
        sample_shape=info.sample_shape, failed=failed,
        n_valid=sum(k is not None and k not in failed for k in plan.keys), written=_now(), images=images,
        identity=row_identity(meta, plan, array_id, values), decode_limits=decode_limits).to_json())


def write_tar_shard(meta: StoreMeta, plan: ShardPlan, arrays: Mapping[str, np.ndarray],
                    failed: dict[str, str]) -> Path:
    """Export shard `plan` as `wds/NNNNNN.tar` (valid keys only) with `arrays` (as the zarr arrays store them:
    a compact array's codes and its scales) and every other array complete for this shard in the store, then
    record its size and sha256 in `wds/NNNNNN.json`; returns the tar path."""
    paths, index = meta.paths, plan.index
    meta = meta.refresh(shards=[index])
    others = [a for a in meta.stored_ids(a for a in meta.array_ids if meta.is_complete(a, index)) if a not in arrays]
    if others:
        reader = StoreReader(paths.root, expect=meta.fingerprint, array_ids=others)
        arrays = {**{a: reader.read_shard(a, index) for a in others}, **arrays}
    tar, record = paths.tar(index), paths.tar_record(index)
    # both files aside first: a write that fails (a full disk) leaves the old tar and its record as they were
    staged = stage_tar_shard(tar, keys=plan.keys, rows=plan.rows, arrays=arrays, failed=failed,
                             store=meta.fingerprint.short)
    try:
        nbytes, digest = file_sha256(staged)
        staged_record = stage_json(record, TarRecord(shard=index, nbytes=nbytes, sha256=digest,
                                                     written=_now()).to_json())
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    publish(staged, tar)  # between the two, verify sees a digest mismatch
    publish(staged_record, record)
    return tar
