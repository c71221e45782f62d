"""The store: planning, whole-shard writes, reading, reuse, interop with tensorstore/webdataset/tar, verify."""
from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.store_cli import caches_main, verify_main
from stages.store import (CacheStore, Fingerprint, KeyNotInStore, StoreReader, decode_key, find_store, list_caches,
                          verify_store)

FEATURE = "U-L1-R1-B0-Cross-Q@t50"
CAPTION = "U-L1-R1-B0-Cross-Q@t50:caption"
SHAPE = (16, 32)  # (T, C)
KEYS = [f"coco/train2017/{i:012d}.jpg" for i in range(9)] + ["vg/VG 100K/ü.b.png"]
FP = Fingerprint.from_fields({"weights": {"unet": "a" * 64}, "resolution": 512, "dtypes": {"features": "float16"}})


def shard_data(array_id: str, shard: int, n_rows: int, sample_shape=SHAPE) -> np.ndarray:
    """Deterministic per (array, shard), so any process can recompute what was written. (S, T, C)"""
    seed = int.from_bytes(hashlib.sha256(f"{array_id}/{shard}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal((n_rows, *sample_shape)).astype(np.float16)


def fill(store: CacheStore, array_id: str, *, sample_shape=SHAPE, failed=None, wds=False) -> None:
    store.ensure_array(array_id, sample_shape=sample_shape)
    for plan in store.shards():
        data = shard_data(array_id, plan.index, len(plan.rows), sample_shape)
        mine = {k: why for k, why in (failed or {}).items() if k in plan.keys}
        store.write_shard(plan.index, {array_id: data}, failed=mine)
        if wds:
            store.write_webdataset_shard(plan.index, {array_id: data}, failed=mine)


def expected(store: CacheStore, array_id: str, key: str, sample_shape=SHAPE) -> np.ndarray:
    plan = next(p for p in store.shards() if key in p.keys)
    return shard_data(array_id, plan.index, len(plan.rows), sample_shape)[plan.keys.index(key)]


@pytest.fixture()
def store(tmp_path: Path) -> CacheStore:
    s = CacheStore.open_or_create(tmp_path / "cache", fingerprint=FP, shard_size=4,
                                  attrs={"model_ids": {"unet": "sd21"}})
    s.add_keys(KEYS)
    return s


def test_new_keys_start_at_the_next_shard_boundary_and_old_rows_never_move(store: CacheStore) -> None:
    before = store.shards()
    assert [p.keys for p in before] == [tuple(KEYS[0:4]), tuple(KEYS[4:8]), (KEYS[8], KEYS[9], None, None)]
    assert store.add_keys(KEYS) == []  # idempotent
    assert store.add_keys(KEYS[:3] + ["new/a.jpg", "new/b.jpg"]) == [3]
    after = store.shards()
    assert after[:3] == before and after[3].rows == range(12, 16)
    assert after[3].keys == ("new/a.jpg", "new/b.jpg", None, None)


def test_a_shard_whose_keys_all_failed_is_written_and_verifies(store: CacheStore) -> None:
    last = store.shards()[-1]  # KEYS[8], KEYS[9] and two padding rows: all zeros once both fail
    fill(store, FEATURE, failed={KEYS[8]: "truncated", KEYS[9]: "zero-byte"})
    assert store.missing_shards([FEATURE]) == []
    assert verify_store(store.path) == []
    reader = StoreReader(store.path, expect=FP)
    assert KEYS[8] not in reader.keys and len(reader) == 8
    assert not reader.read_shard(FEATURE, last.index).any()


def test_reader_returns_written_rows_in_request_order(store: CacheStore) -> None:
    fill(store, FEATURE)
    fill(store, "latents", sample_shape=(4, 8, 8))
    reader = StoreReader(store.path, expect=FP)
    assert reader.keys == KEYS and len(reader) == len(KEYS) and reader.fingerprint == FP
    assert reader.array_ids == [FEATURE, "latents"]
    order = [KEYS[9], KEYS[0], KEYS[5], KEYS[4], KEYS[1]]
    out = reader.read(order, [FEATURE, "latents"])
    assert out[FEATURE].shape == (5, *SHAPE) and out["latents"].shape == (5, 4, 8, 8)
    for i, key in enumerate(order):
        np.testing.assert_array_equal(out[FEATURE][i], expected(store, FEATURE, key))
        np.testing.assert_array_equal(out["latents"][i], expected(store, "latents", key, (4, 8, 8)))
    streamed = list(reader.iter_shards([FEATURE]))
    assert [k for keys, _ in streamed for k in keys] == KEYS
    np.testing.assert_array_equal(np.concatenate([a[FEATURE] for _, a in streamed]), reader.read(KEYS)[FEATURE])


def test_compressed_arrays_read_through_zarr_equal_what_was_written(store: CacheStore) -> None:
    for compression in ("zstd", "blosc"):
        array_id = f"{FEATURE}-{compression}"
        store.ensure_array(array_id, sample_shape=SHAPE, compression=compression)
        for plan in store.shards():
            store.write_shard(plan.index, {array_id: shard_data(array_id, plan.index, 4)})
        reader = StoreReader(store.path, expect=FP, array_ids=[array_id])
        assert not reader.infos[array_id].raw
        got = reader.read([KEYS[6], KEYS[1]])[array_id]
        np.testing.assert_array_equal(got, np.stack([expected(store, array_id, k) for k in (KEYS[6], KEYS[1])]))
    assert verify_store(store.path) == []


def test_missing_keys_get_errors_that_say_why(store: CacheStore) -> None:
    store.ensure_array(FEATURE, sample_shape=SHAPE)
    store.write_shard(0, {FEATURE: shard_data(FEATURE, 0, 4)}, failed={KEYS[2]: "cannot decode image"})
    reader = StoreReader(store.path, expect=FP)
    assert reader.keys == [KEYS[0], KEYS[1], KEYS[3]]
    with pytest.raises(KeyNotInStore, match="never planned"):
        reader.row_of("nope.jpg")
    with pytest.raises(KeyNotInStore, match="failed: .*cannot decode image"):
        reader.read([KEYS[2]])
    with pytest.raises(KeyNotInStore, match="shard 1, which is not complete"):
        reader.read([KEYS[5]])
    assert not reader.read_shard(FEATURE, 0)[2].any()  # failed rows are stored as zeros
    assert store.missing_shards([FEATURE]) == [1, 2]


def test_same_fingerprint_reuses_the_store_and_skips_done_shards(store: CacheStore, tmp_path: Path) -> None:
    fill(store, FEATURE)
    again = CacheStore.open_or_create(tmp_path / "cache", fingerprint=FP)
    assert again.path == store.path == find_store(tmp_path / "cache", FP)
    assert again.add_keys(KEYS) == [] and again.missing_shards([FEATURE]) == []
    assert again.missing_shards([FEATURE, CAPTION]) == [0, 1, 2]
    assert StoreReader.open(tmp_path / "cache", FP).keys == KEYS


def test_an_existing_array_is_never_recreated_with_another_shape(store: CacheStore) -> None:
    store.ensure_array(FEATURE, sample_shape=SHAPE)
    with pytest.raises(ValueError, match="sample shape"):
        store.ensure_array(FEATURE, sample_shape=(16, 64))


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_adding_an_array_leaves_existing_arrays_byte_identical(store: CacheStore) -> None:
    fill(store, FEATURE)
    before = _file_bytes(store.path / "zarr" / FEATURE) | _file_bytes(store.path / "done" / FEATURE)
    fill(store, CAPTION)
    after = _file_bytes(store.path / "zarr" / FEATURE) | _file_bytes(store.path / "done" / FEATURE)
    assert after == before
    assert StoreReader(store.path, expect=FP).array_ids == [FEATURE, CAPTION] and verify_store(store.path) == []


def test_tensorstore_zarr3_reads_every_array_equal_to_our_reader(store: CacheStore) -> None:
    ts = pytest.importorskip("tensorstore")
    fill(store, CAPTION)
    fill(store, "latents", sample_shape=(4, 8, 8))
    reader = StoreReader(store.path, expect=FP)
    for array_id in reader.array_ids:
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(store.path / "zarr" / array_id)}}
        data = ts.open(spec, open=True, read=True).result().read().result()
        rows = [reader.row_of(k) for k in reader.keys]
        np.testing.assert_array_equal(data[rows], reader.read(reader.keys)[array_id])
        for plan in store.shards():
            np.testing.assert_array_equal(data[plan.rows.start:plan.rows.stop], reader.read_shard(array_id, plan.index))


