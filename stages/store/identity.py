"""Identity digests: each stored sample proves which sample it is, not only that its bytes are intact.

A crc32c proves bytes, not identity: a shard file moved to another shard, two samples swapped inside a
shard (their crc32c included) or a shard copied from a store with another fingerprint are intact bytes
in the wrong place. So every completion record carries, per row `r` of its shard, the 32-bit digest

    identity[r] = crc32c(values_r) ^ crc32c(f"{fingerprint_sha256}\\n{array_id}\\n{dtype}\\n{shape}\\n{row}\\n{key}")

where `values_r` is the sample's raw little-endian bytes (in an uncompressed layout-2 array exactly the
crc32c stored after them), `dtype` the numpy name (`float16`), `shape` the sample shape joined by `x`
(`256x1280`), `row` the global row number and `key` the sample key (empty for a padding row). A reader
recomputes the right-hand side from the store it opened, the array, the index and the bytes it read: a
sample of another store, array, row or key, or with another dtype or shape, fails with probability
1 - 2**-32. Unkeyed: it finds misplaced data, not forgeries.
"""
from __future__ import annotations

from typing import Sequence

import google_crc32c
import numpy as np

__all__ = ["row_tags", "values_crc32c"]


def row_tags(*, fingerprint: str, array_id: str, dtype: np.dtype, sample_shape: Sequence[int], rows: range,
             keys: Sequence[str | None]) -> np.ndarray:
    """`(len(rows),)` uint32: the crc32c of each row's identity text (the right-hand term above)."""
    prefix = google_crc32c.value(
        f"{fingerprint}\n{array_id}\n{np.dtype(dtype).name}\n{'x'.join(map(str, sample_shape))}\n".encode())
    return np.fromiter((google_crc32c.extend(prefix, f"{row}\n{key or ''}".encode()) for row, key in zip(rows, keys)),
                       dtype=np.uint32, count=len(rows))


def values_crc32c(values: np.ndarray) -> np.ndarray:
    """`(n,)` uint32: the crc32c of each row's little-endian bytes (`values` is `(n, *sample_shape)`)."""
    flat = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).reshape(len(values), -1).view(np.uint8)
    return np.fromiter((google_crc32c.value(row) for row in flat), dtype=np.uint32, count=len(flat))
