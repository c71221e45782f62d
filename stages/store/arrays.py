"""zarr v3 array creation and inspection: codecs, the sealed creation spec, the raw-readable check,
package versions.

Arrays created since store layout 2 end their inner codecs with `crc32c`: every sample carries the
checksum of its encoded bytes, which zarr, tensorstore and `StoreReader` verify on each read. Arrays of
layout 1 (inner codecs without it) still open; the reader checks their shard files' recorded sha256.

Since layout 3 an array's attributes carry its `ArraySpec` (how it was created) sealed with the store's
fingerprint, and its zarr.json must be exactly what `array_document` renders from that spec: an edited
dtype, shape, codec or shard size is found on every open (`sealed_spec`, `document_problem`). Arrays
created before carry no spec; theirs is checked against the completion records, the group's shard size
and the fingerprint's dtypes (`legacy_problem`).

A spec's dtype is the stored dtype as the fingerprint spells it; for a compact dtype (`stages.store.compact`)
zarr's data type is that of its codes (`ArraySpec.data_type`), and its scales are an array of their own.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from importlib import metadata
import platform
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.storage import MemoryStore

from stages.store.compact import Compact, data_type
from stages.store.fingerprint import canonical_json

__all__ = ["COMPRESSIONS", "DEFAULT_COMPRESSION", "ArrayInfo", "ArraySpec", "array_info", "array_document",
           "sealed_spec", "document_problem", "legacy_problem", "package_versions"]

# Measured in benchmarks/bench_store.py (docs/store.md): on float16 activations zstd and
# blosc-bitshuffle save only ~10-15% of the bytes but cost most of the read speed, so none is default.
COMPRESSIONS: dict[str, Callable[[], Any]] = {
    "none": lambda: None,
    "zstd": lambda: ZstdCodec(level=3),
    "blosc": lambda: BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=2),
}
DEFAULT_COMPRESSION = "none"


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """The parameters an array was created with; its zarr.json is a function of them (and its rows)."""

    array_id: str
    sample_shape: tuple[int, ...]
    dtype: str  # as the fingerprint's dtypes spell it: a numpy name ("float16") or a compact dtype ("int8")
    shard_size: int
    compression: str

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"unknown compression {self.compression!r}; choose one of {sorted(COMPRESSIONS)}")

    @property
    def data_type(self) -> str:
        """zarr's data type of the array: the dtype, or the codes' of a compact dtype."""
        return data_type(self.dtype)

    def seal(self, fingerprint: str) -> str:
        """sha256 of the spec with the store's full fingerprint: ties the spec to this store."""
        return hashlib.sha256(canonical_json({"fingerprint": fingerprint, **self.to_json()}).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "sample_shape": list(self.sample_shape)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "ArraySpec":
        return cls(**{**{f.name: value[f.name] for f in dataclasses.fields(cls)},
                      "sample_shape": tuple(value["sample_shape"])})


@dataclasses.dataclass(frozen=True)
class ArrayInfo:
    """What the reader needs to know about one stored array, from its zarr.json."""

    array_id: str
    n_rows: int
    sample_shape: tuple[int, ...]
    dtype: np.dtype
    shard_size: int
    raw: bool  # inner chunks are plain little-endian bytes (+ crc32c) with an uncompressed index at the end
    checksummed: bool  # each inner chunk ends with the crc32c of its bytes (layout 2)
    compact: Compact | None = None  # its codec when it holds compact codes (from its sealed spec)

    @property
    def stored_dtype(self) -> str:
        """The dtype as the fingerprint spells it (`ArraySpec.dtype`)."""
        return self.compact.name if self.compact is not None else self.dtype.name

    @property
    def chunk_nbytes(self) -> int:
        """Bytes of one sample's values (a raw inner chunk holds 4 more when `checksummed`)."""
        return int(np.prod(self.sample_shape, dtype=np.int64)) * self.dtype.itemsize


def array_document(spec: ArraySpec, *, n_rows: int, fingerprint: str, attrs: Mapping[str, Any]) -> bytes:
    """The zarr.json zarr writes for an array made from `spec`: `[n_rows, *sample_shape]`, inner chunk =
    one sample (its bytes, compressed or not, then their crc32c), shard = `shard_size` samples, fill 0,
    `attrs` plus `feature_cache` (array id, compression, the spec and its seal). Written whole, so a
    damaged zarr.json is restored byte for byte; every inner chunk is stored (the writer's
    write_empty_chunks) so a complete shard file always holds them all."""
    compressor = COMPRESSIONS[spec.compression]()
    own = {"array_id": spec.array_id, "compression": spec.compression, "spec": spec.to_json(),
           "spec_sha256": spec.seal(fingerprint)}
    documents: dict[str, Any] = {}
    zarr.create_array(MemoryStore(store_dict=documents), shape=(n_rows, *spec.sample_shape),
                      chunks=(1, *spec.sample_shape), shards=(spec.shard_size, *spec.sample_shape),
                      dtype=spec.data_type,
                      fill_value=0, compressors=[Crc32cCodec()] if compressor is None else [compressor, Crc32cCodec()],
                      attributes={**attrs, "feature_cache": own}, zarr_format=3)
    return documents["zarr.json"].to_bytes()


@functools.lru_cache(maxsize=64)
def _expected(spec: ArraySpec) -> dict[str, Any]:
    """`array_document(spec)` as a dict, without the fields a spec does not fix (rows, attributes)."""
    document = json.loads(array_document(spec, n_rows=spec.shard_size, fingerprint="", attrs={}))
    document.pop("attributes")
    document["shape"] = document["shape"][1:]
    return document


def sealed_spec(meta: Mapping[str, Any], *, fingerprint: str) -> ArraySpec | None:
    """The creation spec in an array's zarr.json (as a dict), None for arrays created before specs were
    recorded; `ValueError` when it is unreadable or fails its seal (edited, or the array was copied from a
    store with another fingerprint)."""
    attributes = meta.get("attributes", {})
    if not isinstance(attributes, Mapping) or not isinstance(attributes.get("feature_cache", {}), Mapping):
        raise ValueError("its attributes are not JSON objects")
    own = attributes.get("feature_cache", {})
    if "spec" not in own:
        return None
    try:
        spec = ArraySpec.from_json(own["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"its creation spec (attributes.feature_cache.spec) is unreadable: {exc!r}") from None
    if own.get("spec_sha256") != spec.seal(fingerprint):
        raise ValueError("its creation spec does not match its seal (edited, or copied from a store with "
                         "another fingerprint)")
    return spec


def document_problem(meta: Mapping[str, Any], spec: ArraySpec) -> str | None:
    """The first field of an array's zarr.json (as a dict) that differs from what `spec` makes, with both
    values, or None. Rows (`shape[0]`, grown with the store) and attributes are not the spec's."""
    actual = {**{k: v for k, v in meta.items() if k != "attributes"}, "shape": list(meta["shape"])[1:]}
    expected = _expected(spec)
    for field in sorted(set(expected) | set(actual)):
        if actual.get(field) != expected.get(field):
            return (f"{field} is {canonical_json(actual.get(field))}, the array was created with "
                    f"{canonical_json(expected.get(field))}")
    return None


def legacy_problem(info: ArrayInfo, *, shard_size: int, recorded: Sequence[tuple[str, tuple[int, ...]]],
                   dtypes: Sequence[str]) -> str | None:
    """For an array created before specs were recorded: why its zarr.json disagrees with the group's shard
    size, the `(dtype, sample_shape)` its completion records were written with, or the fingerprint's
    stored `dtypes` (when the fingerprint has them), or None."""
    if info.shard_size != shard_size:
        return f"its shard holds {info.shard_size} samples, the store's shard_size is {shard_size}"
    for dtype, shape in recorded:
        if np.dtype(dtype) != info.dtype or tuple(shape) != info.sample_shape:
            return (f"it is {info.dtype.name} {list(info.sample_shape)}, its completion records were written as "
                    f"{np.dtype(dtype).name} {list(shape)}")
    if dtypes and info.dtype.name not in dtypes:
        return f"data_type is {info.dtype.name}, the fingerprint's stored dtypes are {sorted(set(dtypes))}"
    return None


def array_info(array_id: str, meta: Mapping[str, Any]) -> ArrayInfo:
    """Parse an array's zarr.json (as a dict) into `ArrayInfo`; `ValueError` if it is not one of ours."""
    try:
        codecs = meta["codecs"]
        if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
            raise ValueError("it is not a sharded array of this store layout")
        conf = codecs[0]["configuration"]
        inner, index_codecs = conf["codecs"], conf.get("index_codecs", [])
        little, crc32c = {"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}
        checksummed = inner[-1] == crc32c
        plain = [little, {"name": "bytes"}]  # zarr writes no endianness for one-byte data types (compact codes)
        raw = (inner[:-1 if checksummed else None] in ([c] for c in plain)
               and conf.get("index_location", "end") == "end" and index_codecs == [little, crc32c])
        shard_size = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        return ArrayInfo(array_id=array_id, n_rows=int(meta["shape"][0]), sample_shape=tuple(meta["shape"][1:]),
                         dtype=dtype, shard_size=shard_size, raw=raw, checksummed=checksummed)
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"it is not a zarr v3 array document ({exc!r})") from None


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the bytes (absent ones are left out)."""
    versions = {"python": platform.python_version()}
    for name in ("zarr", "numpy", "numcodecs", "torch", "diffusers", "transformers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
