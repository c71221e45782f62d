"""The extractor against an independent reference: a plain diffusers forward with the test's own hooks."""
import hashlib

import pytest
import torch
import torch.nn.functional as F

from stages.extractor import ExtractionSpec, SDExtractor, amplify
from stages.noise import noise_seed, sample_noise

# name -> (module path, layout), written out here independently of stages.features
TAPS = {
    "D-L0-R0-B0-Cross-Q": ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q", "tokens"),
    "D-L2-R0-B0-Cross-Q": ("down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_q", "tokens"),
    "M-R0-B0-Cross-Q": ("mid_block.attentions.0.transformer_blocks.0.attn2.to_q", "tokens"),
    "U-L1-R1-B0-Cross-Q": ("up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_q", "tokens"),
    "U-L1-R2-B0-Cross-Q": ("up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_q", "tokens"),
    "U-L2-R1-B0-Cross-Q": ("up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_q", "tokens"),
    "U-L1-R1-B0-Out": ("up_blocks.1.attentions.1.transformer_blocks.0", "tokens"),
    "U-L2-R2-Res-Out": ("up_blocks.2.resnets.2", "map"),
    "U-L1-R1-Vit-Out": ("up_blocks.1.attentions.1", "map"),
    "U-L3-R0-B0-Self-Q": ("up_blocks.3.attentions.0.transformer_blocks.0.attn1.to_q", "tokens"),
}
KEYS = [f"coco/train2017/{i:012d}.jpg" for i in range(8)]
GRID = 16  # at 256 px: level-1 maps are 8x8 (grown), level-2 16x16 (kept), level-0/3 32x32 (shrunk)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def latents_for(n, side=32):
    return torch.randn(n, 4, side, side, generator=torch.Generator().manual_seed(1234))


