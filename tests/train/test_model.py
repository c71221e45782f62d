"""Projector and the LLaVA wrapper, on the embedded tiny Llama (no DeepSpeed here; every vision mode's adapter:
test_vision_modes.py)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from stages.config import ConfigError
from train.config import TrainConfig, VisionConfig
from train.conversation import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from train.fusion import load_adapter
from train.model import ADAPTER_FILE, LLM_DIR, LlavaModel, build_model, splice_image_tokens
from train.projector import PROJECTORS, build_projector, read_config

SD, CLIP = "U-L1-R1-B0-Cross-Q@t50", "clip"
DIMS = {SD: 12, CLIP: 10}


@pytest.fixture(scope="module")
def tiny_llm_dir() -> str:
    from stages.embedded import resolve_model

    return resolve_model("embedded:tiny-llm")


def _config(llm_dir: str, **kwargs) -> TrainConfig:
    vision = VisionConfig(sd_array=SD, clip_array=CLIP, **kwargs.pop("vision", {}))
    return TrainConfig(model=llm_dir, vision=vision, max_length=64, **kwargs)


def test_splice_puts_image_tokens_at_placeholder_and_shifts_text():
    # row 0: image at position 1; row 1: text-only and shorter (right padded); row 2: image at the end
    ids = torch.tensor([[5, IMAGE_TOKEN_INDEX, 6, 7], [8, 9, 0, 0], [10, 11, 12, IMAGE_TOKEN_INDEX]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 6, 7], [8, 9, IGNORE_INDEX, IGNORE_INDEX],
                           [10, 11, 12, IGNORE_INDEX]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    embeds = ids.clamp(min=0).float()[..., None].expand(3, 4, 2)  # (B, L, D): a token's embedding = its id
    image = -torch.arange(1, 7, dtype=torch.float).view(2, 3, 1).expand(2, 3, 2)  # (N=2, T=3, D)
    out, out_labels, out_mask = splice_image_tokens(embeds=embeds, input_ids=ids, labels=labels,
                                                    attention_mask=mask, image_tokens=image, max_length=64)
    assert out.shape == (3, 6, 2)
    assert out[0, :, 0].tolist() == [5, -1, -2, -3, 6, 7]
    assert out[1, :, 0].tolist() == [8, 9, 0, 0, 0, 0]
    assert out[2, :, 0].tolist() == [10, 11, 12, -4, -5, -6]
    assert out_labels.tolist() == [[IGNORE_INDEX] * 4 + [6, 7], [8, 9] + [IGNORE_INDEX] * 4,
                                   [10, 11, 12] + [IGNORE_INDEX] * 3]
    assert out_mask.tolist() == [[True] * 6, [True, True] + [False] * 4, [True] * 6]
    short = splice_image_tokens(embeds=embeds, input_ids=ids, labels=labels, attention_mask=mask,
                                image_tokens=image, max_length=4)
    assert [t.shape[1] for t in short] == [4, 4, 4]
    assert short[0][0, :, 0].tolist() == [5, -1, -2, -3]


def test_splice_rejects_placeholder_feature_count_mismatch():
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 2]])
    with pytest.raises(ValueError, match="1 image placeholders but 2"):
        splice_image_tokens(embeds=torch.zeros(1, 3, 2), input_ids=ids, labels=ids, attention_mask=ids > -1000,
                            image_tokens=torch.zeros(2, 4, 2), max_length=8)


def test_projector_registry_builds_mlp2x_gelu_and_linear():
    assert set(PROJECTORS) == {"mlp2x_gelu", "linear"}
    mlp = build_projector("mlp2x_gelu", in_dim=6, out_dim=4)
    assert [type(m).__name__ for m in mlp] == ["Linear", "GELU", "Linear"]
    assert (mlp[0].in_features, mlp[0].out_features, mlp[2].in_features) == (6, 4, 4)
    with pytest.raises(ValueError, match="valid"):
        build_projector("mlp3x", in_dim=6, out_dim=4)


def test_model_loss_equals_llm_on_hand_spliced_embeddings(tiny_llm_dir):
    torch.manual_seed(0)
    model = build_model(_config(tiny_llm_dir, stage="sft"), feature_dims=DIMS)
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 40, 41, 2], [1, 50, 51, 0, 0]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 40, 41, 2], [IGNORE_INDEX, 50, 51, IGNORE_INDEX,
                                                                      IGNORE_INDEX]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    features = {SD: torch.randn(1, 3, DIMS[SD])}
    out = model(input_ids=ids, labels=labels, attention_mask=mask, features=features,
                has_image=torch.tensor([True, False]))
    embed = model.llm.get_input_embeddings()
    image = model.adapter(features)[0]  # (T=3, H)
    row0 = torch.cat([embed(torch.tensor([1])), image, embed(torch.tensor([40, 41, 2]))])  # (7, H)
    row1 = torch.cat([embed(torch.tensor([1, 50, 51])), torch.zeros(4, row0.shape[1])])  # padded to 7
    expected = model.llm(
        inputs_embeds=torch.stack([row0, row1]),
        attention_mask=torch.tensor([[1] * 7, [1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool),
        labels=torch.tensor([[IGNORE_INDEX] * 4 + [40, 41, 2], [IGNORE_INDEX, 50, 51] + [IGNORE_INDEX] * 4])).loss
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-6)
    assert int(out.tokens) == 7 + 3


def test_has_image_disagreeing_with_placeholders_is_an_error(tiny_llm_dir):
    model = build_model(_config(tiny_llm_dir), feature_dims=DIMS)
    ids = torch.tensor([[1, 40, 41]])
    with pytest.raises(ValueError, match="has_image"):
        model(input_ids=ids, labels=ids, attention_mask=ids > 0, features={}, has_image=torch.tensor([True]))


def test_text_only_batch_gives_adapter_zero_grads_not_none(tiny_llm_dir):
    model = build_model(_config(tiny_llm_dir, stage="pretrain"), feature_dims=DIMS)  # LLM frozen
    ids = torch.tensor([[1, 40, 41, 2]])
    model(input_ids=ids, labels=ids, attention_mask=ids > 0, features={}).loss.backward()
    grads = [p.grad for p in model.adapter.parameters()]
    assert all(g is not None and not g.any() for g in grads)
    assert all(p.grad is None for p in model.llm.parameters())


def test_gradient_checkpointing_keeps_loss_and_grads(tiny_llm_dir):
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 40, 41, 2]])
    features = {SD: torch.randn(1, 3, DIMS[SD])}
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(_config(tiny_llm_dir, stage="sft", gradient_checkpointing=checkpointing),
                            feature_dims=DIMS).train()
        loss = model(input_ids=ids, labels=ids.clamp(min=IGNORE_INDEX), attention_mask=ids != 0,
                     features=features).loss
        loss.backward()
        results.append((loss.detach(), model.adapter.projector[0].weight.grad.clone()))
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.llm.modules())
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_stage2_loads_stage1_adapter_and_rejects_a_mismatched_one(tiny_llm_dir, tmp_path):
    torch.manual_seed(0)
    stage1 = build_model(_config(tiny_llm_dir), feature_dims=DIMS)
    stage1.save_pretrained(tmp_path / "s1", with_llm=False)
    assert not (tmp_path / "s1" / LLM_DIR).exists()
    torch.manual_seed(1)
    stage2 = build_model(_config(tiny_llm_dir, stage="sft", pretrained_adapter=str(tmp_path / "s1" / ADAPTER_FILE)),
                         feature_dims=DIMS)
    for (name, a), b in zip(stage1.adapter.state_dict().items(), stage2.adapter.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(p.requires_grad for p in stage2.parameters())
    rebuilt, config = load_adapter(tmp_path / "s1" / ADAPTER_FILE)
    assert config == stage1.adapter_config and config.llm == tiny_llm_dir
    assert torch.equal(rebuilt.projector[0].weight, stage1.adapter.projector[0].weight)
    header = read_config(tmp_path / "s1" / ADAPTER_FILE)  # the layout adapter files have always had
    assert header == {"vision": dataclasses.asdict(_config(tiny_llm_dir).vision), "feature_dims": {SD: DIMS[SD]},
                      "hidden_size": stage1.llm.config.hidden_size, "llm": tiny_llm_dir}
    with pytest.raises(ValueError, match="different setup"):
        build_model(_config(tiny_llm_dir, stage="sft", vision={"projector": "linear"},
                            pretrained_adapter=str(tmp_path / "s1" / ADAPTER_FILE)), feature_dims=DIMS)


def test_sft_export_reloads_as_hf_causal_lm(tiny_llm_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = build_model(_config(tiny_llm_dir, stage="sft"), feature_dims=DIMS)
    model.save_pretrained(tmp_path, with_llm=True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / LLM_DIR)
    for (name, a), b in zip(model.llm.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_pretrain_freezes_every_llm_weight(tiny_llm_dir):
    model = build_model(_config(tiny_llm_dir, stage="pretrain"), feature_dims=DIMS)
    assert isinstance(model, LlavaModel)
    assert not any(p.requires_grad for p in model.llm.parameters())
    assert all(p.requires_grad for p in model.adapter.parameters())


def test_config_rejects_unknown_mode_and_stage():
    with pytest.raises(ConfigError, match="vision.mode"):
        VisionConfig(mode="sd+clip-sum")
    with pytest.raises(ConfigError, match="stage"):
        TrainConfig(stage="rlhf")
