"""Compact feature dtypes: `int8` and `float8_e4m3fn` codes with a float16 scale per token.

A feature sample `x` `(T, C)` is stored as codes `(T, C)` and scales `(T, 1)` float16, symmetric absmax
per token: `scale_t = float16(max_c |x_tc| / QMAX)` (127 for int8, 448 for e4m3fn) and `code_tc =
round(x_tc / scale_t)` clipped to `±QMAX` (int8: round half to even; e4m3fn: to the nearest e4m3fn
value, ties to even). A token of zeros (and one whose scale underflows float16) gets scale 0 and codes
0. Reading is `codes.astype(float32) * scale` (exact in float32). `x` is first rounded to float16, so
quantising a float16 store gives the bytes extraction writes (`stages.store.convert`).

zarr 3.1 has no float8 data type: e4m3fn codes are stored as their raw bytes, zarr `uint8`; the array's
creation spec (`attributes.feature_cache.spec.dtype`) names the dtype. The scales are the array
`<array_id>.scale` `[N, T, 1]` float16 beside it (webdataset: the member `<key>.<array_id>.scale.npy`).
Computed in numpy alone (no float8 library): `tests/stages/store/test_compact.py` checks both codecs
against `ml_dtypes`.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

__all__ = ["Compact", "COMPACT", "SCALE_SUFFIX", "scale_id", "is_scale_id", "held_dtype", "data_type",
           "stored_parts", "sample_nbytes", "encode", "served"]

SCALE_SUFFIX = ".scale"
SCALE_DTYPE = "float16"
INPUT_DTYPE = "float16"  # what values are rounded to before they are quantised
_BLOCK = 1 << 16  # values quantised at a time


def _from_e4m3fn(codes: np.ndarray) -> np.ndarray:
    """e4m3fn bytes -> float32 holding their values times 2**-120: the 7 magnitude bits moved into a float32's
    exponent and mantissa, whose exponent bias (127) is 120 above e4m3fn's (7); subnormal codes become float32
    subnormals of the same scale. (The NaN bytes 0x7F and 0xFF, never written, read as ±480.)"""
    wide = codes.astype(np.uint32)
    return (((wide & np.uint32(0x7F)) << np.uint32(20)) | ((wide & np.uint32(0x80)) << np.uint32(24))).view(np.float32)


def _to_e4m3fn(q: np.ndarray) -> np.ndarray:
    """float32 within ±448 -> e4m3fn bytes (uint8), to nearest, ties to even."""
    bits = q.view(np.uint32)
    magnitude = bits & np.uint32(0x7FFFFFFF)
    # from 2**-6 (e4m3fn's smallest normal): the float32 mantissa rounded to 3 bits, the exponent rebiased 127 -> 7
    normal = ((magnitude + np.uint32(0x7FFFF) + ((magnitude >> np.uint32(20)) & np.uint32(1))) >> np.uint32(20)
              ) - np.uint32(120 << 3)
    # below it, multiples of 2**-9: adding 2**14 (whose float32 ulp is 2**-9) rounds to them, ties to even
    subnormal = (np.abs(q) + np.float32(2.0 ** 14)).view(np.uint32) - np.uint32(141 << 23)
    code = np.where(magnitude < np.uint32(121 << 23), subnormal, normal)
    code |= (bits >> np.uint32(24)) & np.uint32(0x80)
    return code.astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Compact:
    """One compact dtype: its name (as `feature_dtype` and the fingerprint spell it), the zarr data type
    of its codes, and the largest code magnitude."""

    name: str
    storage: str
    qmax: float

    def quantize(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(..., C)` values -> codes `(..., C)` in `storage` and scales `(..., 1)` float16."""
        x = np.asarray(values).astype(INPUT_DTYPE, copy=False)
        tokens = x.reshape(-1, x.shape[-1])
        codes, scale = np.empty(tokens.shape, self.storage), np.empty((len(tokens), 1), SCALE_DTYPE)
        step = max(1, _BLOCK // max(1, tokens.shape[1]))
        for start in range(0, len(tokens), step):  # blocks that stay in the CPU cache through every pass
            block = slice(start, start + step)
            codes[block], scale[block] = self._quantize(tokens[block].astype(np.float32))
        return codes.reshape(x.shape), scale.reshape(*x.shape[:-1], 1)

    def _quantize(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 tokens `(n, C)` -> codes and float16 scales `(n, 1)` (the module docstring's rule)."""
        scale = (np.abs(x).max(axis=-1, keepdims=True) / np.float32(self.qmax)).astype(SCALE_DTYPE)
        s32 = scale.astype(np.float32)
        q = x / np.where(s32 > 0, s32, np.float32(np.inf))  # a scale of 0: codes 0
        np.clip(q, -self.qmax, self.qmax, out=q)
        return (np.rint(q).astype(np.int8) if self.storage == "int8" else _to_e4m3fn(q)), scale

    def dequantize(self, codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """codes `(..., C)` and scales `(..., 1)` -> float32 `(..., C)`: each code's value times its scale (exact)."""
        out = np.empty(codes.shape, np.float32)
        rows, into = codes.reshape(-1, codes.shape[-1]), out.reshape(-1, codes.shape[-1])
        scales = scale.reshape(-1, 1).astype(np.float32)
        step = max(1, _BLOCK // max(1, rows.shape[1]))
        for start in range(0, len(rows), step):
            block = slice(start, start + step)
            if self.storage == "int8":
                np.multiply(rows[block], scales[block], out=into[block], dtype=np.float32)
            else:  # a scale is at most 65504 / 448 < 2**8, so scale * 2**120 stays finite
                np.multiply(_from_e4m3fn(rows[block]), scales[block] * np.float32(2.0 ** 120), out=into[block])
        return out


COMPACT: dict[str, Compact] = {
    "int8": Compact(name="int8", storage="int8", qmax=127.0),
    "float8_e4m3fn": Compact(name="float8_e4m3fn", storage="uint8", qmax=448.0),
}


def scale_id(array_id: str) -> str:
    """The id of the scale array of compact array `array_id`."""
    return array_id + SCALE_SUFFIX


def is_scale_id(array_id: str) -> bool:
    return array_id.endswith(SCALE_SUFFIX)


def held_dtype(dtype: str) -> str:
    """The dtype the values of an array stored as `dtype` are held in before the store takes them
    (float16 for a compact dtype: it quantises them; `dtype` itself otherwise)."""
    return INPUT_DTYPE if dtype in COMPACT else dtype


def data_type(dtype: str) -> str:
    """zarr's data type of an array stored as `dtype`: its codes' for a compact dtype, else `dtype`."""
    return COMPACT[dtype].storage if dtype in COMPACT else dtype


def stored_parts(array_id: str, sample_shape: Sequence[int], dtype: str) -> list[tuple[str, tuple[int, ...], str]]:
    """`(array id, sample shape, dtype)` of each zarr array that stores `array_id` as `dtype`: itself, and
    for a compact dtype its scales."""
    shape = tuple(int(s) for s in sample_shape)
    if dtype not in COMPACT:
        return [(array_id, shape, dtype)]
    return [(array_id, shape, dtype), (scale_id(array_id), (*shape[:-1], 1), SCALE_DTYPE)]


def sample_nbytes(sample_shape: Sequence[int], dtype: str) -> int:
    """Bytes of one sample stored as `dtype`, its scales included (zarr's crc32c per chunk not)."""
    return sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(data_type(d)).itemsize
               for _, shape, d in stored_parts("", sample_shape, dtype))


def encode(array_id: str, values: np.ndarray, dtype: str) -> dict[str, np.ndarray]:
    """`{zarr array id: data}` storing `values` as `dtype` (`stored_parts`)."""
    if dtype not in COMPACT:
        return {array_id: np.asarray(values, dtype=dtype)}
    codes, scale = COMPACT[dtype].quantize(values)
    return {array_id: codes, scale_id(array_id): scale}


def served(arrays: Mapping[str, np.ndarray], dtypes: Mapping[str, str]) -> dict[str, np.ndarray]:
    """`arrays` (held in `held_dtype`) as a store of `dtypes[array_id]` serves them: compact ones quantised
    and read back as float32, so that computed values equal stored ones."""
    return {a: COMPACT[dtypes[a]].dequantize(*COMPACT[dtypes[a]].quantize(x)) if dtypes[a] in COMPACT else x
            for a, x in arrays.items()}
