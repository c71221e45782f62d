"""A key is a path, not a picture: an image replaced after extraction is extracted again, and the features
of the old picture are never served for it (DESIGN §8); a copy of the same bytes is no change."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stages.image_files import ImageStamp
from stages.store import StoreReader
from tests.pipeline.test_repair import FEATURE, config, extract


@pytest.fixture
def data(sample, tmp_path) -> dict[str, str]:
    """Four pretrain samples over their own copy of the images (the tests replace files)."""
    records = json.loads(Path(sample.pretrain_json).read_text())[:4]
    root = tmp_path / "images"
    for record in records:
        (root / record["image"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(sample.image_root) / record["image"], root / record["image"])
    path = tmp_path / "pretrain.json"
    path.write_text(json.dumps(records))
    return {"json": str(path), "root": str(root), "keys": [r["image"] for r in records]}


def _features(store: Path, keys: list[str]) -> np.ndarray:
    return StoreReader(store, expect=None, array_ids=[FEATURE]).read(keys)[FEATURE]


def test_an_image_replaced_in_place_is_extracted_again_and_its_old_features_are_gone(data, tmp_path):
    first = extract(config(data, tmp_path / "cache", shard_size=2))
    key, other = data["keys"][2], data["keys"][0]
    old = _features(first.store.path, [key])
    record = json.loads((first.store.path / "done" / FEATURE / "000001.json").read_text())
    replaced = Path(data["root"]) / key
    assert ImageStamp.from_json(record["images"][key]) == ImageStamp.of(replaced.read_bytes(), replaced.stat())

    shutil.copyfile(Path(data["root"]) / other, replaced)  # another picture under the same path
    second = extract(config(data, tmp_path / "cache", shard_size=2))
    assert second.schedule.changed_images == {key: 1} and [t.shard for t in second.tasks] == [1]
    assert not second.tasks[0].reuse_latents  # the latents were the old picture's too
    new = _features(second.store.path, [key])

    fresh = extract(config(data, tmp_path / "fresh", shard_size=2))  # the replaced tree, never extracted
    np.testing.assert_array_equal(new, _features(fresh.store.path, [key]))
    assert not np.array_equal(new, old)
    assert extract(config(data, tmp_path / "cache", shard_size=2)).tasks == ()  # stamps now match


def test_a_copied_image_tree_with_new_mtimes_is_a_cache_hit(data, tmp_path):
    extract(config(data, tmp_path / "cache", shard_size=2))
    copy = tmp_path / "copy"
    shutil.copytree(data["root"], copy, copy_function=shutil.copyfile)  # same bytes, new mtimes
    again = extract(config({**data, "root": str(copy)}, tmp_path / "cache", shard_size=2))
    assert again.schedule.changed_images == {} and again.tasks == ()
