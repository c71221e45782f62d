"""SDXL as a backbone (DESIGN §3a) on the embedded tiny SDXL: the extractor against a hooked diffusers
forward conditioned as the contract says (written out here), early exit, name validation both ways, the
fingerprint, and a store from the pipeline that verifies, is read by tensorstore, trains, and gives
question guidance equal to a recomputation from the images."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stages.cache_spec import CacheSpec, fingerprint_for
from stages.extractor import ExtractionSpec, SDExtractor
from stages.features import FeatureNameError
from stages.models import ModelLoadError, load_sd_components
from stages.store import StoreReader, verify_store
from tests.train.test_guidance import SCALE, _batch, _from_scratch, _hook

# name -> (module path, layout), written out here for the SDXL U-Net (3 levels, depths 1, 2, 10)
TAPS = {
    "U-L0-R0-B7-Out": ("up_blocks.0.attentions.0.transformer_blocks.7", "tokens"),
    "D-L2-R1-B9-Cross-Q": ("down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_q", "tokens"),
    "M-R0-B4-Self-Q": ("mid_block.attentions.0.transformer_blocks.4.attn1.to_q", "tokens"),
    "U-L0-R2-Vit-Out": ("up_blocks.0.attentions.2", "map"),
    "U-L1-R2-B1-Cross-Q": ("up_blocks.1.attentions.2.transformer_blocks.1.attn2.to_q", "tokens"),
    "U-L2-R2-Res-Out": ("up_blocks.2.resnets.2", "map"),
}
KEYS = ["00000/000000012.jpg", "coco/train2017/000000033471.jpg"]
PROMPTS = ["a photo of a cat sitting on a wooden table", "a red motorcycle"]
GRID = 4  # at 64 px: level-0 maps 2x2 (grown), level-1 4x4 (kept), level-2 8x8 (shrunk)
STEPS = (50, 700)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def sdxl_dir() -> str:
    from stages.embedded import resolve_model

    return resolve_model("embedded:tiny-sdxl")


@pytest.fixture(scope="module")
def sdxl(sdxl_dir):
    return load_sd_components(sdxl_dir, device="cpu")


@pytest.fixture(scope="module")
def model(sdxl_dir):
    """The pipeline's parts loaded here with diffusers / transformers directly, as an SDXL checkout is."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    load = lambda cls, sub: cls.from_pretrained(sdxl_dir, subfolder=sub)  # noqa: E731
    return {
        "unet": load(UNet2DConditionModel, "unet").eval(), "vae": load(AutoencoderKL, "vae").eval(),
        "scheduler": load(DDPMScheduler, "scheduler"),
        "text": [(load(CLIPTokenizer, "tokenizer"), load(CLIPTextModel, "text_encoder").eval()),
                 (load(CLIPTokenizer, "tokenizer_2"), load(CLIPTextModelWithProjection, "text_encoder_2").eval())],
        "force_zeros": json.loads((Path(sdxl_dir) / "model_index.json").read_text())["force_zeros_for_empty_prompt"],
    }


def encode_prompts(model, prompts):
    """§3a: penultimate hidden states of both encoders concatenated; the second encoder's text_embeds."""
    hidden = []
    for tokenizer, encoder in model["text"]:
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), out.text_embeds


