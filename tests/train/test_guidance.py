"""Guided SD features in training equal a from-scratch recomputation; s = 0 never builds a U-Net.

The trainer's side is what `train.cli.prepare` wires: `CachedFeatures` over the store found from the
extraction YAML, `LlavaDataset` + `collate`, and `GuidedFeatures` (the room's `Guidance`: a U-Net-only
pass on the cached latents). The reference is the room's computation from the images (VAE and U-Net).
"""
from __future__ import annotations

import functools
from dataclasses import replace

import pytest
import torch

from stages.extractor import amplify
from stages.features import conditioned_id
from stages.llava import load_llava_json
from stages.serving import CachedFeatures, SpecFeatures, load_encoder
from train.batch import collate
from train.conditioning import GuidedFeatures, required_arrays
from train.config import STAGE_TEMPLATES, DataConfig, GuidanceConfig, VisionConfig
from train.data import LlavaDataset
from train.stores import locate_stores

SD_ARRAY = "U-L1-R1-B0-Cross-Q@t50"
CAPTION, QUESTION = conditioned_id(SD_ARRAY, "caption"), conditioned_id(SD_ARRAY, "question")
SCALE = 4.0
VISION = VisionConfig(sd_array=SD_ARRAY)


@functools.cache
def _tokenizer():
    from transformers import AutoTokenizer

    from stages.embedded import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("embedded:tiny-llm"))


def _batch(store, *, stage: str, guidance: GuidanceConfig) -> tuple[dict, CachedFeatures]:
    """All image samples of the stage's JSON subset in one collated batch, and the feature source."""
    array_ids = required_arrays(VISION, guidance)
    data = DataConfig(extract_configs=(str(store.extract_yaml),))
    source = CachedFeatures(locate_stores(data), array_ids=array_ids)
    path = store.pretrain_json if stage == "pretrain" else store.sft_json
    records = [r for r in load_llava_json(path) if "image" in r]
    tokenizer = _tokenizer()
    dataset = LlavaDataset(records, template=STAGE_TEMPLATES[stage], tokenizer=tokenizer, max_length=256,
                           num_image_tokens=source.sample_shape(SD_ARRAY)[0], feature_source=source,
                           array_ids=array_ids)
    batch = collate([dataset[i] for i in range(len(dataset))], pad_token_id=tokenizer.pad_token_id)
    return batch, source


def _hook(source: CachedFeatures, guidance: GuidanceConfig) -> GuidedFeatures:
    return GuidedFeatures(vision=VISION, guidance=guidance, source=source, device=torch.device("cpu"))


def _from_scratch(store, keys: list[str], questions: list[str]) -> dict[str, torch.Tensor]:
    """The room's computation from the images, in float32: image → latents rounded to the stored dtype →
    the unconditional and the question-conditioned passes → amplified."""
    spec = replace(store.spec, feature_dtype="float32")
    fresh = SpecFeatures(spec, image_root=store.image_root, compute_missing=True, device="cpu")
    pair = fresh.read(keys, [SD_ARRAY, QUESTION], prompts={"question": questions})
    uncond, cond = torch.from_numpy(pair[SD_ARRAY]), torch.from_numpy(pair[QUESTION])
    return {"uncond": uncond, "amplified": amplify(uncond, cond, SCALE)}


@pytest.fixture
def no_unet(monkeypatch):
    """Any U-Net construction (from_pretrained, from_config, direct) raises, and no encoder loaded earlier
    in the process is reused."""
    from diffusers import UNet2DConditionModel

    def refuse(self, *args, **kwargs):
        raise AssertionError("a U-Net was constructed")

    monkeypatch.setattr(UNet2DConditionModel, "__init__", refuse)
    load_encoder.cache_clear()


@pytest.mark.parametrize("store_name", ["train_store_fp32", "train_store"])
def test_question_guided_features_equal_recomputation_from_images(store_name, request):
    store = request.getfixturevalue(store_name)
    guidance = GuidanceConfig(scale=SCALE, prompt_source="question")
    batch, source = _batch(store, stage="sft", guidance=guidance)
    got = _hook(source, guidance)(batch)[SD_ARRAY].double()  # (N_img, T, C)
    assert len(set(batch.prompts["question"])) > 1 and got.shape[0] == len(batch.image_keys) >= 3
    ref = {k: v.double() for k, v in _from_scratch(store, batch.image_keys, batch.prompts["question"]).items()}
    error = (got - ref["amplified"]).abs()
    if store.spec.feature_dtype == "float32":
        assert float(error.norm() / ref["amplified"].norm()) < 1e-4
    else:
        # Cached X_u is float16; X_c is computed in float32. X = (1-s)·X_u + s·X_c, so the float16
        # rounding of X_u (at most 2^-11 relative, 2^-25 absolute below the normal range) reaches X
        # scaled by |1-s|; the float32 rest stays at the 1e-4 relative level of the fp32 test.
        bound = abs(1 - SCALE) * (2.0**-11 * ref["uncond"].abs() + 2.0**-25) + 1e-4 * ref["amplified"].abs().max()
        assert bool((error <= bound).all()), float((error - bound).max())
        assert float(error.norm() / ref["amplified"].norm()) < 2e-3


def test_prompt_dropout_one_keeps_the_cached_unconditional_features(train_store, no_unet):
    guidance = GuidanceConfig(scale=SCALE, prompt_dropout=1.0, prompt_source="question")
    batch, source = _batch(train_store, stage="sft", guidance=guidance)
    assert "latents" in batch.features
    assert torch.equal(_hook(source, guidance)(batch)[SD_ARRAY], batch.features[SD_ARRAY])


def test_zero_scale_never_constructs_a_unet(train_store, no_unet):
    guidance = GuidanceConfig(scale=0.0, prompt_source="question")
    batch, source = _batch(train_store, stage="sft", guidance=guidance)
    assert "latents" not in batch.features  # s = 0 does not even read the latents
    out = _hook(source, guidance)(batch)
    assert set(out) == {SD_ARRAY} and torch.equal(out[SD_ARRAY], batch.features[SD_ARRAY])
    # the same path with s > 0 does build one, so the patch above would have caught it
    guided = GuidanceConfig(scale=SCALE, prompt_source="question")
    guided_batch, guided_source = _batch(train_store, stage="sft", guidance=guided)
    with pytest.raises(AssertionError, match="U-Net was constructed"):
        _hook(guided_source, guided)(guided_batch)


def test_caption_guided_pretraining_combines_cached_arrays_without_a_unet(train_store, no_unet):
    guidance = GuidanceConfig(scale=2.5, prompt_source="caption")
    batch, source = _batch(train_store, stage="pretrain", guidance=guidance)
    got = _hook(source, guidance)(batch)[SD_ARRAY]
    stored = source.read(batch.image_keys, [SD_ARRAY, CAPTION])
    uncond, caption = (torch.from_numpy(stored[a]).float() for a in (SD_ARRAY, CAPTION))
    assert not torch.equal(uncond, caption)
    torch.testing.assert_close(got, amplify(uncond, caption, 2.5), rtol=0, atol=0)


def test_caption_prompt_dropout_one_keeps_the_unconditional_features(train_store, no_unet):
    guidance = GuidanceConfig(scale=2.5, prompt_dropout=1.0, prompt_source="caption")
    batch, source = _batch(train_store, stage="pretrain", guidance=guidance)
    assert torch.equal(_hook(source, guidance)(batch)[SD_ARRAY], batch.features[SD_ARRAY])
