"""Damaged metadata is refused, never trusted: edited array metadata (checked against the array's sealed
creation spec), a deleted array directory, unreadable JSON, links inside a store, unreadable shard
files. Each gives one clear line (a `UserError`), and `verify` names it with the fix `repair` acts on."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from stages.errors import UserError
from stages.store import (CacheStore, Fingerprint, StoreCorruption, StoreDamaged, StoreMeta, StoreReader,
                          list_caches, verify_store)
from stages.store.verify import check_store
from tests.stages.store.test_sample_identity import make, shard_file
from tests.stages.store.test_legacy_store import LEGACY, PINNED
from tests.stages.store.test_store import FEATURE, KEYS, SHAPE


@pytest.fixture()
def store(tmp_path: Path) -> CacheStore:
    return make(tmp_path / "cache")


def edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document, indent=2))


def array_json(store: CacheStore) -> Path:
    return store.path / "zarr" / FEATURE / "zarr.json"


EDITS: dict[str, tuple[Callable[[dict], None], str]] = {  # the edit, and the field the refusal names
    "dtype": (lambda d: d.update(data_type="int16"), 'data_type is "int16", the array was created with "float16"'),
    "sample shape": (lambda d: d.update(shape=[d["shape"][0], SHAPE[1], SHAPE[0]]), "shape is [32,16]"),
    "shard size": (lambda d: d["chunk_grid"]["configuration"].update(chunk_shape=[2, *SHAPE]), "chunk_grid is"),
    "codecs": (lambda d: d["codecs"][0]["configuration"]["codecs"].pop(), "codecs is"),
}


@pytest.mark.parametrize("edit", EDITS)
def test_an_edited_array_zarr_json_is_refused_naming_the_field_and_extract_restores_it(
        store: CacheStore, edit: str) -> None:
    before = array_json(store).read_bytes()
    values = StoreReader(store.path, expect=store.fingerprint).read(KEYS)[FEATURE]
    change, named = EDITS[edit]
    edit_json(array_json(store), change)
    with pytest.raises(StoreDamaged) as exc:
        StoreReader(store.path, expect=store.fingerprint)
    for part in (str(store.path), repr(FEATURE), f"zarr/{FEATURE}/zarr.json", named, "just extract"):
        assert part in str(exc.value), (part, str(exc.value))
    with pytest.raises(StoreDamaged):
        store.write_shard(0, {FEATURE: values[:4]})  # never written into as edited
    [problem] = check_store(store.path)
    assert (problem.fix, problem.array_id) == ("extract", FEATURE) and named in problem.message
    assert not store.ensure_array(FEATURE, sample_shape=SHAPE)  # what extract does: restored, not created
    assert array_json(store).read_bytes() == before and verify_store(store.path) == []
    np.testing.assert_array_equal(StoreReader(store.path, expect=store.fingerprint).read(KEYS)[FEATURE], values)


def test_an_edited_group_shard_size_is_refused_before_any_index_is_judged(store: CacheStore) -> None:
    edit_json(store.path / "zarr" / "zarr.json", lambda d: d["attributes"]["feature_cache"].update(shard_size=3))
    with pytest.raises(StoreDamaged, match=r"says shard_size 3, but array .* was created with shard size 4"):
        StoreReader(store.path, expect=store.fingerprint)
    [problem] = check_store(store.path)
    assert problem.fix == "group" and "shard_size 3" in problem.message  # written back by `verify --repair`


def test_an_edited_dtype_of_a_store_written_before_specs_is_refused_by_its_records(tmp_path: Path) -> None:
    legacy = Path(shutil.copytree(LEGACY / PINNED[:16], tmp_path / PINNED[:16]))
    edit_json(legacy / "zarr" / FEATURE / "zarr.json", lambda d: d.update(data_type="int16"))
    with pytest.raises(StoreDamaged, match="it is int16 .* its completion records were written as float16"):
        StoreReader(legacy, expect=None)
    assert [p.fix for p in check_store(legacy)] == ["record", "record"]  # no spec: its shards cannot be proven


def test_a_deleted_array_directory_is_found_by_verify_and_not_complete(store: CacheStore) -> None:
    shutil.rmtree(store.path / "zarr" / FEATURE)
    meta = StoreMeta.load(store.path, expect=store.fingerprint)
    assert not meta.is_complete(FEATURE, 0) and FEATURE in meta.damaged_arrays
    assert store.missing_shards([FEATURE]) == [0, 1, 2]
    with pytest.raises(StoreDamaged, match=f"zarr/{FEATURE}/zarr.json is missing"):
        StoreReader(store.path, expect=store.fingerprint)
    assert [(p.fix, p.shard, p.array_id) for p in check_store(store.path)] == [
        ("record", s, FEATURE) for s in (0, 1, 2)]
    assert store.ensure_array(FEATURE, sample_shape=SHAPE)  # what extract does: created again, records withdrawn
    assert store.missing_shards([FEATURE]) == [0, 1, 2] and not list((store.path / "done").glob(f"{FEATURE}/*"))


@pytest.mark.parametrize("damaged", ["fingerprint.json", "zarr/zarr.json", f"zarr/{FEATURE}/zarr.json"])
def test_invalid_json_in_store_metadata_is_a_user_error(store: CacheStore, damaged: str) -> None:
    (store.path / damaged).write_text('{"truncated": ')
    for opener in (lambda: StoreReader(store.path, expect=store.fingerprint),
                   lambda: CacheStore.open(store.path, fingerprint=store.fingerprint).write_shard(
                       0, {FEATURE: np.zeros((4, *SHAPE), np.float16)})):
        with pytest.raises(UserError, match=damaged):
            opener()


def test_caches_reports_a_damaged_store_and_lists_the_others(store: CacheStore, tmp_path: Path, capsys) -> None:
    from pipeline.store_cli import caches_main

    other = make(tmp_path / "cache", fingerprint=Fingerprint.from_fields({"other": 1}))
    (store.path / "zarr" / "zarr.json").write_text("{")
    infos = {info.path: info for info in list_caches(tmp_path / "cache")}
    assert infos[other.path].problems == () and infos[other.path].n_done == {FEATURE: len(KEYS)}
    assert "zarr/zarr.json is damaged" in infos[store.path].problems[0]
    assert caches_main([str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert f"damaged: {infos[store.path].problems[0]}" in out and f"{FEATURE}" in out  # the other store listed


@pytest.mark.parametrize("inside", ["wds", "locks", "done", "index", f"zarr/{FEATURE}", f"done/{FEATURE}"])
def test_a_directory_link_inside_a_store_is_refused(store: CacheStore, tmp_path: Path, inside: str) -> None:
    outside = tmp_path / "outside"
    link = store.path / inside
    if link.exists():
        shutil.move(link, outside)
    else:
        outside.mkdir()
    link.symlink_to(outside, target_is_directory=True)
    for opener in (lambda: StoreReader(store.path, expect=store.fingerprint),
                   lambda: CacheStore.open(store.path, fingerprint=store.fingerprint)):
        with pytest.raises(StoreDamaged, match=f"{inside} is a symbolic link"):
            opener()


def test_a_linked_shard_directory_is_never_written_through(store: CacheStore, tmp_path: Path) -> None:
    shard_dir = store.path / "zarr" / FEATURE / "c" / "0"
    shutil.move(shard_dir, tmp_path / "outside")
    shard_dir.symlink_to(tmp_path / "outside", target_is_directory=True)
    before = sorted(p.name for p in (tmp_path / "outside").rglob("*"))
    with pytest.raises(StoreDamaged, match="is a symbolic link"):
        store.write_shard(0, {FEATURE: np.zeros((4, *SHAPE), np.float16)})
    assert sorted(p.name for p in (tmp_path / "outside").rglob("*")) == before


def test_a_zero_length_shard_file_is_refused_on_read(store: CacheStore) -> None:
    shard_file(store, 1).write_bytes(b"")
    with pytest.raises(StoreCorruption, match="the shard file has 0 bytes, its completion record says"):
        StoreReader(store.path, expect=store.fingerprint).read(KEYS[4:6])


def test_an_unreadable_shard_file_is_a_verify_finding(store: CacheStore, monkeypatch) -> None:
    import stages.store.verify as verify

    real = verify.file_sha256
    unreadable = shard_file(store, 1)

    def sha256(path: Path):  # root reads any file, whatever its mode: fail the read instead
        if Path(path) == unreadable:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(verify, "file_sha256", sha256)
    [problem] = check_store(store.path)
    assert (problem.fix, problem.shard) == ("record", 1) and "cannot be read" in problem.message
    assert os.path.basename(unreadable) in problem.message
