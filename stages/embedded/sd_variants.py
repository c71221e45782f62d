"""`embedded:tiny-sd15` and `embedded:tiny-sd21-768`: other SD-style pipelines at tiny width, to show
that any SD 1.x / 2.x checkout works from its directory alone (encoder `sd`, no code change).

- tiny SD 1.5: 8 attention heads at every level (`attention_head_dim: 8`), convolutional
  `proj_in`/`proj_out` (no linear projection), an OpenAI-CLIP-style text encoder (`quick_gelu`,
  padding with `<|endoftext|>`) 3/4 as wide as tiny SD 2.1's (SD 1.5: 768 vs 1024), a `PNDMScheduler`
  config.
- tiny SD 2.1-768: tiny SD 2.1-base's layout with SD 2.1's `upcast_attention` and a `DDIMScheduler`
  config with `v_prediction` (the extractor only uses `add_noise`, which ignores the prediction type).
"""
from __future__ import annotations

from pathlib import Path

from stages.embedded import register_embedded
from stages.embedded.sd import (EOS_TOKEN, SCHEDULER_CONFIG, TEXT_ENCODER_CONFIG, UNET_CONFIG, VAE_CONFIG,
                                build_sd_pipeline)

__all__ = ["VERSION", "SD15_UNET_CONFIG", "SD15_TEXT_ENCODER_CONFIG", "SD15_SCHEDULER_CONFIG",
           "SD21_768_UNET_CONFIG", "SD21_768_SCHEDULER_CONFIG", "build_tiny_sd15", "build_tiny_sd21_768"]

VERSION = 2  # 2: weights from stages.embedded.weights, configs without version stamps
SD15, SD21_768 = "tiny-sd15", "tiny-sd21-768"

SD15_UNET_CONFIG = {**UNET_CONFIG, "attention_head_dim": 8, "cross_attention_dim": 48, "use_linear_projection": False}
SD15_TEXT_ENCODER_CONFIG = {**TEXT_ENCODER_CONFIG, "hidden_size": 48, "intermediate_size": 192,
                            "num_attention_heads": 4, "hidden_act": "quick_gelu", "projection_dim": 48}
SD15_SCHEDULER_CONFIG = {  # SD 1.5's scheduler_config.json values
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
SD21_768_UNET_CONFIG = {**UNET_CONFIG, "sample_size": 96, "upcast_attention": True}
SD21_768_SCHEDULER_CONFIG = {**SCHEDULER_CONFIG, "prediction_type": "v_prediction"}


def build_tiny_sd15(out: Path) -> None:
    build_sd_pipeline(out, name=SD15, unet=SD15_UNET_CONFIG, vae=VAE_CONFIG, text_encoder=SD15_TEXT_ENCODER_CONFIG,
                      scheduler=("PNDMScheduler", SD15_SCHEDULER_CONFIG), pad_token=EOS_TOKEN)


def build_tiny_sd21_768(out: Path) -> None:
    build_sd_pipeline(out, name=SD21_768, unet=SD21_768_UNET_CONFIG, vae={**VAE_CONFIG, "sample_size": 768},
                      text_encoder=TEXT_ENCODER_CONFIG, scheduler=("DDIMScheduler", SD21_768_SCHEDULER_CONFIG))


register_embedded(SD15, version=VERSION, build_fn=build_tiny_sd15)
register_embedded(SD21_768, version=VERSION, build_fn=build_tiny_sd21_768)
