"""CacheSpec fingerprints and the CLIP path of the shard worker (no Ray: the same units Ray schedules)."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import split_config
from pipeline.driver import plan_run
from pipeline.runner import worker_builder
from pipeline.sequential import run_sequential
from stages.cache_spec import CacheSpec, fingerprint_for
from stages.embedded import resolve_model
from stages.preprocess import load_image
from stages.store import StoreReader


def test_fingerprint_ignores_array_names_but_not_values_changing_fields(tmp_path):
    memo = tmp_path / "memo.json"
    base = fingerprint_for(CacheSpec(resolution=128), memo_path=memo)
    same = CacheSpec(resolution=128, features=("U-L2-R2-Res-Out",), timesteps=(10, 50), prompt_sources=("caption",))
    assert fingerprint_for(same, memo_path=memo) == base
    for changed in (CacheSpec(resolution=192), CacheSpec(resolution=128, seed=1),
                    CacheSpec(resolution=128, grid=8), CacheSpec(resolution=128, pad_color=(0, 0, 0)),
                    CacheSpec(resolution=128, feature_dtype="float32"), CacheSpec(resolution=128, feature_dtype="int8"),
                    CacheSpec(resolution=128, feature_dtype="float8_e4m3fn")):
        assert fingerprint_for(changed, memo_path=memo) != base, changed


@pytest.mark.parametrize("dtypes, message", [
    ({"feature_dtype": "uint8"}, "feature_dtype 'uint8' is neither a floating-point dtype nor a compact one"),
    ({"latents_dtype": "int8"}, "latents_dtype 'int8' is not a floating-point dtype (latents are never compact"),
])
def test_a_stored_dtype_that_is_neither_float_nor_compact_is_refused_naming_the_field(dtypes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        CacheSpec(**dtypes)


def test_a_resolution_the_model_cannot_downsample_is_refused_before_any_store_exists(tmp_path):
    with pytest.raises(ValueError, match="multiple of 64"):
        plan_run(split_config({"resolution": 96, "cache_root": str(tmp_path / "cache")}))
    assert not (tmp_path / "cache").exists()


def test_array_ids_name_latents_and_each_feature_timestep_source():
    spec = CacheSpec(features=("U-L1-R1-B0-Cross-Q",), timesteps=(50, 100), prompt_sources=("caption",))
    assert spec.array_ids() == ["latents", "U-L1-R1-B0-Cross-Q@t50", "U-L1-R1-B0-Cross-Q@t100",
                                "U-L1-R1-B0-Cross-Q@t50:caption", "U-L1-R1-B0-Cross-Q@t100:caption"]
    assert CacheSpec(model="embedded:tiny-clip-vision", encoder="clip", resolution=None,
                     grid=None).array_ids() == ["CLIP-L-2"]
    with pytest.raises(ValueError, match="prompt_sources apply to the U-Net encoders"):
        CacheSpec(encoder="clip", prompt_sources=("caption",))


def test_clip_shard_equals_penultimate_patch_tokens_of_clip_vision_model(tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionModel

    config = split_config({"model": "embedded:tiny-clip-vision", "encoder": "clip", "resolution": None,
                           "grid": None, "features": [], "cache_root": str(tmp_path), "shard_size": 16,
                           "batch_size": 3, "device": "cpu"})
    plan = plan_run(config)
    done = []  # the first shard only, by the sequential runner
    run_sequential(plan.tasks[:1], processor=worker_builder(config, plan).build(),
                   image_root=str(plan.manifest.image_root), image_spec=plan.image_spec, on_stats=done.append)
    (stats,) = done
    assert not stats.failed and stats.batches == 6  # 16 images in batches of 3
    assert list(stats.seconds) == ["decode", "clip", "write"] and min(stats.seconds.values()) > 0

    keys = [k for k in plan.tasks[0].keys if k is not None][:4]
    model_dir = resolve_model("embedded:tiny-clip-vision")
    model, processor = CLIPVisionModel.from_pretrained(model_dir).eval(), CLIPImageProcessor.from_pretrained(model_dir)
    expected = []
    for key in keys:  # LLaVA-1.5: expand2square with the mean colour, then the processor
        image = load_image(plan.manifest.image_root, key)
        side = max(image.size)
        square = Image.new("RGB", (side, side), tuple(int(x * 255) for x in processor.image_mean))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        with torch.no_grad():
            out = model(processor(images=square, return_tensors="pt")["pixel_values"], output_hidden_states=True)
        expected.append(out.hidden_states[-2][0, 1:].numpy())
    stored = StoreReader(plan.store.path, expect=plan.store.fingerprint).read(keys)["CLIP-L-2"].astype(np.float32)
    expected = np.stack(expected)  # (4, 256, 64)
    assert stored.shape == expected.shape == (4, 256, 64)
    # one BICUBIC resize of the same square either way; the rest is float16 storage rounding
    assert np.linalg.norm(stored - expected) / np.linalg.norm(expected) < 1e-3
