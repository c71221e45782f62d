"""Compact feature dtypes (`stages.store.compact`): the e4m3fn codec against `ml_dtypes`, the documented error
bound on the embedded model's activations, every read and `verify` checking codes and scales, and the
outside readers of docs/store.md ("Compact feature dtypes")."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from stages.cache_spec import LATENTS
from stages.store import CacheStore, Fingerprint, StoreCorruption, StoreReader, verify_store
from stages.store.compact import COMPACT, scale_id
from tests.stages.store.test_integrity import flip, shard0

# docs/store.md: the relative error ||x' - x|| / ||x|| of an array is below these on the embedded model
REL_ERROR = {"int8": 0.01, "float8_e4m3fn": 0.04}


def test_e4m3fn_codes_and_their_values_are_those_of_ml_dtypes() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    codec = COMPACT["float8_e4m3fn"]
    grid = np.arange(1 << 16, dtype=np.uint16).view(np.float16)  # every float16 as a token's value
    grid = grid[np.isfinite(grid)].reshape(-1, 2)  # tokens of two: each pair scaled by its own absmax
    codes, scale = codec.quantize(grid)
    scaled = scale[:, 0] > 0  # (the others: codes 0, test_a_token_of_zeros_...)
    q = np.clip(grid[scaled].astype(np.float32) / scale[scaled].astype(np.float32), -448, 448)
    np.testing.assert_array_equal(codes[scaled], q.astype(ml_dtypes.float8_e4m3fn).view(np.uint8))
    every = np.arange(256, dtype=np.uint8)[(np.arange(256) & 0x7F) != 0x7F]  # all but the NaNs (never written)
    for scale in (1.0, 2.0 ** -24, 146.0):  # 1, the smallest float16 scale, the largest a float16 token can have
        np.testing.assert_array_equal(codec.dequantize(every, np.float16([scale])),
                                      every.view(ml_dtypes.float8_e4m3fn).astype(np.float32) * np.float32(scale))


def test_a_token_of_zeros_has_scale_zero_and_reads_back_as_zeros() -> None:
    x = np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float16)
    x[1, 2] = 0
    for codec in COMPACT.values():
        codes, scale = codec.quantize(x)
        assert scale.shape == (3, 5, 1) and scale[1, 2, 0] == 0 and not codes[1, 2].any()
        assert np.all(codec.dequantize(codes, scale)[1, 2] == 0) and np.all(scale[scale != 0] > 0)


def test_round_trip_error_on_the_embedded_models_activations_is_within_the_documented_bound(train_store) -> None:
    reader = StoreReader(train_store.path, expect=None)
    features = [a for a in reader.array_ids if a != LATENTS]
    for array_id, x in reader.read(reader.keys, features).items():  # float16, as a float16 store holds them
        x32 = x.astype(np.float32)
        absmax = np.abs(x32).max(axis=-1, keepdims=True)
        for name, codec in COMPACT.items():
            codes, scale = codec.quantize(x)
            back, s = codec.dequantize(codes, scale), scale.astype(np.float32)
            # per value: half a code step (int8), or 2**-4 relative / 2**-10 scales below e4m3fn's normal range,
            # plus what rounding the scale to float16 moves the token's largest value
            step = s / 2 if name == "int8" else 2.0 ** -4 * np.abs(x32) + 2.0 ** -10 * s
            bound = (step + codec.qmax * np.abs(s - absmax / codec.qmax)) * (1 + 2.0 ** -20)
            assert np.all(np.abs(back - x32) <= bound), (array_id, name)
            assert np.linalg.norm(back - x32) / np.linalg.norm(x32) < REL_ERROR[name], (array_id, name)


@pytest.mark.parametrize("part", ["codes", "scales"])
def test_every_read_and_verify_find_a_flipped_byte_in_the_codes_and_in_the_scales(part, train_store_int8,
                                                                                    tmp_path) -> None:
    store = Path(shutil.copytree(train_store_int8.path, tmp_path / train_store_int8.path.name))
    array = "U-L1-R1-B0-Cross-Q@t50"
    damaged = array if part == "codes" else scale_id(array)
    reader = StoreReader(store, expect=None)
    assert reader.infos[array].compact is COMPACT["int8"] and verify_store(store) == []
    flip(shard0(store, damaged), 3, n=1)
    assert any(f"array {damaged!r} shard 0" in m for m in verify_store(store))
    with pytest.raises(StoreCorruption, match=f"array '{damaged}' shard 0"):
        StoreReader(store, expect=None).read(reader.keys[:1], [array])


def test_zarr_and_tensorstore_read_codes_and_scales_as_the_docs_say(tmp_path) -> None:
    """docs/store.md, "Compact feature dtypes": the values are `codes.astype(float32) * scale`, the codes of
    float8_e4m3fn being its bytes (zarr uint8)."""
    ts = pytest.importorskip("tensorstore")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    fp = Fingerprint.from_fields({"compact": "docs"})
    store = CacheStore.open_or_create(tmp_path, fingerprint=fp, shard_size=4)
    keys = [f"k{i}" for i in range(6)]
    store.add_keys(keys)
    data = np.random.default_rng(1).standard_normal((8, 16, 32)).astype(np.float16) * 3
    for dtype in COMPACT:
        store.ensure_array(dtype, sample_shape=(16, 32), dtype=dtype)
    for plan in store.shards():
        store.write_shard(plan.index, {d: data[plan.rows.start:plan.rows.stop] for d in COMPACT})
    served = StoreReader(store.path, expect=fp).read(keys)
    group = zarr.open_group(store.path / "zarr", mode="r")
    for array in COMPACT:  # the docs' lines, for each dtype
        fp8 = group[array].attrs["feature_cache"]["spec"]["dtype"] == "float8_e4m3fn"

        def values(codes, scale):
            return (codes.view(ml_dtypes.float8_e4m3fn) if fp8 else codes).astype(np.float32) * scale

        def read(a):
            return ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{store.path}/zarr/{a}"}}
                           ).result()[:6].read().result()

        assert group[array].dtype == np.dtype(COMPACT[array].storage)
        np.testing.assert_array_equal(values(group[array][:6], group[f"{array}.scale"][:6]), served[array])
        np.testing.assert_array_equal(values(read(array), read(f"{array}.scale")), served[array])
