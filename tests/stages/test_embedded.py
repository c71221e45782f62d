"""Embedded defaults: the registry, the tiny SD 2.1-base-shaped pipeline, the tiny CLIP ViT, the sample."""
from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.embedded import MANIFEST_NAME, embedded_model, materialize, registered_names, resolve_model
from stages.embedded.sample import ensure_sample, sample_paths
from stages.embedded.sd import MODEL_MAX_LENGTH, SCHEDULER_CONFIG
from stages.locations import SAMPLE, resolve_sample_data

SD21_UNET = {
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "layers_per_block": 2,
    "use_linear_projection": True,
    "in_channels": 4,
    "out_channels": 4,
}
SFT_PREFIXES = ("coco/train2017/", "gqa/images/", "ocr_vqa/images/", "textvqa/train_images/", "vg/VG_100K")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embedded-home")


@pytest.fixture(scope="module")
def sd_dir(home) -> str:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DFC_EMBEDDED_HOME", str(home))
        return resolve_model("embedded:tiny-sd")


@pytest.fixture(scope="module")
def sd(sd_dir):
    """The components, loaded exactly as a real SD 2.1-base checkout would be."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    return {
        "unet": UNet2DConditionModel.from_pretrained(sd_dir, subfolder="unet").eval(),
        "vae": AutoencoderKL.from_pretrained(sd_dir, subfolder="vae").eval(),
        "text_encoder": CLIPTextModel.from_pretrained(sd_dir, subfolder="text_encoder").eval(),
        "tokenizer": CLIPTokenizer.from_pretrained(sd_dir, subfolder="tokenizer"),
        "scheduler": DDPMScheduler.from_pretrained(sd_dir, subfolder="scheduler"),
    }


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return ensure_sample(tmp_path_factory.mktemp("sample-parent") / "sample")


def _encode(sd, texts: list[str]) -> torch.Tensor:
    tok = sd["tokenizer"]
    ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    return sd["text_encoder"](ids).last_hidden_state  # (B, 77, D)


# ---------------------------------------------------------------- registry


def test_resolve_model_passes_other_specs_through_and_names_valid_embedded_ones():
    assert resolve_model("stabilityai/stable-diffusion-2-1-base") == "stabilityai/stable-diffusion-2-1-base"
    assert resolve_model("/some/local/dir") == "/some/local/dir"
    with pytest.raises(ValueError, match="embedded:tiny-sd"):
        resolve_model("embedded:no-such-model")
    assert {"tiny-sd", "tiny-clip-vision", "sample"} <= set(registered_names())


def test_embedded_models_are_told_by_name_or_by_their_materialised_directory(sd_dir, tmp_path):
    assert embedded_model("embedded:tiny-sd") == "embedded:tiny-sd"
    assert embedded_model(sd_dir) == "embedded:tiny-sd"  # resolved: the directory's manifest says so
    assert embedded_model("stabilityai/stable-diffusion-2-1-base") is None
    assert embedded_model(tmp_path) is None  # a local directory of real weights


def test_concurrent_builders_leave_one_complete_copy(tmp_path):
    calls: list[int] = []
    barrier = threading.Barrier(2)

    def build(out: Path) -> None:
        calls.append(1)
        barrier.wait(timeout=10)  # both builds are in flight before either renames
        (out / "weights.bin").write_bytes(b"x" * 1000)
        time.sleep(0.05)

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(materialize(tmp_path / "m-v1", build)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 2 and results == [tmp_path / "m-v1"] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-v1"]  # no temporary directories left
    assert sorted(p.name for p in (tmp_path / "m-v1").iterdir()) == [MANIFEST_NAME, "weights.bin"]
    materialize(tmp_path / "m-v1", build)  # complete: not rebuilt
    assert len(calls) == 2


def test_materialize_refuses_a_foreign_non_empty_directory(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        materialize(tmp_path / "taken", lambda out: (out / "a").write_text("a"))
    assert (tmp_path / "taken" / "mine.txt").read_text() == "user data"


def test_seeded_weights_ignore_the_library_initialiser_and_the_callers_rng():
    """The bytes come from `stages.embedded.weights` alone (pinned in tests/test_embedded_artefacts.py)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from stages.embedded.weights import seeded_model, seeded_uniform

    config = CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                            vocab_size=50, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    built = []
    for seed in (0, 1):
        torch.manual_seed(seed)  # a constructor drawing from the global RNG would differ between the two
        expected_next = torch.rand(3, generator=torch.Generator().manual_seed(seed))
        model = seeded_model(lambda: CLIPTextModel(config), namespace="t")
        assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG was not consumed
        built.append(model.state_dict())
    assert built[0].keys() == built[1].keys()
    assert all(torch.equal(built[0][k], built[1][k]) for k in built[0])
    name = next(k for k in built[0] if k.endswith("layers.0.self_attn.q_proj.weight"))  # (16, 16): U(±1/4)
    assert torch.equal(built[0][name], seeded_uniform(f"t/{name}", (16, 16), 0.25))
    assert 0.2 < built[0][name].abs().max() <= 0.25
    norm = next(k for k in built[0] if k.endswith("final_layer_norm.weight"))
    assert torch.equal(built[0][norm], torch.ones(16))


