"""`StoreMeta`: every way of opening a store checks the fingerprint the caller expects, and the writer's
view follows what other handles (other processes) write."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest

from stages.store import (CacheStore, Fingerprint, FingerprintMismatch, StoreMeta, StoreNotFound, StoreReader,
                          find_store)
from tests.stages.store.test_store import FEATURE, SHAPE, shard_data

FP = Fingerprint.from_fields({"weights": {"unet": "a" * 64}, "noise": {"seed": 0, "trials": 1}})
OTHER = Fingerprint.from_fields({**FP.fields, "noise": {"seed": 1, "trials": 1}})
KEYS = [f"img/{i}.jpg" for i in range(6)]

# Each entry point, given (the store's directory, its cache root); all expect OTHER.
OPENERS: dict[str, Callable[[Path, Path], object]] = {
    "StoreMeta.load": lambda path, root: StoreMeta.load(path, expect=OTHER),
    "StoreReader": lambda path, root: StoreReader(path, expect=OTHER),
    "CacheStore.open": lambda path, root: CacheStore.open(path, fingerprint=OTHER),
    # a store under the name of OTHER (copied or renamed there by hand) must not be taken for it
    "StoreReader.open": lambda path, root: StoreReader.open(root, OTHER),
    "CacheStore.open_or_create": lambda path, root: CacheStore.open_or_create(root, fingerprint=OTHER),
    "find_store": lambda path, root: find_store(root, OTHER),
}


@pytest.fixture()
def store(tmp_path: Path) -> CacheStore:
    s = CacheStore.open_or_create(tmp_path / "cache", fingerprint=FP, shard_size=4)
    s.add_keys(KEYS)
    s.ensure_array(FEATURE, sample_shape=SHAPE)
    return s


@pytest.mark.parametrize("opener", OPENERS, ids=list(OPENERS))
def test_every_entry_point_refuses_another_fingerprint_naming_the_field(store: CacheStore, opener: str) -> None:
    root = store.path.parent
    shutil.copytree(store.path, root / OTHER.short)
    with pytest.raises(FingerprintMismatch) as err:
        OPENERS[opener](store.path, root)
    assert "noise.seed: 1 != 0" in str(err.value)


def test_opening_a_cache_root_without_the_store_names_how_the_others_differ(store: CacheStore) -> None:
    with pytest.raises(StoreNotFound, match=r"noise\.seed: 1 != 0"):
        StoreReader.open(store.path.parent, OTHER)
    assert find_store(store.path.parent, OTHER) is None


def test_a_directory_that_is_not_a_store_is_a_clear_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a feature store"):
        StoreMeta.load(tmp_path, expect=None)


def test_the_writer_sees_shards_and_plans_written_by_another_handle_and_a_reader_keeps_its_snapshot(
        store: CacheStore) -> None:
    reader = StoreReader(store.path, expect=FP)
    other = CacheStore.open(store.path, fingerprint=FP)  # as an extraction actor in another process
    assert store.missing_shards([FEATURE]) == [0, 1] and not store.is_complete(FEATURE, 0)
    other.write_shard(0, {FEATURE: shard_data(FEATURE, 0, 4)}, failed={KEYS[1]: "truncated"})
    other.add_keys(["img/new.jpg"])
    assert store.is_complete(FEATURE, 0) and store.failed(0, [FEATURE]) == {KEYS[1]: "truncated"}
    assert store.missing_shards([FEATURE]) == [1, 2] and len(store.shards()) == 3
    meta = store.refresh()
    assert meta.valid_keys(meta.plans[0], [FEATURE]) == [KEYS[0], *KEYS[2:4]] and meta.n_valid(FEATURE) == 3
    assert meta.record(FEATURE, 0).n_valid == 3 and meta.complete_shards([FEATURE]) == [0]
    assert reader.keys == [] and reader.meta.plans == store.shards()[:2]  # the reader's snapshot is unchanged
    store.meta.paths.record(FEATURE, 0).unlink()  # what a rewrite of shard 0 does first
    assert not store.is_complete(FEATURE, 0) and store.missing_shards([FEATURE]) == [0, 1, 2]
