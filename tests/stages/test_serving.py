"""The feature-serving room's contract (`stages.serving`), over every registered encoder and every vision
mode: what it serves equals what the extraction stored — read from the stores (cached), computed with the
spec's encoder (no store; a key the store lacks), and guided (caption: the stored conditioned array;
question: a U-Net pass on the stored latents, here conditioned on the captions the store was extracted with).

Stores: 64 px, a 2x2 token grid, two images of the bundled sample (a third is in none), one per encoder,
written by the pipeline in this process and found by their YAMLs' fingerprints."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from stages.cache_spec import CacheSpec, spec_summary
from stages.encoders import CLIP_ARRAY_ID, ENCODERS
from stages.extractor import amplify
from stages.features import LATENTS, conditioned_id
from stages.serving import CachedFeatures, Guidance, LocatedStore, SpecFeatures, find_yaml_store
from stages.store import StoreReader
from train.vision_modes import VISION_MODES

SD_ARRAY = "U-L1-R1-B0-Cross-Q@t50"
CAPTION = conditioned_id(SD_ARRAY, "caption")
SCALE = 2.5
SPECS = {
    "sd": CacheSpec(model="embedded:tiny-sd", resolution=64, grid=2, prompt_sources=("caption",)),
    "sdxl": CacheSpec(model="embedded:tiny-sdxl", encoder="sdxl", resolution=64, grid=2, prompt_sources=("caption",)),
    "clip": CacheSpec(model="embedded:tiny-clip-vision", encoder="clip", resolution=None, grid=2, features=(),
                      timesteps=()),
}
ROLE = {name: "sd" if kind.has_latents else "clip" for name, kind in ENCODERS.items()}  # the array each fills
ARRAYS = {"sd": [SD_ARRAY, LATENTS], "clip": [CLIP_ARRAY_ID]}
CASES = [(mode, sd) for sd in ENCODERS if ROLE[sd] == "sd" for mode in VISION_MODES if "sd" in VISION_MODES[mode].reads]
CASES += [(mode, None) for mode in VISION_MODES if "sd" not in VISION_MODES[mode].reads]


@dataclass(frozen=True)
class Env:
    stores: dict[str, LocatedStore]
    image_root: Path
    keys: list[str]
    captions: list[str]
    lacking: str  # an image in no store


@pytest.fixture(scope="module")
def env(sample, store_builder, tmp_path_factory) -> Env:
    folder = tmp_path_factory.mktemp("serving")
    records = json.loads(Path(sample.pretrain_json).read_text())[:3]
    data = folder / "data.json"
    data.write_text(json.dumps(records[:2]))
    stores = {}
    for name, spec in SPECS.items():
        extract_yaml = folder / f"{name}.yaml"
        extract_yaml.write_text(yaml.safe_dump({
            **spec_summary(spec), "data": [str(data)], "image_root": str(sample.image_root),
            "cache_root": str(folder / "cache"), "shard_size": 4, "batch_size": 2, "device": "cpu",
            "precision": "fp32", "write_webdataset": False}))
        store_builder(extract_yaml)
        stores[name] = find_yaml_store(extract_yaml).required()
    return Env(stores=stores, image_root=Path(sample.image_root), keys=[r["image"] for r in records[:2]],
               captions=[r["conversations"][1]["value"] for r in records[:2]], lacking=records[2]["image"])


def test_every_registered_encoder_and_vision_mode_has_a_case():
    assert set(SPECS) == set(ENCODERS) and {mode for mode, _ in CASES} == set(VISION_MODES)
    assert {sd for _, sd in CASES} | {"clip"} == set(ENCODERS) | {None}


def _owners(mode: str, sd: str | None) -> dict[str, str]:
    """The encoder whose store serves each role the mode reads."""
    return {role: sd if role == "sd" else next(n for n in ENCODERS if ROLE[n] == "clip")
            for role in VISION_MODES[mode].reads}


def _stored(env: Env, name: str, ids: list[str], keys: list[str]) -> dict[str, np.ndarray]:
    store = env.stores[name]
    return StoreReader(store.path, expect=store.fingerprint).read(keys, ids)


def _assert_within_rounding(got: np.ndarray, want: np.ndarray) -> None:
    """Equal up to the stored dtype's rounding of float32 sums batched another way (DESIGN §3: equal within
    float rounding across batch sizes and pass layouts)."""
    ulp = float(np.finfo(want.dtype).eps)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=ulp,
                               atol=1e-5 * float(np.abs(want.astype(np.float64)).max()))


@pytest.mark.parametrize(("mode", "sd"), CASES)
def test_cached_features_are_the_stored_arrays(env, mode, sd):
    owners = _owners(mode, sd)
    ids = [i for role in owners for i in ARRAYS[role]]
    source = CachedFeatures([env.stores[n] for n in dict.fromkeys(owners.values())], array_ids=ids)
    assert all(k in source for k in env.keys) and env.lacking not in source
    got = source.read(env.keys, ids)
    for role, name in owners.items():
        for array_id, want in _stored(env, name, ARRAYS[role], env.keys).items():
            assert got[array_id].dtype == want.dtype
            np.testing.assert_array_equal(got[array_id], want)


@pytest.mark.parametrize(("mode", "sd"), CASES)
def test_computed_features_equal_the_stored_arrays(env, mode, sd):
    for role, name in _owners(mode, sd).items():
        ids = ARRAYS[role]
        want = _stored(env, name, ids, env.keys)
        fresh = SpecFeatures(SPECS[name], image_root=env.image_root, compute_missing=True, device="cpu")
        got = fresh.read(env.keys, ids)  # no store: from the image files
        for array_id in ids:
            assert got[array_id].dtype == want[array_id].dtype
            if array_id == LATENTS:  # the VAE on the same batch as the extraction's
                np.testing.assert_array_equal(got[array_id], want[array_id])
            else:
                _assert_within_rounding(got[array_id], want[array_id])
        mixed = SpecFeatures(SPECS[name], store=env.stores[name], image_root=env.image_root, compute_missing=True,
                             device="cpu")
        spliced = mixed.read([env.keys[0], env.lacking], ids)  # the store's row, and a key it lacks computed
        alone = fresh.read([env.lacking], ids)
        for array_id in ids:
            np.testing.assert_array_equal(spliced[array_id][0], want[array_id][0])
            np.testing.assert_array_equal(spliced[array_id][1], alone[array_id][0])
        assert mixed.counts == {"read": len(ids), "computed": len(ids)} and mixed.computed_keys == {env.lacking}


@pytest.mark.parametrize("prompt_source", ["caption", "question"])
@pytest.mark.parametrize(("mode", "sd"), [case for case in CASES if case[1] is not None])
def test_guided_features_equal_the_stored_conditioned_arrays(env, mode, sd, prompt_source):
    owners = _owners(mode, sd)
    guidance = Guidance(sd_array=SD_ARRAY, scale=SCALE, prompt_source=prompt_source, device="cpu")
    ids = [*(ARRAYS[role][0] for role in owners), *guidance.arrays]
    source = CachedFeatures([env.stores[n] for n in dict.fromkeys(owners.values())], array_ids=ids)
    if guidance.runs_unet:
        guidance = replace(guidance, unet=source.spec_of(SD_ARRAY))
    features = {a: torch.from_numpy(v).float() for a, v in source.read(env.keys, ids).items()}
    got = guidance(features, keys=env.keys, prompts=env.captions)  # (N, T, C)
    stored = {a: torch.from_numpy(v).float() for a, v in _stored(env, sd, [SD_ARRAY, CAPTION], env.keys).items()}
    want = amplify(stored[SD_ARRAY], stored[CAPTION], SCALE)
    assert not torch.equal(stored[SD_ARRAY], stored[CAPTION])
    if prompt_source == "caption":  # a linear combination of the stored arrays
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    else:  # X_c in float32 from the pass vs the stored float16 caption array: its rounding, scaled by s
        bound = SCALE * (2.0**-11 * stored[CAPTION].abs() + 2.0**-24) + 1e-5 * want.abs().max()
        assert bool(((got - want).abs() <= bound).all()), float(((got - want).abs() - bound).max())
    if "clip" in owners:  # the mode's other array is served as stored
        clip = _stored(env, owners["clip"], [CLIP_ARRAY_ID], env.keys)[CLIP_ARRAY_ID]
        np.testing.assert_array_equal(features[CLIP_ARRAY_ID].numpy(), clip.astype(np.float32))