def reference(model, z0, keys, *, prompts, trial):
    """Noise, text, time ids, one hooked full U-Net forward over both timesteps, pooling: {(name, t): (B, T, C)}."""
    eps = []
    for key in keys:
        s = int.from_bytes(hashlib.sha256(f"0/{key}/{trial}".encode()).digest()[:8], "little") & (2**63 - 1)
        eps.append(torch.randn(z0.shape[1:], generator=torch.Generator("cpu").manual_seed(s)))
    n = len(keys) * len(STEPS)
    t = torch.tensor([step for step in STEPS for _ in keys])
    x_t = model["scheduler"].add_noise(z0.repeat(len(STEPS), 1, 1, 1), torch.stack(eps).repeat(len(STEPS), 1, 1, 1), t)
    with torch.no_grad():
        if prompts is None and model["force_zeros"]:
            hidden, pooled = encode_prompts(model, [""])
            hidden, pooled = torch.zeros_like(hidden).expand(n, -1, -1), torch.zeros_like(pooled).expand(n, -1)
        else:
            hidden, pooled = encode_prompts(model, (prompts or [""] * len(keys)) * len(STEPS))
        side = z0.shape[-1] * 8
        time_ids = torch.tensor([[side, side, 0, 0, side, side]] * n, dtype=torch.float32)
        captured, handles = {}, []
        for name, (path, _) in TAPS.items():
            def hook(_m, _i, out, name=name):
                captured[name] = out[0] if isinstance(out, tuple) else out
            handles.append(model["unet"].get_submodule(path).register_forward_hook(hook))
        model["unet"](x_t, t, encoder_hidden_states=hidden,
                      added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids})
        for h in handles:
            h.remove()
    pooled_taps = {}
    for name, (_, layout) in TAPS.items():
        out = captured[name].float()
        if layout == "tokens":
            b, hw, c = out.shape
            out = out.reshape(b, int(hw**0.5), int(hw**0.5), c).permute(0, 3, 1, 2)
        side = out.shape[-1]
        if side > GRID:
            out = F.avg_pool2d(out, side // GRID)
        elif side < GRID:
            out = F.interpolate(out, size=(GRID, GRID), mode="bilinear", align_corners=False)
        for step, block in zip(STEPS, out.flatten(2).transpose(1, 2).chunk(len(STEPS))):
            pooled_taps[name, step] = block
    return pooled_taps


def test_sdxl_features_equal_a_hooked_diffusers_forward_both_halves_two_timesteps_two_trials(sdxl, model):
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    spec = ExtractionSpec(features=tuple(TAPS), timesteps=STEPS, grid=GRID, trials=2)
    ours = SDExtractor(sdxl, spec).conditional_pair(z0, KEYS, prompts=PROMPTS, source="caption")
    assert len(ours) == len(TAPS) * len(STEPS) * 2
    for source, prompts in ((None, None), ("caption", PROMPTS)):
        trials = [reference(model, z0, KEYS, prompts=prompts, trial=i) for i in range(2)]
        for (name, step), first in trials[0].items():
            want = (first + trials[1][name, step]) / 2
            array_id = f"{name}@t{step}" + (f":{source}" if source else "")
            assert ours[array_id].shape == want.shape
            assert rel_err(ours[array_id], want) < 1e-5, array_id
    # the test can fail: text, timestep and trial all change the features
    a = "U-L0-R0-B7-Out"
    assert rel_err(ours[f"{a}@t50:caption"], ours[f"{a}@t50"]) > 1e-3
    assert rel_err(ours[f"{a}@t700"], ours[f"{a}@t50"]) > 1e-3
    assert rel_err(trials[0][a, 50], trials[1][a, 50]) > 1e-3


def test_unconditional_text_is_zeros_under_force_zeros_and_the_encoded_empty_prompt_otherwise(sdxl, model):
    extractor = SDExtractor(sdxl, ExtractionSpec(features=("U-L0-R0-B7-Out",), grid=GRID))
    assert model["force_zeros"] is True and sdxl.force_zeros_for_empty_prompt is True
    empty = extractor.condition(["", ""])
    assert empty.hidden_states.shape == (2, 77, 96) and empty.pooled.shape == (2, 64)
    assert not empty.hidden_states.any() and not empty.pooled.any()
    mixed = extractor.condition([PROMPTS[0], ""])  # an empty prompt in a conditioned batch: unconditional
    hidden, pooled = encode_prompts(model, [PROMPTS[0]])
    assert rel_err(mixed.hidden_states[:1], hidden) < 1e-6 and rel_err(mixed.pooled[:1], pooled) < 1e-6
    assert not mixed.hidden_states[1].any() and not mixed.pooled[1].any()
    encoded = SDExtractor(replace(sdxl, force_zeros_for_empty_prompt=False), extractor.spec).condition([""])
    hidden, pooled = encode_prompts(model, [""])
    assert hidden.abs().max() > 0.1
    assert rel_err(encoded.hidden_states, hidden) < 1e-6 and rel_err(encoded.pooled, pooled) < 1e-6


def test_early_exit_equals_the_full_forward_and_skips_the_up_blocks(sdxl):
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    calls = {"mid_block": 0, "up_blocks.0": 0, "conv_out": 0}
    handles = [sdxl.unet.get_submodule(p).register_forward_hook(lambda *_, p=p: calls.__setitem__(p, calls[p] + 1))
               for p in calls]
    try:
        spec = ExtractionSpec(features=("D-L2-R0-B3-Cross-Q", "D-L1-R1-B1-Out"), grid=GRID)
        early = SDExtractor(sdxl, spec).features(z0, KEYS)
        assert calls == {"mid_block": 0, "up_blocks.0": 0, "conv_out": 0}
        full = SDExtractor(sdxl, spec, early_exit=False).features(z0, KEYS)
        assert calls == {"mid_block": 1, "up_blocks.0": 1, "conv_out": 1}
    finally:
        for h in handles:
            h.remove()
    assert early.keys() == full.keys() and all(torch.equal(early[k], full[k]) for k in early)


def test_vae_encodes_in_float32_with_the_sdxl_scaling_factor(sdxl_dir, model):
    bf16 = load_sd_components(sdxl_dir, device="cpu", dtype=torch.bfloat16)  # force_upcast: the VAE stays fp32
    assert (bf16.unet.dtype, bf16.vae.dtype, bf16.vae_scale_factor) == (torch.bfloat16, torch.float32, 8)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z0 = SDExtractor(bf16, ExtractionSpec(features=("U-L0-R0-B7-Out",))).encode(pixels)
    with torch.no_grad():
        want = model["vae"].encode(pixels).latent_dist.mean * 0.13025
    assert z0.dtype == torch.float32 and torch.equal(z0, want) and 0.3 < float(z0.std()) < 3


@pytest.mark.parametrize("model_name,encoder,name,valid", [
    ("embedded:tiny-sd", "sd", "U-L0-R0-B7-Out", "U-L1-R1-B0-Cross-Q"),  # SD 2.1: UpBlock2D at level 0, depth 1
    ("embedded:tiny-sdxl", "sdxl", "U-L3-R0-B0-Cross-Q", "U-L0-R0-B7-Out"),  # SDXL: 3 levels
    ("embedded:tiny-sdxl", "sdxl", "D-L0-R0-B0-Cross-Q", "D-L2-R1-B9-Cross-Q"),  # SDXL: no attention at level 0
])
def test_a_name_of_the_other_unet_is_refused_with_the_valid_names(model_name, encoder, name, valid):
    from stages.models import resolve_model_dir

    spec = CacheSpec(model=model_name, encoder=encoder, resolution=64, grid=GRID, features=(name,))
    with pytest.raises(FeatureNameError, match="valid names") as info:
        spec.kind.check_model(spec, resolve_model_dir(spec.model))
    listed = str(info.value).split("valid names: ")[1].split(", ")
    assert valid in listed and name not in listed


@pytest.mark.parametrize("model_name,encoder,message", [("embedded:tiny-sdxl", "sd", "use encoder: sdxl"),
                                                        ("embedded:tiny-sd", "sdxl", "SDXL layout")])
def test_a_pipeline_under_the_other_encoder_is_refused(model_name, encoder, message):
    spec = CacheSpec(model=model_name, encoder=encoder, resolution=64, grid=GRID)
    with pytest.raises(ModelLoadError, match=message):
        fingerprint_for(spec)


def test_fingerprint_hashes_both_text_encoders_and_records_the_empty_prompt_convention(sdxl_dir, tmp_path):
    spec = CacheSpec(model="embedded:tiny-sdxl", encoder="sdxl", resolution=64, grid=GRID)
    fields = fingerprint_for(spec).fields
    assert set(fields["weights"]) == {"vae", "unet", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"}
    assert (fields["encoder"], fields["force_zeros_for_empty_prompt"], fields["text_layer"]) == ("sdxl", True, -2)
    assert "force_zeros_for_empty_prompt" not in fingerprint_for(CacheSpec(resolution=64, grid=GRID)).fields
    copy = tmp_path / "sdxl-encoded-empty"  # the same weights, another unconditional convention
    copy.mkdir()
    for part in Path(sdxl_dir).iterdir():
        os.symlink(part, copy / part.name)
    index = json.loads((Path(sdxl_dir) / "model_index.json").read_text())
    (copy / "model_index.json").unlink()
    (copy / "model_index.json").write_text(json.dumps({**index, "force_zeros_for_empty_prompt": False}))
    other = fingerprint_for(replace(spec, model=str(copy))).fields
    assert other["weights"] == fields["weights"] and other["force_zeros_for_empty_prompt"] is False
    assert load_sd_components(str(copy), device="cpu", with_vae=False).force_zeros_for_empty_prompt is False


# ---------------------------------------------------------------- a store from the pipeline

STORE_SPEC = CacheSpec(model="embedded:tiny-sdxl", encoder="sdxl", resolution=64, grid=GRID,
                       features=("U-L1-R1-B0-Cross-Q", "U-L0-R0-B7-Out"), timesteps=(50,),
                       prompt_sources=("caption",), feature_dtype="float32")


@pytest.fixture(scope="module")
def sdxl_store(make_train_store):
    return make_train_store(STORE_SPEC)


def test_sdxl_store_verifies_and_tensorstore_reads_every_array(sdxl_store):
    ts = pytest.importorskip("tensorstore")
    assert verify_store(sdxl_store.path) == []
    reader = StoreReader(sdxl_store.path, expect=fingerprint_for(STORE_SPEC))
    assert set(reader.array_ids) == set(STORE_SPEC.array_ids())
    stored = reader.read(reader.keys)
    for array_id in reader.array_ids:
        path = str(sdxl_store.path / "zarr" / array_id)
        data = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}, open=True).result()
        np.testing.assert_array_equal(data.read().result()[[reader.row_of(k) for k in reader.keys]], stored[array_id])
    assert stored["U-L0-R0-B7-Out@t50"].shape == (len(reader.keys), GRID * GRID, 64)
    assert not np.array_equal(stored["U-L0-R0-B7-Out@t50"], stored["U-L0-R0-B7-Out@t50:caption"])


