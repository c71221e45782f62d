"""Stores on an object store: a real S3-compatible server (moto's server mode) on loopback, started here.

Every test talks S3 over HTTP through obstore, as a run against AWS does; nothing is mocked in the client."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import obstore
import pytest
import yaml

from benchmarks.loopback_s3 import loopback_s3
from stages.store import CacheStore, StoreReader, verify_store
from stages.store import leases
from stages.store.objects import ObjectPath
from stages.store.reader import StoreCorruption
from stages.store.shard_cache import ShardCache
from tests.stages.store.test_store import FEATURE, FP, shard_data

REPO = Path(__file__).resolve().parents[3]
SHAPE = (16, 64)
SHARD = 4


@pytest.fixture(scope="module")
def s3():
    """`s3://bucket` on a moto server on a free loopback port; the environment obstore reads points at it."""
    with loopback_s3() as bucket:
        yield bucket


def _store(root: str, n_shards: int) -> CacheStore:
    store = CacheStore.open_or_create(root, fingerprint=FP, shard_size=SHARD)
    store.add_keys([f"img/{i:04d}.jpg" for i in range(SHARD * n_shards)])
    store.ensure_array(FEATURE, sample_shape=SHAPE)
    return store


def _write(store: CacheStore, shards) -> None:
    for shard in shards:
        store.write_shard(shard, {FEATURE: shard_data(FEATURE, shard, SHARD, SHAPE)})


def write_shards(root: str, shards: list[int]) -> None:
    """Child-process entry (the killed writer)."""
    _write(CacheStore.open(ObjectPath.from_url(root), fingerprint=FP), shards)


def test_writer_killed_mid_shard_leaves_no_visible_shard_and_its_lease_is_taken_over(s3, monkeypatch, tmp_path):
    store = _store(f"{s3}/killed", 3)
    _write(store, [0])
    # SIGKILL after the shard object is PUT, before its completion record: the shard is invisible
    trap = ("import os, signal; import stages.store.shard_files as w; real = w.write_json_atomic\n"
            "def die_before_record(p, value):\n"
            "    if p.name == '000001.json': os.kill(os.getpid(), signal.SIGKILL)\n"
            "    real(p, value)\n"
            "w.write_json_atomic = die_before_record\n"
            f"from tests.stages.store.test_object_store import write_shards; write_shards({str(store.path)!r}, [1])")
    child = subprocess.run([sys.executable, "-c", trap], env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert child.returncode == -signal.SIGKILL
    assert (store.path / "zarr" / FEATURE / "c" / "1" / "0" / "0").is_file()  # its bytes landed, unrecorded
    assert (store.path / "locks" / "000001.lock").is_file()  # and its lease is left behind
    assert StoreReader(store.path, expect=FP).complete_shards() == [0]
    assert verify_store(store.path, require_complete=False) == []
    monkeypatch.setattr(leases, "LEASE_TTL", 1.0)  # the dead holder's lease expires after a second
    _write(store, [1, 2])
    assert verify_store(store.path) == [] and not (store.path / "locks" / "000001.lock").is_file()
    reader = StoreReader(store.path, expect=FP, cache=ShardCache(tmp_path))
    np.testing.assert_array_equal(reader.read_shard(FEATURE, 1), shard_data(FEATURE, 1, SHARD, SHAPE))


def test_two_writers_at_once_plan_and_write_without_losing_anything(s3, tmp_path):
    root = f"{s3}/racing"
    errors: list[BaseException] = []

    def job(keys: list[str]) -> None:  # one extraction's writer side: plan its keys, write its shards
        try:
            store = CacheStore.open_or_create(root, fingerprint=FP, shard_size=SHARD)
            store.add_keys(keys)
            store.ensure_array(FEATURE, sample_shape=SHAPE)
            for plan in store.shards():
                if set(keys) & set(plan.keys):
                    _write(store, [plan.index])
        except BaseException as exc:  # noqa: BLE001 (re-raised in the test thread)
            errors.append(exc)

    keys = [f"img/{i:04d}.jpg" for i in range(SHARD * 4)]
    threads = [threading.Thread(target=job, args=(keys[:10],)), threading.Thread(target=job, args=(keys[6:],))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store = CacheStore.open(ObjectPath.from_url(root) / FP.short, fingerprint=FP)
    assert verify_store(store.path) == [] and store.missing_shards([FEATURE]) == []
    reader = StoreReader(store.path, expect=FP, cache=ShardCache(tmp_path))
    assert sorted(reader.keys) == keys  # every key planned once, every shard complete
    for plan in store.shards():
        expected = shard_data(FEATURE, plan.index, SHARD, SHAPE)
        expected[[i for i, k in enumerate(plan.keys) if k is None]] = 0  # padding rows
        np.testing.assert_array_equal(reader.read_shard(FEATURE, plan.index), expected)


def test_a_flipped_byte_in_an_object_is_caught_on_download(s3, tmp_path):
    store = _store(f"{s3}/flipped", 1)
    _write(store, [0])
    shard = store.path / "zarr" / FEATURE / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01
    obstore.put(shard.store, shard.key, bytes(data))
    reader = StoreReader(store.path, expect=FP, cache=ShardCache(tmp_path))
    with pytest.raises(StoreCorruption, match="download failed its check"):
        reader.read(["img/0000.jpg"])
    assert not list(tmp_path.glob("??/[0-9a-f]*[0-9a-f]"))  # nothing damaged was kept


def test_a_cache_smaller_than_the_data_still_serves_every_epoch_by_evicting(s3, tmp_path):
    store = _store(f"{s3}/evicting", 3)
    _write(store, [0, 1, 2])
    shard_bytes = store.record(FEATURE, 0).nbytes
    cache = ShardCache(tmp_path, limit=int(1.5 * shard_bytes))  # one shard fits, not two
    reader = StoreReader(store.path, expect=FP, cache=cache)
    assert reader.download_bytes() == 3 * shard_bytes  # the dry run's egress
    for _ in range(2):  # two epochs
        for i, key in enumerate(reader.keys):
            np.testing.assert_array_equal(reader.read([key])[FEATURE][0],
                                          shard_data(FEATURE, i // SHARD, SHARD, SHAPE)[i % SHARD])
    assert cache.evicted >= 4 and cache.downloaded == 6 * shard_bytes
    assert sum(p.stat().st_size for p in tmp_path.glob("??/*") if not p.name.endswith(".lock")) <= cache.limit


def test_extract_to_s3_equals_a_local_extraction_and_trains_from_the_local_cache(s3, train_store, store_builder,
                                                                                  tmp_path):
    from stages.cache_spec import fingerprint_for
    from stages.serving import CachedFeatures, LocatedStore

    config = yaml.safe_load(train_store.extract_yaml.read_text())
    remote_yaml = tmp_path / "extract-s3.yaml"
    remote_yaml.write_text(yaml.safe_dump({**config, "cache_root": f"{s3}/extracted"}))
    remote = store_builder(remote_yaml)
    assert isinstance(remote, ObjectPath) and remote.name == train_store.path.name
    assert verify_store(remote) == []
    local = train_store.path
    for path in sorted(p for p in local.rglob("*") if p.is_file() and p.parts[len(local.parts)] in ("zarr", "index",
                                                                                                      "done")):
        rel = path.relative_to(local).as_posix()
        theirs, ours = (remote / rel).read_bytes(), path.read_bytes()
        if rel.startswith("done/"):  # records hold when they were written
            theirs, ours = ({k: v for k, v in json.loads(b).items() if k != "written"} for b in (theirs, ours))
        elif rel == "zarr/zarr.json":
            theirs, ours = ({**json.loads(b)["attributes"]["feature_cache"], "created": ""} for b in (theirs, ours))
        assert theirs == ours, rel
    # training's feature source over the remote store: prefetched into the local cache, equal to the local store
    fingerprint, cache = fingerprint_for(train_store.spec), ShardCache(tmp_path / "shards")
    served = CachedFeatures([LocatedStore(remote, fingerprint)], array_ids=[FEATURE], cache=cache)
    assert served.readers[0].download_bytes() > 0
    served.readers[0].prefetch()
    cache.wait()
    assert served.readers[0].download_bytes() == 0  # later epochs read the local copies
    keys = sorted(served.readers[0].keys)
    expected = StoreReader(local, expect=fingerprint).read(keys, [FEATURE])[FEATURE]
    np.testing.assert_array_equal(served.read(keys, [FEATURE])[FEATURE], expected)
