"""SDXL U-Net features: the `sd` entry with SDXL's conditioning (DESIGN §3a).

Everything of `stages.encoders.sd` holds (latents, noise, taps with early exit, pooling, trials, pass
layout); what changes is what the loaded components condition the U-Net on (two text encoders, pooled
text and size, see `stages.text_conditioning`), which directories are hashed (both text encoders and
tokenizers) and one more fingerprint field: whether the unconditional text is zeros
(`force_zeros_for_empty_prompt` in `model_index.json`) or the encoded empty prompt. Feature names are
validated against the SDXL U-Net, whose lowest level stacks ten transformer blocks (`U-L0-R0-B7-Out`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stages.encoders.sd import SDKind
from stages.models import ModelLoadError, force_zeros_for_empty_prompt
from stages.text_conditioning import N_TIME_IDS, SDXL_TEXT_LAYER

__all__ = ["SDXL", "SDXLKind"]


def _config(model_dir: Path, component: str) -> dict[str, Any]:
    return json.loads((model_dir / component / "config.json").read_text(encoding="utf-8"))


class SDXLKind(SDKind):
    """SDXL-layout pipelines: `text_encoder_2/ tokenizer_2/` beside the SD ones, a U-Net with `text_time`
    added conditioning."""

    name = "sdxl"
    components = (*SDKind.components, "text_encoder_2", "tokenizer_2")
    text_encoders = (*SDKind.text_encoders, ("text_encoder_2", "CLIPTextModelWithProjection"))
    layout = "SDXL"

    def check_conditioning(self, model_dir: Path) -> None:
        """A U-Net whose inputs the two text encoders and the time ids fill."""
        unet, text, text_2 = (_config(model_dir, c) for c in ("unet", "text_encoder", "text_encoder_2"))
        if unet.get("addition_embed_type") != "text_time":
            raise ModelLoadError(f"{model_dir}/unet takes no SDXL text_time conditioning "
                                 f"(addition_embed_type={unet.get('addition_embed_type')!r})")
        width = text["hidden_size"] + text_2["hidden_size"]
        added = N_TIME_IDS * unet["addition_time_embed_dim"] + text_2["projection_dim"]
        if (unet["cross_attention_dim"], unet["projection_class_embeddings_input_dim"]) != (width, added):
            raise ModelLoadError(
                f"{model_dir}: the text encoders give {width}-d hidden states and {added}-d added embeddings, "
                f"the U-Net takes {unet['cross_attention_dim']} and {unet['projection_class_embeddings_input_dim']}")

    def conditioning_fields(self, model_dir: Path) -> dict[str, Any]:
        return {"force_zeros_for_empty_prompt": force_zeros_for_empty_prompt(model_dir),
                "text_layer": SDXL_TEXT_LAYER}


SDXL = SDXLKind()