def test_a_caption_guided_training_step_reads_an_sdxl_store(sdxl_store, tmp_path):
    from train.cli import prepare, run
    from train.config import DataConfig, GuidanceConfig, TrainConfig, VisionConfig

    array = "U-L0-R0-B7-Out@t50"
    config = TrainConfig(stage="pretrain", model="embedded:tiny-llm", vision=VisionConfig(sd_array=array),
                         data=DataConfig(data_path=str(sdxl_store.pretrain_json),
                                         extract_configs=(str(sdxl_store.extract_yaml),)),
                         guidance=GuidanceConfig(scale=4.0, prompt_source="caption"), max_steps=1, max_length=64,
                         per_device_batch_size=2, precision="fp32", output_dir=str(tmp_path / "run"))
    prepared = prepare(config)
    assert prepared.dataset.array_ids == (array, f"{array}:caption") and prepared.dataset.num_image_tokens == 16
    history = run(prepared).history
    assert [m.step for m in history] == [1] and np.isfinite(history[0].loss) and history[0].grad_norm > 0


def test_question_guidance_on_an_sdxl_store_equals_recomputation_from_images(sdxl_store):
    from train.config import GuidanceConfig

    guidance = GuidanceConfig(scale=SCALE, prompt_source="question")
    batch, source = _batch(sdxl_store, stage="sft", guidance=guidance)
    got = _hook(source, guidance)(batch)["U-L1-R1-B0-Cross-Q@t50"].double()  # the U-Net alone, cached latents
    assert len(set(batch.prompts["question"])) > 1 and got.shape[0] == len(batch.image_keys) >= 3
    want = _from_scratch(sdxl_store, batch.image_keys, batch.prompts["question"])["amplified"].double()
    assert float((got - want).norm() / want.norm()) < 1e-4


