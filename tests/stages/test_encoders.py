"""One contract over every registered encoder: what its registry entry promises (array ids, shapes,
stored dtypes, fingerprint fields, preprocessing, timings) is what its loaded `FeatureEncoder` delivers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from stages.cache_spec import CacheSpec, array_shapes_for, fingerprint_for, image_spec_for
from stages.encoders import ENCODERS, SDFeatureEncoder, encoder_kind
from stages.features import LATENTS
from stages.preprocess import load_image, preprocess

SPECS = {
    "sd": CacheSpec(model="embedded:tiny-sd", resolution=64, grid=4, features=("U-L1-R1-B0-Cross-Q", "U-L2-R2-Res-Out"),
                    timesteps=(50, 200), prompt_sources=("caption",)),
    "sdxl": CacheSpec(model="embedded:tiny-sdxl", encoder="sdxl", resolution=64, grid=4,
                      features=("U-L1-R1-B0-Cross-Q", "U-L2-R2-Res-Out"), timesteps=(50, 200), prompt_sources=("caption",)),
    "clip": CacheSpec(model="embedded:tiny-clip-vision", encoder="clip", resolution=None, grid=4, features=(),
                      timesteps=()),
}


def test_every_registered_encoder_has_a_contract_spec():
    assert set(SPECS) == set(ENCODERS)
    with pytest.raises(ValueError, match="not one of"):
        encoder_kind("sdxl-typo")


@pytest.fixture(scope="module", params=sorted(ENCODERS))
def encoded(request, sample):
    spec = SPECS[request.param]
    keys = [r["image"] for r in json.loads(sample.pretrain_json.read_text())[:3]]
    image_spec = image_spec_for(spec)
    images = np.stack([np.asarray(preprocess(load_image(sample.image_root, k), image_spec)) for k in keys])
    encoder = spec.kind.load(spec, device="cpu")
    prompts = {source: [f"a photo number {i}" for i in range(len(keys))] for source in spec.prompt_sources}
    return spec, encoder, images, encoder.encode(images, keys, prompts)


def test_encode_returns_every_array_id_with_its_registered_shape_and_dtype(encoded):
    spec, encoder, images, out = encoded
    shapes = array_shapes_for(spec)
    assert list(out) == spec.array_ids() == list(shapes)
    stored = encoder.stored(out)
    for array_id, (shape, dtype) in shapes.items():
        assert out[array_id].shape == (len(images), *shape)
        assert stored[array_id].dtype == np.dtype(dtype) == np.dtype(spec.stored_dtype(array_id))
        assert np.isfinite(stored[array_id]).all() and np.abs(stored[array_id]).max() > 0


def test_images_are_preprocessed_to_the_resolution_the_encoder_takes(encoded):
    spec, encoder, images, _ = encoded
    assert images.dtype == np.uint8 and images.shape[1:] == (image_spec_for(spec).resolution,) * 2 + (3,)


def test_fingerprint_names_the_encoder_and_hashes_its_weights(encoded):
    spec = encoded[0]
    fields = fingerprint_for(spec).fields
    assert fields["encoder"] == spec.encoder
    assert fields["weights"] and all(len(h) == 64 for h in fields["weights"].values())
    assert {"preprocess", "pooling", "dtypes", "noise", "scheduler"} <= set(fields)


def test_encoder_reports_the_seconds_of_its_registered_stages(encoded):
    spec, encoder, _, _ = encoded
    assert set(encoder.seconds) == set(spec.kind.time_stages) and min(encoder.seconds.values()) > 0


def test_sd_features_of_a_subset_equal_the_full_computation(encoded):
    """The worker's path for stored latents: names x timesteps restricted to the missing arrays."""
    spec, encoder, _, out = encoded
    if not isinstance(encoder, SDFeatureEncoder):
        pytest.skip("latents-based backbones only")
    keys = [f"k{i}" for i in range(len(out[LATENTS]))]
    wanted = ["U-L2-R2-Res-Out@t200", "U-L2-R2-Res-Out@t200:caption"]
    prompts = {"caption": [f"a photo number {i}" for i in range(len(keys))]}
    subset = encoder.features(out[LATENTS], keys, prompts=prompts, array_ids=wanted)
    full = encoder.features(out[LATENTS], keys, prompts=prompts)
    assert list(subset) == wanted
    for array_id in wanted:  # another batch layout: float32 rounding on the scale of the largest values
        want = full[array_id].numpy()
        np.testing.assert_allclose(subset[array_id].numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    with pytest.raises(KeyError, match="no prompts for source"):
        encoder.features(out[LATENTS], keys, array_ids=["U-L1-R1-B0-Cross-Q@t50:question"])


def test_the_entry_counts_the_flops_its_encoder_runs_for_an_image(encoded):
    """`EncoderKind.image_gflop` (what the dry runs price) equals a FlopCounterMode count of the loaded
    encoder's `encode` of one image: the pass layout is the entry's, counted and run alike. SDPA's math
    kernel: FlopCounterMode does not count the CPU flash kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from stages.flops import count_gflop
    from stages.models import resolve_model_dir

    spec, encoder, images, _ = encoded
    image = images[:1]
    encoder.encode(image, ["a.jpg"], {s: ["warm-up"] for s in spec.prompt_sources})  # the empty prompt is cached
    prompts = {s: ["a dog on grass"] for s in spec.prompt_sources}
    with sdpa_kernel(SDPBackend.MATH):
        counted = count_gflop(lambda: encoder.encode(image, ["a.jpg"], prompts))
    per_image = spec.kind.image_gflop(spec, resolve_model_dir(spec.model))
    assert sum(per_image.values()) == pytest.approx(counted, rel=1e-6)
