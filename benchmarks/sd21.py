"""The full-size Stable Diffusion 2.1-base architecture (DESIGN §6), for shape checks and FLOP counts.

Built on the meta device: no weights are needed (or downloadable here) to count FLOPs or check that
feature names give the paper's shapes at 512 px. `just bench-gpu` builds it on a GPU, with the libraries'
default random initialisation, to time it.
"""
from __future__ import annotations

import torch

__all__ = ["SD21_BASE_UNET", "SD21_BASE_VAE", "SD21_BASE_TEXT", "sd21_base_modules"]

SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32, upcast_attention=False,
)
SD21_BASE_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=768, scaling_factor=0.18215,
)
SD21_BASE_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
)


def sd21_base_modules(device: str | torch.device = "meta") -> dict[str, torch.nn.Module]:
    """`{"unet", "vae", "text_encoder"}` with the SD 2.1-base configs on `device` (meta: shapes without values;
    elsewhere the libraries' default random initialisation), float32."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        return {
            "unet": UNet2DConditionModel(**SD21_BASE_UNET).eval(),
            "vae": AutoencoderKL(**SD21_BASE_VAE).eval(),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**SD21_BASE_TEXT)).eval(),
        }
