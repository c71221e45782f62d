"""Integrity on every read: each sample's crc32c (layout 2), the shard sha256 of layout-1 stores, tar digests."""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import tarfile
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr

from stages.store import CacheStore, Fingerprint, StoreCorruption, StoreReader, verify_store
from tests.stages.store.test_legacy_store import LEGACY, PINNED
from tests.stages.store.test_store import FEATURE, FP, KEYS, SHAPE, expected, fill

SAMPLE_NBYTES = int(np.prod(SHAPE)) * 2


def flip(path: Path, start: int, n: int = 64) -> None:
    blob = bytearray(path.read_bytes())
    blob[start:start + n] = bytes(b ^ 0xFF for b in blob[start:start + n])
    path.write_bytes(bytes(blob))


def shard0(store_path: Path, array_id: str = FEATURE) -> Path:
    return store_path / "zarr" / array_id / "c" / "0" / "0" / "0"


@pytest.fixture()
def store(tmp_path: Path) -> CacheStore:
    s = CacheStore.open_or_create(tmp_path / "cache", fingerprint=FP, shard_size=4)
    s.add_keys(KEYS)
    return s


def test_every_stored_sample_is_its_bytes_then_their_crc32c_and_reads_back_bit_identical(store: CacheStore) -> None:
    fill(store, FEATURE)
    reader = StoreReader(store.path, expect=FP)
    info = reader.infos[FEATURE]
    assert info.raw and info.checksummed
    blob = shard0(store.path).read_bytes()
    for i in range(4):
        chunk = blob[i * (SAMPLE_NBYTES + 4):(i + 1) * (SAMPLE_NBYTES + 4)]
        assert chunk[:SAMPLE_NBYTES] == expected(store, FEATURE, KEYS[i]).tobytes()
        assert int.from_bytes(chunk[SAMPLE_NBYTES:], "little") == google_crc32c.value(chunk[:SAMPLE_NBYTES])
    order = list(np.random.default_rng(0).permutation(KEYS))
    got = reader.read(order)[FEATURE]
    want = np.stack([expected(store, FEATURE, k) for k in order])
    assert got.view(np.uint16).tobytes() == want.view(np.uint16).tobytes()


def test_shards_longer_than_one_preadv_call_read_back_bit_identical(tmp_path: Path) -> None:
    fp = Fingerprint.from_fields({"long": "shard"})
    store = CacheStore.open_or_create(tmp_path, fingerprint=fp, shard_size=1100)  # > IOV_MAX / 2 chunks
    keys = [f"k{i}" for i in range(1100)]
    store.add_keys(keys)
    store.ensure_array("a", sample_shape=(3,))
    data = np.random.default_rng(1).standard_normal((1100, 3)).astype(np.float16)
    store.write_shard(0, {"a": data})
    reader = StoreReader(store.path, expect=fp)
    assert reader.read(keys)["a"].tobytes() == data.tobytes()


def test_a_flipped_sample_fails_the_read_naming_store_array_shard_key_and_the_repair(store: CacheStore) -> None:
    fill(store, FEATURE)
    reader = StoreReader(store.path, expect=FP)
    flip(shard0(store.path), 2 * (SAMPLE_NBYTES + 4) + 100)  # inside sample 2 of shard 0
    with pytest.raises(StoreCorruption) as exc:
        reader.read(KEYS[:4])
    message = str(exc.value)
    for part in (str(store.path), repr(FEATURE), "shard 0", repr(KEYS[2]), "crc32c", "--repair", "just extract"):
        assert part in message, (part, message)
    assert repr(KEYS[1]) not in message  # only the damaged sample is named
    with pytest.raises(StoreCorruption):
        reader.read([KEYS[3], KEYS[2]])  # out of row order: the temporary-buffer path
    with pytest.raises(StoreCorruption):
        list(reader.iter_shards())
    np.testing.assert_array_equal(reader.read([KEYS[1]])[FEATURE][0], expected(store, FEATURE, KEYS[1]))


def test_a_flipped_shard_index_fails_the_read(store: CacheStore) -> None:
    fill(store, FEATURE)
    path = shard0(store.path)
    flip(path, path.stat().st_size - 20, 8)
    with pytest.raises(StoreCorruption, match="shard index fails its crc32c"):
        StoreReader(store.path, expect=FP).read([KEYS[0]])