def test_sdxl_base_gives_the_paper_feature_as_16x16x1280_at_512px(sdxl):
    """The full-size SDXL-base U-Net on the meta device (no weights): 2567.5 M parameters, `U-L0-R0-B7-Out`
    16x16x1280 and `U-L1-R1-B1-Cross-Q` 32x32x640 at 512 px (64x64 latents)."""
    from diffusers import UNet2DConditionModel

    from benchmarks.sdxl import SDXL_BASE_UNET

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_BASE_UNET)
        latents, text, pooled = torch.empty(2, 4, 64, 64), torch.empty(2, 77, 2048), torch.empty(2, 1280)
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 2567.5
    extractor = SDExtractor(replace(sdxl, unet=unet), ExtractionSpec(features=("U-L0-R0-B7-Out", "U-L1-R1-B1-Cross-Q")))
    taps = extractor._forward(latents, torch.full((2,), 50, device="meta"), text, pooled)
    assert {str(k): tuple(v.shape) for k, v in taps.items()} == {"U-L0-R0-B7-Out": (2, 256, 1280),
                                                                 "U-L1-R1-B1-Cross-Q": (2, 1024, 640)}


def test_shipped_sdxl_configs_parse_with_the_paper_feature_and_their_guidance():
    from pipeline.config import load_extract_config
    from train.config import load_stage_config

    repo = Path(__file__).resolve().parents[2]
    for name in ("sample-sdxl", "llava558k-sdxl"):
        spec = load_extract_config([f"config={repo}/configs/extract/{name}.yaml"]).spec
        assert (spec.encoder, spec.prompt_sources, spec.features[0]) == ("sdxl", ("caption",), "U-L0-R0-B7-Out")
    guidance = {}
    for path in sorted((repo / "configs" / "train").glob("*pretrain-sdxl*.yaml")):
        config = load_stage_config("pretrain", [f"config={path}"])
        assert config.vision.sd_array == "U-L0-R0-B7-Out@t50" and config.guidance.prompt_source == "caption"
        guidance[path.stem] = (config.guidance.scale, config.guidance.prompt_dropout)
    assert guidance == {"pretrain-sdxl": (0.0, 0.0), "pretrain-sdxl-caption-s4": (4.0, 0.0),
                        "pretrain-sdxl-caption-s4-dropout": (4.0, 0.5), "sample-pretrain-sdxl": (4.0, 0.0)}