def reference(components, z0, keys, *, t, prompts, seed=0, trial=0):
    """Noise, text, full U-Net forward and pooling, all written out plainly."""
    eps = []
    for key in keys:
        s = int.from_bytes(hashlib.sha256(f"{seed}/{key}/{trial}".encode()).digest()[:8], "little") & (2**63 - 1)
        eps.append(torch.randn(z0.shape[1:], generator=torch.Generator("cpu").manual_seed(s)))
    x_t = components.scheduler.add_noise(z0, torch.stack(eps), torch.full((len(keys),), t))
    tok = components.tokenizer
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        text = components.text_encoder(ids).last_hidden_state
        captured, handles = {}, []
        for name, (path, _) in TAPS.items():
            def hook(_m, _i, out, name=name):
                captured[name] = out[0] if isinstance(out, tuple) else out
            handles.append(components.unet.get_submodule(path).register_forward_hook(hook))
        components.unet(x_t, torch.tensor(t), encoder_hidden_states=text)
        for h in handles:
            h.remove()
    pooled = {}
    for name, (_, layout) in TAPS.items():
        out = captured[name].float()
        if layout == "tokens":
            b, hw, c = out.shape
            side = int(hw**0.5)
            out = out.reshape(b, side, side, c).permute(0, 3, 1, 2)
        side = out.shape[-1]
        if side > GRID:
            out = F.avg_pool2d(out, side // GRID)
        elif side < GRID:
            out = F.interpolate(out, size=(GRID, GRID), mode="bilinear", align_corners=False)
        pooled[name] = out.flatten(2).transpose(1, 2)
    return pooled


def test_every_tap_equals_a_hooked_full_diffusers_forward(tiny_sd):
    z0 = latents_for(2)
    extractor = SDExtractor(tiny_sd, ExtractionSpec(features=tuple(TAPS), timesteps=(50,), grid=GRID))
    ours = extractor.features(z0, KEYS[:2])
    ref = reference(tiny_sd, z0, KEYS[:2], t=50, prompts=["", ""])
    for name in TAPS:
        got = ours[f"{name}@t50"]
        assert got.shape == ref[name].shape == (2, GRID * GRID, ref[name].shape[-1])
        assert rel_err(got, ref[name]) < 1e-5, name


def test_conditional_features_equal_reference_with_the_prompt(tiny_sd):
    z0, prompts = latents_for(2), ["what colour is the cat?", "a rocket on a launch pad"]
    spec = ExtractionSpec(features=("U-L1-R1-B0-Cross-Q", "U-L2-R1-B0-Cross-Q"), timesteps=(100,), grid=GRID)
    ours = SDExtractor(tiny_sd, spec).features(z0, KEYS[:2], prompts=prompts, source="question")
    ref = reference(tiny_sd, z0, KEYS[:2], t=100, prompts=prompts)
    for name in spec.features:
        assert rel_err(ours[f"{name}@t100:question"], ref[name]) < 1e-5


def test_early_exit_equals_full_forward_and_skips_later_blocks(tiny_sd):
    z0, names = latents_for(2), ("D-L2-R0-B0-Cross-Q", "U-L1-R1-B0-Cross-Q")
    calls = {"up_blocks.1": 0, "up_blocks.2": 0, "conv_out": 0}
    handles = [tiny_sd.unet.get_submodule(p).register_forward_hook(
        lambda *_, p=p: calls.__setitem__(p, calls[p] + 1)) for p in calls]
    try:
        spec = ExtractionSpec(features=names, timesteps=(50,), grid=GRID)
        early = SDExtractor(tiny_sd, spec).features(z0, KEYS[:2])
        assert calls == {"up_blocks.1": 0, "up_blocks.2": 0, "conv_out": 0}  # hook on to_q fires mid-block
        full = SDExtractor(tiny_sd, spec, early_exit=False).features(z0, KEYS[:2])
        assert calls == {"up_blocks.1": 1, "up_blocks.2": 1, "conv_out": 1}
    finally:
        for h in handles:
            h.remove()
    for key in early:
        assert torch.equal(early[key], full[key])


def test_noise_contract_is_pinned():
    key = "coco/train2017/000000033471.jpg"
    digest = hashlib.sha256(b"0/coco/train2017/000000033471.jpg/0").digest()
    assert noise_seed(0, key, 0) == int.from_bytes(digest[:8], "little") & (2**63 - 1) == 725817716327256884
    assert noise_seed(7, "00453/004539375.jpg", 2) == 3051360687173404332
    eps = sample_noise((4, 8, 8), key=key, trial=0, global_seed=0)
    assert eps.dtype == torch.float32
    assert eps.flatten()[:4].tolist() == [-0.3705865740776062, 1.0074033737182617,
                                         -0.8568323850631714, 0.8872480392456055]


def test_features_do_not_depend_on_batch_composition(tiny_sd):
    z0 = latents_for(8)
    extractor = SDExtractor(tiny_sd, ExtractionSpec(features=("U-L1-R1-B0-Cross-Q", "U-L2-R2-Res-Out"),
                                                    timesteps=(50, 200), grid=GRID))
    whole = extractor.features(z0, KEYS)
    for size in (1, 3):
        parts = [extractor.features(z0[i:i + size], KEYS[i:i + size]) for i in range(0, 8, size)]
        for key, value in whole.items():
            assert rel_err(torch.cat([p[key] for p in parts]), value) < 1e-5, (size, key)
    again = extractor.features(z0, KEYS)
    assert all(torch.equal(again[k], whole[k]) for k in whole)
    # the two timesteps differ (the test could fail if t were ignored)
    assert rel_err(whole["U-L1-R1-B0-Cross-Q@t200"], whole["U-L1-R1-B0-Cross-Q@t50"]) > 1e-3


def test_trials_average_independent_noise_draws(tiny_sd):
    z0 = latents_for(2)
    one = SDExtractor(tiny_sd, ExtractionSpec(timesteps=(500,), grid=GRID)).features(z0, KEYS[:2])
    two = SDExtractor(tiny_sd, ExtractionSpec(timesteps=(500,), grid=GRID, trials=2)).features(z0, KEYS[:2])
    second = reference(tiny_sd, z0, KEYS[:2], t=500, prompts=["", ""], trial=1)["U-L1-R1-B0-Cross-Q"]
    key = "U-L1-R1-B0-Cross-Q@t500"
    assert rel_err(two[key], (one[key] + second) / 2) < 1e-5


def test_amplification_is_linear_in_scale_and_pair_shares_x_t(tiny_sd):
    z0, prompts = latents_for(3), ["a cat", "a rocket", "coins on a table"]
    extractor = SDExtractor(tiny_sd, ExtractionSpec(timesteps=(50,), grid=GRID))
    pair = extractor.conditional_pair(z0, KEYS[:3], prompts=prompts, source="question")
    u, c = pair["U-L1-R1-B0-Cross-Q@t50"], pair["U-L1-R1-B0-Cross-Q@t50:question"]
    assert rel_err(u, extractor.features(z0, KEYS[:3])["U-L1-R1-B0-Cross-Q@t50"]) < 1e-5
    assert rel_err(c, extractor.features(z0, KEYS[:3], prompts=prompts, source="question")[
        "U-L1-R1-B0-Cross-Q@t50:question"]) < 1e-5
    assert rel_err(c, u) > 1e-4  # conditioning changes the features
    assert torch.equal(amplify(u, c, 0.0), u)
    assert rel_err(amplify(u, c, 1.0), c) < 1e-6
    a2, a4 = amplify(u, c, 2.0), amplify(u, c, 4.0)
    assert rel_err(a4 - a2, 2 * (c - u)) < 1e-5


def test_encode_is_the_scaled_posterior_mean(tiny_sd):
    pixels = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z0 = SDExtractor(tiny_sd, ExtractionSpec()).encode(pixels)
    with torch.no_grad():
        ref = tiny_sd.vae.encode(pixels).latent_dist.mean * tiny_sd.vae.config.scaling_factor
    assert z0.dtype == torch.float32 and z0.shape == (2, 4, 16, 16)
    assert torch.equal(z0, ref)


@pytest.mark.parametrize("resolution", [100, 96, 0])
def test_resolution_not_a_multiple_of_64_is_refused(tiny_sd, resolution):
    with pytest.raises(ValueError, match="multiple of 64"):
        SDExtractor(tiny_sd, ExtractionSpec()).check_resolution(resolution)


def test_missing_model_directory_is_a_clear_error(tmp_path):
    from stages.models import ModelLoadError, load_sd_components

    with pytest.raises(ModelLoadError, match="does not exist"):
        load_sd_components(str(tmp_path / "no-such-sd"), device="cpu")


def test_attention_runs_through_scaled_dot_product_attention(tiny_sd):
    from diffusers.models.attention_processor import AttnProcessor2_0

    assert {type(p) for p in tiny_sd.unet.attn_processors.values()} == {AttnProcessor2_0}