def test_stock_webdataset_and_tarfile_read_our_tars(store: CacheStore) -> None:
    wds = pytest.importorskip("webdataset")
    fill(store, FEATURE, failed={KEYS[5]: "boom"}, wds=True)
    reader = StoreReader(store.path, expect=FP)
    tars = sorted(str(p) for p in (store.path / "wds").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode())
    assert [decode_key(s["__key__"]) for s in samples] == reader.keys == [k for k in KEYS if k != KEYS[5]]
    want = reader.read(reader.keys)[FEATURE]
    field = f"{FEATURE}.npy".lower()  # webdataset lower-cases field names by default
    for i, sample in enumerate(samples):
        assert sample[field].dtype == np.float16
        np.testing.assert_array_equal(sample[field], want[i])
        assert sample["json"]["key"] == reader.keys[i] and sample["json"]["row"] == reader.row_of(reader.keys[i])
    with tarfile.open(tars[2]) as tar:
        names = tar.getnames()
        stems = ("coco%2Ftrain2017%2F000000000008%2Ejpg", "vg%2FVG%20100K%2F%C3%BC%2Eb%2Epng")
        assert names == [f"{s}.{ext}" for s in stems for ext in (f"{FEATURE}.npy", "json")]
        meta = json.load(tar.extractfile(names[-1]))
        assert meta["key"] == KEYS[9]
    assert verify_store(store.path) == []