def test_a_flipped_sample_of_a_compressed_array_fails_the_read_naming_its_key(store: CacheStore) -> None:
    store.ensure_array(FEATURE, sample_shape=SHAPE, compression="zstd")
    fill(store, FEATURE)
    reader = StoreReader(store.path, expect=FP)
    assert reader.infos[FEATURE].checksummed and not reader.infos[FEATURE].raw
    array = zarr.open_group(str(store.path / "zarr"), mode="r")[FEATURE]
    # the shard index (offset, nbytes) of inner chunk 1 sits 16 bytes into the 68-byte index at the end
    index = np.frombuffer(shard0(store.path).read_bytes()[-68:-4], "<u8").reshape(4, 2)
    flip(shard0(store.path), int(index[1, 0]) + 10, 8)
    with pytest.raises(ValueError):
        array[1]
    with pytest.raises(StoreCorruption, match=repr(KEYS[1])):
        reader.read(KEYS[:4])


def test_zarr_and_tensorstore_read_the_checksummed_layout_and_detect_a_flipped_sample(store: CacheStore) -> None:
    ts = pytest.importorskip("tensorstore")
    fill(store, FEATURE)
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(store.path / "zarr" / FEATURE)}}
    array = zarr.open_group(str(store.path / "zarr"), mode="r")[FEATURE]
    want = StoreReader(store.path, expect=FP).read_shard(FEATURE, 0)
    np.testing.assert_array_equal(array[0:4], want)
    np.testing.assert_array_equal(ts.open(spec).result()[0:4].read().result(), want)
    flip(shard0(store.path), 2 * (SAMPLE_NBYTES + 4) + 100)
    np.testing.assert_array_equal(array[1], want[1])
    with pytest.raises(ValueError, match="checksum"):
        array[2]
    with pytest.raises(ValueError, match="DATA_LOSS.*Digest mismatch"):
        ts.open(spec).result()[2].read().result()


def test_a_flipped_shard_of_a_legacy_store_fails_the_read_via_its_recorded_sha256(tmp_path: Path) -> None:
    legacy = Path(shutil.copytree(LEGACY / PINNED[:16], tmp_path / PINNED[:16]))
    reader = StoreReader(legacy, expect=None)
    assert not any(info.checksummed for info in reader.infos.values())
    before = reader.read(reader.keys)
    in_worker = pickle.dumps(reader)  # as a DataLoader worker receives it, after the parent's reads
    path = shard0(legacy)
    flip(path, path.stat().st_size // 2)
    with pytest.raises(StoreCorruption) as exc:
        pickle.loads(in_worker).read(reader.keys)
    message = str(exc.value)
    for part in (repr(FEATURE), "shard 0", repr(reader.keys[0]), "sha256", "--repair"):
        assert part in message, (part, message)
    shutil.copyfile(LEGACY / PINNED[:16] / path.relative_to(legacy), path)
    after = pickle.loads(in_worker).read(reader.keys)
    assert all(np.array_equal(before[a], after[a]) for a in before)


def test_tar_digests_are_recorded_per_tar_and_per_member_and_verify_catches_a_flipped_tar(store: CacheStore) -> None:
    fill(store, FEATURE, wds=True)
    tar_path = store.path / "wds" / "000000.tar"
    record = json.loads((store.path / "wds" / "000000.json").read_text())
    assert record["nbytes"] == tar_path.stat().st_size
    assert record["sha256"] == hashlib.sha256(tar_path.read_bytes()).hexdigest()
    with tarfile.open(tar_path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    stems = [name[:-len(".json")] for name in members if name.endswith(".json")]
    assert len(stems) == 4
    for stem in stems:
        meta = json.loads(members[f"{stem}.json"])
        assert meta["sha256"] == {f"{FEATURE}.npy": hashlib.sha256(members[f"{stem}.{FEATURE}.npy"]).hexdigest()}
        np.testing.assert_array_equal(np.load(io.BytesIO(members[f"{stem}.{FEATURE}.npy"])),
                                      expected(store, FEATURE, meta["key"]))
    assert verify_store(store.path) == []
    flip(tar_path, tar_path.stat().st_size // 2)
    problems = verify_store(store.path)
    assert len(problems) == 1 and "000000.tar: checksum mismatch" in problems[0], problems
    (store.path / "wds" / "000001.json").unlink()  # as an export killed between tar and record leaves it
    assert any("000001.tar: no digest record" in p for p in verify_store(store.path))
