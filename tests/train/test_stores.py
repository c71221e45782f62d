"""`data.stores`: an explicit store directory is opened expecting the fingerprint its own recorded
`cache_spec` gives with the model as it is now (the legacy fixture store serves as that directory)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.stages.store.test_legacy_store import LEGACY, PINNED
from train.config import DataConfig
from stages.serving import CachedFeatures
from stages.store import StoreNotFound
from train.stores import locate_stores


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    return Path(shutil.copytree(LEGACY / PINNED[:16], tmp_path / PINNED[:16]))


def test_a_data_stores_directory_is_located_with_the_fingerprint_of_its_recorded_spec(store: Path) -> None:
    (located,) = locate_stores(DataConfig(stores=(str(store),)))
    assert located.path == store and located.fingerprint.full == PINNED
    source = CachedFeatures([located], array_ids=["U-L1-R1-B0-Cross-Q@t50", "latents"])
    assert len(source) == 3 and source.read(["00000/000000012.jpg"], ["latents"])["latents"].shape == (1, 4, 8, 8)


def test_a_data_stores_directory_whose_spec_gives_another_fingerprint_is_refused_naming_the_field(
        store: Path) -> None:
    group = store / "zarr" / "zarr.json"
    meta = json.loads(group.read_text(encoding="utf-8"))
    meta["attributes"]["cache_spec"]["seed"] = 1  # the recorded spec no longer produces the stored values
    group.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(StoreNotFound, match=r"noise\.seed: 1 != 0"):
        locate_stores(DataConfig(stores=(str(store),)))