# ---------------------------------------------------------------- tiny SD


def test_tiny_sd_has_the_sd21_base_architecture_and_scheduler(sd, sd_dir):
    from diffusers import StableDiffusionPipeline

    unet, vae, text_encoder = sd["unet"], sd["vae"], sd["text_encoder"]
    for key, value in SD21_UNET.items():
        got = unet.config[key]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == value, key
    assert unet.config.cross_attention_dim == text_encoder.config.hidden_size
    heads = [b.attentions[0].transformer_blocks[0].attn2.heads for b in unet.down_blocks[:3]]
    assert heads == list(unet.config.attention_head_dim[:3])  # diffusers' "head dim" is the head count
    attn2 = unet.up_blocks[1].attentions[1].transformer_blocks[0].attn2
    assert attn2.to_k.in_features == text_encoder.config.hidden_size  # cross-attention reads the text
    assert isinstance(unet.up_blocks[1].attentions[1].proj_in, torch.nn.Linear)  # use_linear_projection
    assert (vae.config.latent_channels, vae.config.scaling_factor) == (4, 0.18215)
    assert len(vae.config.down_block_types) == 4
    with torch.inference_mode():
        assert vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean.shape == (1, 4, 8, 8)
    assert text_encoder.config.max_position_embeddings == MODEL_MAX_LENGTH
    for key, value in SCHEDULER_CONFIG.items():
        assert sd["scheduler"].config[key] == value, key
    pipe = StableDiffusionPipeline.from_pretrained(sd_dir)  # model_index.json is a valid SD layout
    assert pipe.unet.config.block_out_channels == unet.config.block_out_channels


def test_tokenizer_works_offline_and_pads_or_truncates_to_77(sd):
    tok = sd["tokenizer"]
    assert tok.model_max_length == 77 and tok.pad_token == "!" and tok.pad_token_id == 0
    short, empty, long = (tok(t, padding="max_length", max_length=77, truncation=True).input_ids
                          for t in ("A photo of a cat", "", "a cat on a mat " * 40))
    assert all(len(ids) == 77 for ids in (short, empty, long))
    assert short[0] == tok.bos_token_id and empty[:2] == [tok.bos_token_id, tok.eos_token_id]
    assert short[short.index(tok.eos_token_id) + 1:] == [0] * (76 - short.index(tok.eos_token_id))
    assert long[-1] == tok.eos_token_id and 0 not in long
    assert tok.convert_ids_to_tokens(short[1:6]) == ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>"]
    assert tok.decode(short, skip_special_tokens=True) == "a photo of a cat"
    assert max(tok("ünïcode 猫 émoji 🙂").input_ids) < len(tok)  # byte-level: anything encodes


def test_vae_latents_are_unit_scale_and_depend_on_the_image(sd, sample):
    from PIL import Image

    def load(key: str) -> torch.Tensor:
        im = Image.open(sample.image_root / key).convert("RGB").resize((128, 128), Image.Resampling.BICUBIC)
        return torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 255 * 2 - 1  # (3, H, W)

    x = torch.stack([load("00000/000000012.jpg"), load("00004/000040009.jpg")])  # (2, 3, 128, 128)
    with torch.inference_mode():
        z = sd["vae"].encode(x).latent_dist.mean * sd["vae"].config.scaling_factor  # (2, 4, 16, 16)
    assert 0.5 < z.std().item() < 2.0
    assert (z[0] - z[1]).norm() > 0.3 * z[0].norm()


def test_unet_cross_attention_queries_vary_with_input_and_text_changes_later_features(sd):
    unet, scheduler = sd["unet"], sd["scheduler"]
    taps: dict[str, torch.Tensor] = {}
    modules = {
        "D-L2-R0-B0-Cross-Q": unet.down_blocks[2].attentions[0].transformer_blocks[0].attn2.to_q,
        "U-L1-R1-B0-Cross-Q": unet.up_blocks[1].attentions[1].transformer_blocks[0].attn2.to_q,
        "U-L2-R2-Res-Out": unet.up_blocks[2].resnets[2],
    }
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: taps.__setitem__(n, out.clone()))
             for n, m in modules.items()]
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, 4, 32, 32, generator=gen)
    x_t = scheduler.add_noise(z0, torch.randn(2, 4, 32, 32, generator=gen), torch.tensor([50]))
    try:
        with torch.inference_mode():
            text = _encode(sd, ["", "a photo of a cat"])  # (2, 77, D)
            unet(x_t, 50, text[:1].expand(2, -1, -1))
            uncond = dict(taps)
            unet(x_t, 50, text[1:].expand(2, -1, -1))
            cond = dict(taps)
    finally:
        for h in hooks:
            h.remove()
    for name, value in uncond.items():
        assert value.abs().mean() > 1e-3, name
        assert (value[0] - value[1]).norm() > 0.1 * value[0].norm(), name  # depends on the latent
    for name in ("U-L1-R1-B0-Cross-Q", "U-L2-R2-Res-Out"):  # later than the first cross-attention
        assert (cond[name] - uncond[name]).norm() > 0.01 * uncond[name].norm(), name


