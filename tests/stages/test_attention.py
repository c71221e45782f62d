"""Cross-attention capture against the layer's own projections, hooked; capture is invisible to features."""
import hashlib

import pytest
import torch

from stages.attention import CrossAttentionCapture, CrossAttentionLayer, CrossAttentionRunner, cross_attention_layers
from stages.extractor import ExtractionSpec, SDExtractor
from stages.features import FeatureNameError
from stages.text_conditioning import TextEmbedding

KEYS = ["a/1.jpg", "b/2.jpg"]
LAYERS = ["D-L2-R0-B0-Cross-Attn", "U-L1-R1-B0-Cross-Attn"]
ATTN2 = {  # written out here independently of stages.features
    "D-L2-R0-B0-Cross-Attn": "down_blocks.2.attentions.0.transformer_blocks.0.attn2",
    "U-L1-R1-B0-Cross-Attn": "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
}


def latents(n=2, side=8):
    return torch.randn(n, 4, side, side, generator=torch.Generator().manual_seed(7))


def text_for(components, prompts):
    tok = components.tokenizer
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        return TextEmbedding(components.text_encoder(ids).last_hidden_state)


def test_layer_names_parse_print_and_resolve(tiny_sd):
    layer = CrossAttentionLayer.parse("U-L1-R1-B0-Cross-Attn")
    assert str(layer) == "U-L1-R1-B0-Cross-Attn"
    assert tiny_sd.unet.get_submodule(ATTN2[str(layer)]) is layer.resolve(tiny_sd.unet)
    coarse = [str(x) for x in cross_attention_layers(tiny_sd.unet, min_stride=4)]
    assert coarse == ["D-L2-R0-B0-Cross-Attn", "D-L2-R1-B0-Cross-Attn", "M-R0-B0-Cross-Attn",
                      "U-L1-R0-B0-Cross-Attn", "U-L1-R1-B0-Cross-Attn", "U-L1-R2-B0-Cross-Attn"]
    assert len(cross_attention_layers(tiny_sd.unet)) == 16  # 6 down + 1 mid + 9 up
    with pytest.raises(FeatureNameError, match="valid names: D-L0-R0-B0-Cross-Attn"):
        CrossAttentionLayer.parse("U-L5-R0-B0-Cross-Attn").resolve(tiny_sd.unet)
    for bad in ("U-L1-R1-B0-Cross-Q", "U-L1-R1-Cross-Attn", "Cross-Attn"):
        with pytest.raises(FeatureNameError):
            CrossAttentionLayer.parse(bad)


def test_scores_equal_a_recomputation_from_the_layers_own_hooked_projections(tiny_sd):
    unet, z0 = tiny_sd.unet, latents()
    text = text_for(tiny_sd, ["a cat on a table", "a red motorcycle"])
    hooked, handles = {}, []
    for name, path in ATTN2.items():
        for proj in ("to_q", "to_k"):
            def hook(_m, _i, out, key=(name, proj)):
                hooked[key] = out.detach().clone()
            handles.append(unet.get_submodule(f"{path}.{proj}").register_forward_hook(hook))
    inputs = {}
    handles.append(unet.conv_in.register_forward_pre_hook(lambda _m, args: inputs.update(x_t=args[0].clone())))
    runner = CrossAttentionRunner(tiny_sd, [CrossAttentionLayer.parse(n) for n in LAYERS], record=("scores", "probs"))
    try:
        got = runner.run(z0, KEYS, text, timestep=389, trial=1, seed=3)
    finally:
        for handle in handles:
            handle.remove()
    eps = []
    for key in KEYS:  # DESIGN §3 noise, written out
        s = int.from_bytes(hashlib.sha256(f"3/{key}/1".encode()).digest()[:8], "little") & (2**63 - 1)
        eps.append(torch.randn(z0.shape[1:], generator=torch.Generator("cpu").manual_seed(s)))
    x_t = tiny_sd.scheduler.add_noise(z0, torch.stack(eps), torch.full((2,), 389))
    torch.testing.assert_close(inputs["x_t"], x_t, rtol=0, atol=0)
    for name, path in ATTN2.items():
        heads = unet.get_submodule(path).heads
        q, k = hooked[(name, "to_q")], hooked[(name, "to_k")]  # (B, HW, C), (B, 77, C)
        d = q.shape[-1] // heads
        qh = q.reshape(2, -1, heads, d).permute(0, 2, 1, 3)
        kh = k.reshape(2, -1, heads, d).permute(0, 2, 1, 3)
        expected = torch.einsum("bhqd,bhkd->bhqk", qh, kh) / d**0.5
        captured = got[CrossAttentionLayer.parse(name)]
        assert captured["scores"].shape == (2, heads, q.shape[1], 77)
        torch.testing.assert_close(captured["scores"], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(captured["probs"], torch.softmax(expected, dim=-1), rtol=1e-5, atol=1e-6)


def test_capturing_changes_no_feature_value_and_restores_processors(tiny_sd):
    unet, z0 = tiny_sd.unet, latents()
    names = ("U-L1-R2-B0-Out", "U-L2-R2-Res-Out", "U-L1-R1-B0-Cross-Q")  # after, between and at the layers
    extractor = SDExtractor(tiny_sd, ExtractionSpec(features=names, timesteps=(50,), grid=4))
    plain = extractor.features(z0, KEYS, prompts=["a cat", "a dog"], source="caption")
    capture = CrossAttentionCapture(unet, [CrossAttentionLayer.parse(n) for n in LAYERS], early_exit=False)
    before = {n: unet.get_submodule(p).processor for n, p in ATTN2.items()}
    with capture.attached():
        captured = extractor.features(z0, KEYS, prompts=["a cat", "a dog"], source="caption")
    assert set(map(str, capture.outputs)) == set(LAYERS)
    for array_id, value in plain.items():
        assert torch.equal(value, captured[array_id]), array_id
    assert {n: unet.get_submodule(p).processor for n, p in ATTN2.items()} == before


def test_early_exit_stops_after_the_last_layer_with_the_same_scores(tiny_sd):
    unet, z0 = tiny_sd.unet, latents()
    text = text_for(tiny_sd, ["a cat", "a dog"])
    calls = []
    handle = unet.up_blocks[2].register_forward_hook(lambda *_: calls.append(1))
    layers = [CrossAttentionLayer.parse(n) for n in LAYERS]
    try:
        early = CrossAttentionRunner(tiny_sd, layers).run(z0, KEYS, text, timestep=50, trial=0, seed=0)
        assert not calls  # nothing after U-L1-R1's attention ran
        full = CrossAttentionRunner(tiny_sd, layers, early_exit=False).run(z0, KEYS, text, timestep=50, trial=0, seed=0)
        assert calls
    finally:
        handle.remove()
    for layer in layers:
        assert torch.equal(early[layer]["scores"], full[layer]["scores"])
