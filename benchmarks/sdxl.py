"""The full-size SDXL-base architecture (stabilityai/stable-diffusion-xl-base-1.0 configs), for shape
checks and FLOP counts on the meta device: no weights are needed (or downloadable here). `just bench-gpu`
builds it on a GPU, with the libraries' default random initialisation, to time it."""
from __future__ import annotations

import torch

from benchmarks.sd21 import SD21_BASE_VAE

__all__ = ["SDXL_BASE_UNET", "SDXL_BASE_VAE", "SDXL_BASE_TEXT", "SDXL_BASE_TEXT_2", "sdxl_base_modules"]

SDXL_BASE_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True, norm_num_groups=32,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
SDXL_BASE_VAE = dict(SD21_BASE_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
SDXL_BASE_TEXT = dict(  # OpenAI CLIP ViT-L/14's text tower
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
SDXL_BASE_TEXT_2 = dict(  # OpenCLIP ViT-bigG/14's text tower, with its projection
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
)


def sdxl_base_modules(device: str | torch.device = "meta") -> dict[str, torch.nn.Module]:
    """`{"unet", "vae", "text_encoder", "text_encoder_2"}` with SDXL-base's configs on `device` (meta: shapes
    without values; elsewhere the libraries' default random initialisation), float32."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device(device):
        return {
            "unet": UNet2DConditionModel(**SDXL_BASE_UNET).eval(),
            "vae": AutoencoderKL(**SDXL_BASE_VAE).eval(),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**SDXL_BASE_TEXT)).eval(),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_BASE_TEXT_2)).eval(),
        }
