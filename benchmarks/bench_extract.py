"""`just bench-extract`: diffusion compute per image (FLOPs, full-size SD 2.1-base and SDXL-base) and CPU
seconds.

1. GFLOP per 512x512 image with FlopCounterMode on the meta device: VAE encode, full U-Net, and the
   U-Net stopped after each of the paper's feature names (SD 2.1-base: six; SDXL-base: its
   `U-L0-R0-B7-Out` and a few landmarks along the way).
2. Seconds per image on this machine, full forward vs early exit, for the tiny embedded SD and SDXL
   and a mid-size model (SD 2.1-base layout at half its width, random weights).
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import DDPMScheduler, UNet2DConditionModel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.common import best_seconds_interleaved, markdown_table, write_results  # noqa: E402
from benchmarks.sd21 import SD21_BASE_UNET, sd21_base_modules  # noqa: E402
from benchmarks.sdxl import sdxl_base_modules  # noqa: E402
from stages.extractor import ExtractionSpec, SDExtractor  # noqa: E402
from stages.models import SDComponents, load_sd_components  # noqa: E402

PAPER_NAMES = ("D-L2-R0-B0-Cross-Q", "U-L1-R1-B0-Cross-Q", "U-L1-R1-B0-Out", "U-L1-R2-B0-Cross-Q",
               "U-L2-R1-B0-Cross-Q", "U-L2-R2-Res-Out")
# SDXL: the paper's feature, and where the down path, the mid block and the lowest up level end
SDXL_NAMES = ("D-L2-R1-B9-Out", "M-R0-B9-Out", "U-L0-R0-B7-Out", "U-L0-R2-Vit-Out", "U-L1-R2-B1-Out")


def count_flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def flop_table(modules: dict[str, torch.nn.Module] | None = None,
               names: tuple[str, ...] = PAPER_NAMES) -> dict[str, float]:
    """GFLOP per 512x512 image on a full-size architecture built on the meta device (default: SD 2.1-base):
    the VAE encode, the whole U-Net and the U-Net up to each of `names` (through the extractor's early exit)."""
    modules = modules or sd21_base_modules("meta")
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                              beta_start=0.00085, beta_end=0.012)
    components = SDComponents(unet=modules["unet"], text_encoder=modules["text_encoder"], vae=None, tokenizer=None,
                              scheduler=scheduler, text_encoder_2=modules.get("text_encoder_2"))
    config = modules["unet"].config
    with torch.device("meta"):
        pixels, latents = torch.empty(1, 3, 512, 512), torch.empty(1, 4, 64, 64)
        text, t = torch.empty(1, 77, config.cross_attention_dim), torch.full((1,), 50)
        # SDXL: the pooled text embedding beside the 6 size ids (2816 = 6 x 256 + 1280)
        pooled = (torch.empty(1, config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim)
                  if config.addition_embed_type == "text_time" else None)
    full = SDExtractor(components, ExtractionSpec(features=names[-1:]), early_exit=False)
    table = {"VAE encode": count_flops(lambda: modules["vae"].encode(pixels)),
             "U-Net (full)": count_flops(lambda: full._forward(latents, t, text, pooled))}
    for name in names:
        extractor = SDExtractor(components, ExtractionSpec(features=(name,)))
        table[f"U-Net to {name}"] = count_flops(lambda: extractor._forward(latents, t, text, pooled))
    return table


def mid_size_components(tiny: SDComponents) -> SDComponents:
    """SD 2.1-base layout at half its width (random weights), sharing the tiny text encoder."""
    torch.manual_seed(0)
    config = dict(SD21_BASE_UNET, block_out_channels=(160, 320, 640, 640),
                  cross_attention_dim=tiny.text_encoder.config.hidden_size)
    unet = UNet2DConditionModel(**config).eval().requires_grad_(False)
    return SDComponents(unet=unet, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer,
                        scheduler=tiny.scheduler, vae=tiny.vae, source="mid-size")


def seconds_per_image(components: SDComponents, *, batch: int, name: str) -> dict[str, float]:
    latents = torch.randn(batch, 4, 64, 64)
    keys = [f"img{i}.jpg" for i in range(batch)]
    spec = ExtractionSpec(features=(name,))
    full = SDExtractor(components, spec, early_exit=False)
    early = SDExtractor(components, spec)
    best = best_seconds_interleaved({"full": lambda: full.features(latents, keys),
                                     "early": lambda: early.features(latents, keys)})
    t_full, t_early = best["full"] / batch, best["early"] / batch
    return {"full_s": t_full, "early_exit_s": t_early, "early_over_full": t_early / t_full}


def main() -> None:
    flops = {"sd21-base": flop_table(),
             "sdxl-base": flop_table(sdxl_base_modules("meta"), SDXL_NAMES)}
    for model, table in flops.items():
        unet = table["U-Net (full)"]
        print(markdown_table([f"stage (512x512, {model})", "GFLOP / image", "fraction of U-Net"],
                             [[k, f"{v:.1f}", f"{v / unet:.3f}"] for k, v in table.items()]))
        print()
    tiny = load_sd_components("embedded:tiny-sd", device="cpu")
    timings = {"tiny (U-L1-R1-B0-Cross-Q)": seconds_per_image(tiny, batch=4, name="U-L1-R1-B0-Cross-Q"),
               "mid-size (U-L1-R1-B0-Cross-Q)": seconds_per_image(mid_size_components(tiny), batch=2,
                                                                  name="U-L1-R1-B0-Cross-Q"),
               "tiny SDXL (U-L0-R0-B7-Out)": seconds_per_image(load_sd_components("embedded:tiny-sdxl", device="cpu"),
                                                               batch=4, name="U-L0-R0-B7-Out")}
    print(markdown_table(["model (64x64 latents, tap)", "full s/img", "early-exit s/img", "early / full"],
                         [[k, f"{v['full_s']:.3f}", f"{v['early_exit_s']:.3f}", f"{v['early_over_full']:.2f}"]
                          for k, v in timings.items()]))
    path = write_results("extract", {"gflop_per_image_512": flops, "cpu_seconds_per_image": timings})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
