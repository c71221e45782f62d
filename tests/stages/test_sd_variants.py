"""Other SD-style pipelines by configuration alone (encoder `sd`, their directory, no code change): tiny
SD 1.5 (8 heads, convolutional projections, OpenAI-CLIP-style text) and tiny SD 2.1-768 (v-prediction
scheduler config, upcast attention) extract features equal to the hooked diffusers reference of
`test_extractor`."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stages.cache_spec import CacheSpec, fingerprint_for, image_spec_for
from stages.features import ArrayId, FeatureName
from stages.models import resolve_model_dir
from stages.preprocess import load_image, preprocess
from tests.stages.test_extractor import TAPS, reference, rel_err

PROMPTS = ["what is on the table?", "a rocket on the launch pad at night"]


def diffusers_components(model_dir: str) -> SimpleNamespace:
    """The parts `reference` uses, loaded here with diffusers / transformers as any SD checkout is."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    return SimpleNamespace(unet=UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet").eval(),
                           text_encoder=CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder").eval(),
                           tokenizer=CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer"),
                           scheduler=DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler"))


def check_sd15(model: SimpleNamespace, fields: dict) -> None:
    unet, text = model.unet, model.text_encoder
    assert [b.attentions[0].transformer_blocks[0].attn2.heads for b in unet.down_blocks[:3]] == [8, 8, 8]
    assert isinstance(unet.up_blocks[1].attentions[1].proj_in, torch.nn.Conv2d)  # no linear projection
    assert unet.config.cross_attention_dim == text.config.hidden_size == 48 and text.config.hidden_act == "quick_gelu"
    assert model.tokenizer.pad_token == "<|endoftext|>"
    assert fields["scheduler"]["skip_prk_steps"] is True  # the PNDMScheduler config, read as a DDPMScheduler


def check_sd21_768(model: SimpleNamespace, fields: dict) -> None:
    assert model.unet.config.upcast_attention is True and model.tokenizer.pad_token == "!"
    assert model.scheduler.config.prediction_type == fields["scheduler"]["prediction_type"] == "v_prediction"


@pytest.mark.parametrize("name,check", [("tiny-sd15", check_sd15), ("tiny-sd21-768", check_sd21_768)])
def test_sd_variant_extracts_features_equal_to_its_hooked_reference(name, check, sample):
    spec = CacheSpec(model=f"embedded:{name}", resolution=64, grid=16, features=tuple(TAPS), timesteps=(50,))
    model_dir = resolve_model_dir(spec.model)
    spec.kind.check_model(spec, model_dir)
    fields = fingerprint_for(spec).fields
    model = diffusers_components(str(model_dir))
    check(model, fields)
    keys = [r["image"] for r in json.loads(sample.pretrain_json.read_text())[:2]]
    image_spec = image_spec_for(spec)
    images = np.stack([np.asarray(preprocess(load_image(sample.image_root, k), image_spec)) for k in keys])
    encoder = spec.kind.load(spec, device="cpu")
    out = encoder.encode(images, keys, {})
    questions = [str(ArrayId(FeatureName.parse(n), 50, "question")) for n in TAPS]
    out.update(encoder.features(out["latents"], keys, prompts={"question": PROMPTS}, array_ids=questions))
    for source, prompts in ((None, ["", ""]), ("question", PROMPTS)):
        ref = reference(model, out["latents"], keys, t=50, prompts=prompts)
        for tap in TAPS:
            array_id = str(ArrayId(FeatureName.parse(tap), 50, source))
            assert rel_err(out[array_id], ref[tap]) < 1e-5, (name, array_id)
    assert rel_err(out["U-L1-R1-B0-Cross-Q@t50:question"], out["U-L1-R1-B0-Cross-Q@t50"]) > 1e-4
