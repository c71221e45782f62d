"""On the full-size SD 2.1-base architecture (meta device, no weights): the paper's shapes at 512 px."""
import pytest
import torch
from diffusers import DDPMScheduler

from benchmarks.sd21 import sd21_base_modules
from stages.extractor import ExtractionSpec, SDExtractor
from stages.models import SDComponents

PAPER = {
    "D-L2-R0-B0-Cross-Q": 1280, "U-L1-R1-B0-Cross-Q": 1280, "U-L1-R1-B0-Out": 1280,
    "U-L1-R2-B0-Cross-Q": 1280, "U-L2-R1-B0-Cross-Q": 640, "U-L2-R2-Res-Out": 640, "U-L1-R1-Vit-Out": 1280,
}


@pytest.fixture(scope="module")
def meta_sd(tiny_sd):
    modules = sd21_base_modules("meta")
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, prediction_type="epsilon")
    return SDComponents(unet=modules["unet"], text_encoder=modules["text_encoder"], vae=modules["vae"],
                        tokenizer=tiny_sd.tokenizer, scheduler=scheduler, source="sd21-base (meta)")


def test_sd21_base_has_the_design_parameter_count(meta_sd):
    assert round(sum(p.numel() for p in meta_sd.unet.parameters()) / 1e6, 1) == 865.9


def test_paper_names_give_16x16x1280_and_32x32x640_and_pool_to_256_tokens(meta_sd):
    extractor = SDExtractor(meta_sd, ExtractionSpec(features=tuple(PAPER), timesteps=(50,), grid=16))
    extractor.check_resolution(512)
    latents = torch.empty(2, 4, 64, 64, device="meta")
    raw = extractor._forward(latents, torch.full((2,), 50, device="meta"),
                             torch.empty(2, 77, 1024, device="meta"))
    for name, tap in raw.items():
        channels = PAPER[str(name)]
        side = 16 if channels == 1280 else 32
        assert tap.shape[0] == 2
        assert tap.shape[1:] in {(side * side, channels), (channels, side, side)}, (name, tap.shape)
    pooled = extractor.features(torch.zeros(2, 4, 64, 64), ["a.jpg", "b.jpg"])
    assert {k: tuple(v.shape) for k, v in pooled.items()} == {f"{n}@t50": (2, 256, c) for n, c in PAPER.items()}
