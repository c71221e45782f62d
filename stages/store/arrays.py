"""zarr v3 array creation and inspection: codecs, the raw-readable check, package versions.

Arrays created since store layout 2 end their inner codecs with `crc32c`: every sample carries the
checksum of its encoded bytes, which zarr, tensorstore and `StoreReader` verify on each read. Arrays of
layout 1 (inner codecs without it) still open; the reader checks their shard files' recorded sha256.
"""
from __future__ import annotations

import dataclasses
from importlib import metadata
import platform
from typing import Any, Callable

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

__all__ = ["COMPRESSIONS", "DEFAULT_COMPRESSION", "ArrayInfo", "array_info", "create_array",
           "package_versions"]

# Measured in benchmarks/bench_store.py (docs/store.md): on float16 activations zstd and
# blosc-bitshuffle save only ~10-15% of the bytes but cost most of the read speed, so none is default.
COMPRESSIONS: dict[str, Callable[[], Any]] = {
    "none": lambda: None,
    "zstd": lambda: ZstdCodec(level=3),
    "blosc": lambda: BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=2),
}
DEFAULT_COMPRESSION = "none"


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

    @property
    def chunk_nbytes(self) -> int:
        """Bytes of one sample's values (a raw inner chunk holds 4 more when `checksummed`)."""
        return int(np.prod(self.sample_shape, dtype=np.int64)) * self.dtype.itemsize


def create_array(group: zarr.Group, array_id: str, *, n_rows: int, sample_shape: tuple[int, ...],
                 dtype: str, shard_size: int, compression: str, attrs: dict[str, Any]) -> zarr.Array:
    """`[n_rows, *sample_shape]`, inner chunk = one sample (its bytes, compressed or not, then their
    crc32c), shard = `shard_size` samples, fill 0. Every inner chunk is stored (write_empty_chunks) so a
    complete shard file always holds them all."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; choose one of {sorted(COMPRESSIONS)}")
    compressor = COMPRESSIONS[compression]()
    return group.create_array(
        array_id, shape=(n_rows, *sample_shape), chunks=(1, *sample_shape),
        shards=(shard_size, *sample_shape), dtype=dtype, fill_value=0,
        compressors=[Crc32cCodec()] if compressor is None else [compressor, Crc32cCodec()],
        attributes=attrs, config={"write_empty_chunks": True})


def array_info(array_id: str, meta: dict[str, Any]) -> ArrayInfo:
    """Parse an array's zarr.json (as a dict) into `ArrayInfo`."""
    codecs = meta["codecs"]
    if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
        raise ValueError(f"array {array_id!r} is not a sharded array of this store layout")
    conf = codecs[0]["configuration"]
    inner, index_codecs = conf["codecs"], conf.get("index_codecs", [])
    little, crc32c = {"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}
    checksummed = inner[-1] == crc32c
    raw = (inner in ([little], [little, crc32c]) and conf.get("index_location", "end") == "end"
           and index_codecs == [little, crc32c])
    shard_size = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    dtype = np.dtype(meta["data_type"]).newbyteorder("<")
    return ArrayInfo(array_id=array_id, n_rows=meta["shape"][0], sample_shape=tuple(meta["shape"][1:]),
                     dtype=dtype, shard_size=shard_size, raw=raw, checksummed=checksummed)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the bytes (absent ones are left out)."""
    versions = {"python": platform.python_version()}
    for name in ("zarr", "numpy", "numcodecs", "torch", "diffusers", "transformers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
