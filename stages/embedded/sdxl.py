"""`embedded:tiny-sdxl`: an SDXL-base-shaped pipeline with seeded random weights.

SDXL-base's block layout at 1/20 of its width: `DownBlock2D` + 2x`CrossAttnDownBlock2D` (and the mirror
up), channels (16, 32, 64) for (320, 640, 1280), SDXL's transformer depths (1, 2, 10) — so the lowest
level and the mid block stack ten transformer blocks and `U-L0-R0-B7-Out` exists — 16-dim heads
growing with the width as SDXL's 64-dim (5, 10, 20) do, linear projections, and the `text_time` added
conditioning (pooled text + 6 size ids). Two text encoders as SDXL's: a `CLIPTextModel` (`quick_gelu`,
padding with `<|endoftext|>`, like OpenAI CLIP ViT-L) and a `CLIPTextModelWithProjection` (`gelu`,
padding with `"!"`, like OpenCLIP bigG), 32 + 64 = 96-d concatenated (SDXL: 768 + 1280 = 2048).
The VAE has SDXL's scaling factor 0.13025 and `force_upcast`; the scheduler config is SDXL-base's
`EulerDiscreteScheduler` one; `model_index.json` says `force_zeros_for_empty_prompt: true`. Loaded
through the same `from_pretrained(dir, subfolder=...)` calls as a real SDXL checkout.
"""
from __future__ import annotations

from pathlib import Path

from stages.embedded import register_embedded
from stages.embedded.sd import (EOS_TOKEN, PAD_TOKEN, SD_PIPELINE_COMPONENTS, TEXT_ENCODER_CONFIG, VAE_CONFIG,
                                model_index, save_scheduler, save_text_encoder, save_unet, save_vae,
                                write_clip_tokenizer)
from stages.embedded.weights import write_json

__all__ = ["NAME", "VERSION", "UNET_CONFIG", "VAE_CONFIG", "TEXT_ENCODER_CONFIG", "TEXT_ENCODER_2_CONFIG",
           "SCHEDULER_CONFIG", "build_tiny_sdxl"]

NAME = "tiny-sdxl"
VERSION = 2  # 2: weights from stages.embedded.weights, configs without version stamps
TIME_EMBED_DIM = 16  # per size id (SDXL: 256); the U-Net's added input is 6 size ids + the pooled text

TEXT_ENCODER_CONFIG = {**TEXT_ENCODER_CONFIG, "hidden_size": 32, "intermediate_size": 128, "num_attention_heads": 2,
                       "hidden_act": "quick_gelu", "projection_dim": 32}  # SDXL: CLIP ViT-L, 768
TEXT_ENCODER_2_CONFIG = {**TEXT_ENCODER_CONFIG, "hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4,
                         "hidden_act": "gelu", "projection_dim": 64}  # SDXL: OpenCLIP bigG, 1280, projection 1280
UNET_CONFIG = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (16, 32, 64),  # SDXL-base: (320, 640, 1280)
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),  # SDXL-base's
    "attention_head_dim": (1, 2, 4),  # diffusers' name for the head *count*; SDXL: (5, 10, 20)
    "cross_attention_dim": TEXT_ENCODER_CONFIG["hidden_size"] + TEXT_ENCODER_2_CONFIG["hidden_size"],
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": TIME_EMBED_DIM,
    "projection_class_embeddings_input_dim": 6 * TIME_EMBED_DIM + TEXT_ENCODER_2_CONFIG["projection_dim"],
    "norm_num_groups": 8,  # SDXL: 32
}
VAE_CONFIG = {**VAE_CONFIG, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
SCHEDULER_CONFIG = {  # SDXL-base's scheduler_config.json values
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon", "interpolation_type": "linear", "use_karras_sigmas": False,
    "timestep_spacing": "leading", "steps_offset": 1,
}


def build_tiny_sdxl(out: Path) -> None:
    """Write the whole pipeline directory; every parameter seeded by `<NAME>/<component>/<param>`."""
    out = Path(out)
    ids = write_clip_tokenizer(out / "tokenizer", pad_token=EOS_TOKEN)
    ids_2 = write_clip_tokenizer(out / "tokenizer_2", pad_token=PAD_TOKEN)
    save_text_encoder(out / "text_encoder", TEXT_ENCODER_CONFIG, ids, namespace=f"{NAME}/text_encoder")
    save_unet(out / "unet", UNET_CONFIG, namespace=f"{NAME}/unet")
    save_vae(out / "vae", VAE_CONFIG, namespace=f"{NAME}/vae")
    save_text_encoder(out / "text_encoder_2", TEXT_ENCODER_2_CONFIG, ids_2, namespace=f"{NAME}/text_encoder_2",
                      with_projection=True)
    save_scheduler(out / "scheduler", "EulerDiscreteScheduler", SCHEDULER_CONFIG)
    components = {**SD_PIPELINE_COMPONENTS, "scheduler": "EulerDiscreteScheduler", "tokenizer_2": "CLIPTokenizer",
                  "text_encoder_2": "CLIPTextModelWithProjection"}
    write_json(out / "model_index.json", model_index("StableDiffusionXLPipeline", components,
                                                      force_zeros_for_empty_prompt=True,
                                                      feature_extractor=[None, None], image_encoder=[None, None]))


register_embedded(NAME, version=VERSION, build_fn=build_tiny_sdxl)