# ---------------------------------------------------------------- tiny CLIP vision


def test_tiny_clip_vision_loads_with_its_processor_and_gives_256_patches(home, sample, monkeypatch):
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModel

    monkeypatch.setenv("DFC_EMBEDDED_HOME", str(home))
    path = resolve_model("embedded:tiny-clip-vision")
    model = CLIPVisionModel.from_pretrained(path).eval()
    processor = CLIPImageProcessor.from_pretrained(path)
    keys = ("00000/000000012.jpg", "00006/000061937.jpg")
    images = [Image.open(sample.image_root / k).convert("RGB") for k in keys]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]  # (2, 3, 224, 224)
    assert pixels.shape == (2, 3, 224, 224)
    with torch.inference_mode():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]  # (2, 257, 64)
    assert hidden.shape == (2, 257, 64)
    assert (hidden[0] - hidden[1]).norm() > 0.1 * hidden[0].norm()


# ---------------------------------------------------------------- sample


def test_sample_jsons_parse_and_every_image_opens(sample):
    from PIL import Image

    pretrain = json.loads(sample.pretrain_json.read_text())
    sft = json.loads(sample.sft_json.read_text())
    assert len(pretrain) == 24 and len(sft) == 32
    for record in pretrain + sft:
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and len(turns) % 2 == 0
        assert all(t["value"].strip() for t in turns)
        n_image_tags = sum(t["value"].count("<image>") for t in turns)
        assert n_image_tags == (1 if "image" in record else 0), record["id"]
        if "image" in record:
            with Image.open(sample.image_root / record["image"]) as im:
                im.load()
    for record in pretrain:
        assert re.fullmatch(r"(\d{5})/\1\d{4}\.jpg", record["image"])
        assert record["id"] == Path(record["image"]).stem
        assert len(record["conversations"]) == 2
        assert record["conversations"][0]["value"].startswith("<image>\n")


def test_sft_has_text_only_multiturn_image_last_and_several_prefixes(sample):
    sft = json.loads(sample.sft_json.read_text())
    images = [r["image"] for r in sft if "image" in r]
    assert len(sft) - len(images) == 4
    assert sum(len(r["conversations"]) >= 4 for r in sft if "image" not in r) >= 2
    assert sum(len(r["conversations"]) >= 6 for r in sft if "image" in r) >= 3  # 3-round conversations
    assert all(len(r["conversations"]) >= 4 for r in sft if "image" in r)
    first = [r["conversations"][0]["value"] for r in sft if "image" in r]
    assert any(v.startswith("<image>\n") for v in first) and any(v.endswith("\n<image>") for v in first)
    assert {p for p in SFT_PREFIXES if any(i.startswith(p) for i in images)} == set(SFT_PREFIXES)
    assert all(any(i.startswith(p) for p in SFT_PREFIXES) for i in images)


def test_sample_images_cover_the_decoding_edge_cases(sample):
    from PIL import Image, ImageOps

    modes, formats, aspects, rotated, transparent = set(), set(), [], 0, 0
    for path in sorted(p for p in sample.image_root.rglob("*") if p.is_file()):
        with Image.open(path) as im:
            modes.add(im.mode)
            formats.add(im.format)
            transparent += im.mode == "RGBA" and im.getextrema()[3][0] == 0
            upright = ImageOps.exif_transpose(im)
            rotated += upright.size != im.size
            aspects.append(upright.size[0] / upright.size[1])
    assert {"RGB", "L", "RGBA"} <= modes and {"JPEG", "PNG"} <= formats
    assert rotated >= 2 and transparent >= 1 and max(aspects) > 4 and min(aspects) < 1 / 4
    assert len({round(a, 2) for a in aspects}) >= 10


def test_ensure_sample_is_idempotent_and_matches_its_manifest(sample):
    manifest = json.loads((sample.image_root.parent / MANIFEST_NAME).read_text())
    stamps = {p: p.stat().st_mtime_ns for p in sample.image_root.parent.rglob("*") if p.is_file()}
    again = ensure_sample(sample.image_root.parent)
    assert again == sample == sample_paths(sample.image_root.parent)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert sorted(manifest) == sorted(str(p.relative_to(sample.image_root.parent)) for p in stamps
                                      if p.name != MANIFEST_NAME)


def test_sample_data_names_resolve_to_the_bundled_sample_files(home, monkeypatch):
    monkeypatch.setenv("DFC_EMBEDDED_HOME", str(home))
    paths = sample_paths(Path(resolve_model(SAMPLE)))
    assert resolve_sample_data(SAMPLE) == ([paths.pretrain_json, paths.sft_json], paths.image_root)
    assert resolve_sample_data(f"{SAMPLE}-pretrain") == ([paths.pretrain_json], paths.image_root)
    assert resolve_sample_data(f"{SAMPLE}-sft") == ([paths.sft_json], paths.image_root)
    with pytest.raises(ValueError, match=f"{SAMPLE}-sft"):
        resolve_sample_data(f"{SAMPLE}-val")