def test_verify_detects_a_flipped_byte_a_missing_shard_and_a_nan(store: CacheStore, tmp_path: Path) -> None:
    fill(store, FEATURE)
    assert verify_store(store.path) == [] and verify_main([str(store.path)]) == 0
    shard0 = store.path / "zarr" / FEATURE / "c" / "0" / "0" / "0"
    blob = bytearray(shard0.read_bytes())
    blob[100] ^= 0x01
    shard0.write_bytes(bytes(blob))
    (store.path / "zarr" / FEATURE / "c" / "1" / "0" / "0").unlink()
    nan = shard_data(FEATURE, 2, 4)
    nan[1, 3, 7] = np.nan
    store.write_shard(2, {FEATURE: nan})
    problems = verify_store(store.path)
    assert len(problems) == 3, problems
    assert "shard 0: checksum mismatch" in problems[0]
    assert "shard 1: shard file" in problems[1] and "missing" in problems[1]
    assert "shard 2: 1 NaN/Inf values" in problems[2]
    assert verify_main([str(store.path)]) == 1


def test_verify_reports_incomplete_shards_unless_allowed(store: CacheStore) -> None:
    store.ensure_array(FEATURE, sample_shape=SHAPE)
    store.write_shard(1, {FEATURE: shard_data(FEATURE, 1, 4)})
    assert [p for p in verify_store(store.path)] == [f"array {FEATURE!r} shard {i}: not complete" for i in (0, 2)]
    assert verify_store(store.path, require_complete=False) == []


def test_caches_lists_stores_with_done_and_planned_counts(store: CacheStore, tmp_path: Path, capsys) -> None:
    fill(store, FEATURE, failed={KEYS[0]: "x"})
    (info,) = list_caches(tmp_path / "cache")
    assert (info.fingerprint, info.n_planned, info.n_done, info.timesteps) == (FP.short, 10, {FEATURE: 9}, (50,))
    assert info.model_ids == {"unet": "sd21"} and info.bytes_on_disk > 0
    assert caches_main([str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert FP.short in out and "9 / 10 done" in out
