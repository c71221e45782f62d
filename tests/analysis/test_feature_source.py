"""`AnalysisFeatures`: the store's values where it has them, the extraction's own computation elsewhere."""
from dataclasses import replace

import numpy as np
import torch

from analysis.sources import AnalysisFeatures
from stages.encoders import SDFeatureEncoder
from stages.store import StoreReader


def test_store_arrays_are_read_and_the_rest_computed_from_the_cached_latents(analysis_env):
    env = analysis_env
    source = AnalysisFeatures.from_yaml(env.extract_yaml, image_root=env.image_root, device="cpu")
    assert source.reader is not None and source.reader.paths.root == env.store
    keys = list(env.keys[::-1])  # any order
    ids = ["U-L1-R1-B0-Cross-Q@t50", "U-L1-R1-B0-Cross-Q@t50:caption", "U-L1-R1-B0-Cross-Q@t500"]
    got = source.read(keys, ids, prompts={"caption": list(env.captions[::-1])})
    stored = StoreReader(env.store, expect=source.fingerprint).read(keys)
    for array_id in ids[:2]:
        np.testing.assert_array_equal(got[array_id], stored[array_id].astype(np.float32))
    # t500 is not in the store: an unconditional U-Net pass on the stored latents, cast to the stored dtype
    encoder = SDFeatureEncoder.load(replace(source.spec, prompt_sources=()), device="cpu", with_vae=False)
    expected = encoder.features(torch.from_numpy(stored["latents"]), keys, array_ids=[ids[2]])[ids[2]]
    np.testing.assert_array_equal(got[ids[2]], expected.numpy().astype(np.float16).astype(np.float32))
    assert source.counts == {"read": 2 * len(keys), "computed": len(keys)}
    assert source.describe()["store"] == str(env.store)
    assert source.cache_hint().endswith(f"cache_root={env.cache_root} timesteps=[50,500]")


def test_keys_the_store_lacks_are_computed_as_the_extraction_would_store_them(analysis_env):
    env = analysis_env
    source = AnalysisFeatures.from_yaml(env.extract_yaml, image_root=env.image_root, device="cpu")
    held, extra = env.keys[0], "00010/000100155.jpg"  # a sample image the small store never planned
    got = source.read([extra, held], ["latents", "U-L1-R1-B0-Cross-Q@t50"])
    stored = StoreReader(env.store, expect=source.fingerprint).read([held])
    np.testing.assert_array_equal(got["latents"][1], stored["latents"][0])
    assert source.computed_keys == {extra}
    again = source.read([extra], ["latents", "U-L1-R1-B0-Cross-Q@t50"])  # deterministic, whatever the batch
    np.testing.assert_array_equal(again["U-L1-R1-B0-Cross-Q@t50"], got["U-L1-R1-B0-Cross-Q@t50"][:1])
    assert "just extract config=" in source.cache_hint()
