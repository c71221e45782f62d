"""Stores written before the encoder registry and `StoreMeta` open, verify and train unchanged.

`tests/fixtures/legacy-store-v1/` is a store written by the extraction pipeline of commit 6975bb9 (store
layout 1): the first 3 images of the bundled sample's pretrain JSON (`pretrain.json` there, keys relative
to the sample's image root), embedded tiny SD at 64 px, a 2x2 grid, `U-L1-R1-B0-Cross-Q` at t=50,
unconditional and caption-conditioned, shard size 2 (one shard with a padding row), webdataset tars.
The weights are tiny SD v2's (seeded by `stages.embedded.weights`): that commit's own `extract` ran with
the v2 directory in place of its `tiny-sd-v1`, so the store is the old writer's and its fingerprint is
today's.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stages.cache_spec import CacheSpec, fingerprint_for, image_spec_for
from stages.llava import first_reply
from stages.preprocess import load_image, preprocess
from stages.store import StoreReader, verify_store

LEGACY = Path(__file__).resolve().parents[2] / "fixtures" / "legacy-store-v1"
PINNED = "a17b7bd375df2aea4bdff741ac97db629875da917b96a770c6863c5ec2f5948f"
SPEC = CacheSpec(model="embedded:tiny-sd", resolution=64, features=("U-L1-R1-B0-Cross-Q",), timesteps=(50,),
                 grid=2, prompt_sources=("caption",))


@pytest.fixture()
def legacy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(LEGACY / PINNED[:16], tmp_path / PINNED[:16]))


def test_a_store_written_before_store_meta_opens_verifies_and_equals_a_recomputation(legacy: Path, sample) -> None:
    fingerprint = fingerprint_for(SPEC)
    assert fingerprint.full == PINNED  # the fingerprint contract did not change
    reader = StoreReader(legacy, expect=fingerprint)
    assert reader.fingerprint.full == PINNED and verify_store(legacy) == []
    records = json.loads((LEGACY / "pretrain.json").read_text(encoding="utf-8"))
    keys = [r["image"] for r in records]
    assert reader.keys == keys and reader.array_ids == sorted(SPEC.array_ids())
    stored = reader.read(keys)

    encoder = SPEC.kind.load(SPEC, device="cpu")
    images = np.stack([np.asarray(preprocess(load_image(sample.image_root, k), image_spec_for(SPEC))) for k in keys])
    captions = [first_reply(r["conversations"]) for r in records]  # the manifest's caption rule
    computed = encoder.stored(encoder.encode(images, keys, {"caption": captions}))
    half = np.finfo(np.float16)  # one float16 rounding step: the run's batches and threads differ from ours
    for array_id, values in stored.items():
        np.testing.assert_allclose(values.astype(np.float64), computed[array_id].astype(np.float64),
                                   rtol=float(half.eps), atol=float(half.smallest_normal), err_msg=array_id)


def test_a_store_written_before_store_meta_trains(legacy: Path, sample, tmp_path: Path) -> None:
    from train.cli import prepare, run
    from train.config import load_stage_config

    config = load_stage_config("pretrain", [
        f"data.stores=[{legacy}]", f"data.data_path={LEGACY / 'pretrain.json'}", "data.extract_configs=[]",
        f"output_dir={tmp_path / 'run'}", "per_device_batch_size=1", "max_steps=2", "save_every=0", "max_length=64",
        "data.group_by_modality_length=false", "data.num_workers=0"])
    result = run(prepare(config))
    assert [m.step for m in result.history] == [1, 2] and all(np.isfinite(m.loss) for m in result.history)
    assert verify_store(legacy) == []  # reading it for training changed nothing
