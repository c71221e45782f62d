"""`convert_store`: a float16 store's features in a compact dtype (`stages.store.compact`), without recomputing.

The converted store is the one `just extract` with `feature_dtype=<dtype>` fills: its fingerprint is the
source's with `dtypes.features` replaced, so it sits beside the source under the same cache root; its
shards hold the same keys in the same rows (planned shard by shard, as the source's index files say),
with the same failed keys, image stamps and decode limits; features are quantised by the writer from
their float16 values, exactly as extraction quantises its float16 values, and other arrays (latents)
are copied. So its shard files, index files and tars are byte for byte those of a direct extraction
(`tests/stages/store/test_convert.py`). Shards complete in the target are skipped: an interrupted
conversion resumes, a finished one is a no-op. Shards the source has not completed stay planned and
empty (`just extract` with the new dtype computes them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Collection

from stages.errors import UserError
from stages.store.compact import COMPACT, INPUT_DTYPE
from stages.store.fingerprint import Fingerprint, canonical_json
from stages.store.meta import StoreDamaged, StoreMeta
from stages.store.reader import StoreReader
from stages.store.writer import CacheStore

__all__ = ["convert_store"]

_SHARED = ("failed", "images", "decode_limits")  # what one `write_shard` call records for all its arrays


def _target_fingerprint(meta: StoreMeta, feature_dtype: str) -> Fingerprint:
    """The source's fingerprint with `dtypes.features` = `feature_dtype`, after the checks that it converts."""
    root, fields = meta.paths.root, meta.fingerprint.fields
    dtypes = fields.get("dtypes") if isinstance(fields.get("dtypes"), dict) else {}
    if feature_dtype not in COMPACT:
        raise UserError(f"feature_dtype={feature_dtype} is not a compact dtype; converting writes one of "
                        f"{', '.join(COMPACT)}")
    if dtypes.get("features") == feature_dtype:
        raise UserError(f"store {root} already stores its features as {feature_dtype}")
    if dtypes.get("features") != INPUT_DTYPE:
        raise UserError(f"store {root} stores its features as {dtypes.get('features', '(no dtypes field)')}; only "
                        f"{INPUT_DTYPE} stores are converted (compact codes are quantised from float16 values)")
    return Fingerprint.from_fields({**fields, "dtypes": {**dtypes, "features": feature_dtype}})


def convert_store(source: str | Path, feature_dtype: str, *, features: Collection[str]) -> Path:
    """Write the `feature_dtype` store of the float16 store at `source` (module docstring); `features` are
    its arrays to quantise (the others are copied). Returns the converted store's path."""
    meta = StoreMeta.load(source, expect=None)
    fingerprint = _target_fingerprint(meta, feature_dtype)
    if meta.damaged_index or meta.damaged_arrays:
        raise StoreDamaged(f"store {meta.paths.root} is damaged; `just verify {meta.paths.root}` names the fix")
    attrs = {k: v for k, v in meta.attrs.items() if k != "feature_cache"}
    if isinstance(attrs.get("cache_spec"), dict):
        attrs["cache_spec"] = {**attrs["cache_spec"], "feature_dtype": feature_dtype}
    target = CacheStore.open_or_create(meta.paths.root.parent, fingerprint=fingerprint, shard_size=meta.shard_size,
                                       attrs=attrs)
    for plan in meta.plans:  # shard by shard: each keeps its rows (add_keys appends from the next shard)
        target.add_keys([k for k in plan.keys if k is not None])
        planned = target.shards()
        if len(planned) <= plan.index or planned[plan.index] != plan:
            raise UserError(f"store {target.path} already plans shard {plan.index} with other keys than "
                            f"{meta.paths.root} (another run filled it): a conversion cannot give it the source's "
                            f"rows; fill it with `just extract feature_dtype={feature_dtype}`, or remove it to convert")
    for array_id in meta.array_ids:
        info = meta.infos[array_id]
        target.ensure_array(array_id, sample_shape=info.sample_shape,
                            dtype=feature_dtype if array_id in features else info.stored_dtype)
    reader, done = StoreReader(meta.paths.root, expect=meta.fingerprint), target.refresh()
    for shard in range(len(meta.plans)):
        groups: dict[str, list[str]] = {}  # arrays whose records say the same (failures, stamps): one write
        for array_id in (a for a in meta.array_ids if meta.is_complete(a, shard) and not done.is_complete(a, shard)):
            record = meta.record(array_id, shard).to_json()
            groups.setdefault(canonical_json([record[f] for f in _SHARED]), []).append(array_id)
        for array_ids in groups.values():
            record = meta.record(array_ids[0], shard)
            arrays = {a: reader.read_shard(a, shard) for a in array_ids}
            target.write_shard(shard, arrays, record.failed, export=arrays if shard in meta.tars else None,
                               images=record.images, decode_limits=record.decode_limits)
    return target.path
