"""CLIP vision features, the LLaVA-1.5 convention: penultimate-layer patch tokens (CLS dropped).

Array id `CLIP-L-2` = `CLIPVisionModel(...).hidden_states[-2][:, 1:]`, `(B, (S/P)^2, hidden)`, i.e.
576 x 1024 for ViT-L/14-336 and 256 x 64 for `embedded:tiny-clip-vision`; pooled to `grid x grid`
tokens (DESIGN §3 pooling) only when a grid is given. Images arrive already padded to a square with
the CLIP mean colour and resized to the processor's crop size (`stages.preprocess` with
`resize_mode="pad"`), so the `CLIPImageProcessor`'s own resize and centre crop are identities and only
its rescale + normalise change the pixels, exactly as LLaVA-1.5's `expand2square` + processor do.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from stages.extractor import pool_to_grid

__all__ = ["CLIP_ARRAY_ID", "CLIP_LAYER", "ClipVision", "load_clip_vision", "clip_features", "clip_tokens_shape"]

CLIP_LAYER = -2  # hidden_states index: the penultimate encoder layer
CLIP_ARRAY_ID = "CLIP-L-2"


@dataclass(frozen=True)
class ClipVision:
    """A loaded vision tower and its image processor."""

    model: Any  # transformers.CLIPVisionModel
    processor: Any  # transformers.CLIPImageProcessor


def _vision_config(model_dir: str | Path) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig.from_pretrained(model_dir)


def clip_tokens_shape(model_dir: str | Path, *, grid: int | None) -> tuple[int, int]:
    """(T, C) of the stored array: native patch grid or `grid * grid` tokens, hidden size channels."""
    config = _vision_config(model_dir)
    side = grid if grid is not None else config.image_size // config.patch_size
    return side * side, config.hidden_size


def load_clip_vision(model_dir: str | Path, *, device: torch.device | str, dtype: torch.dtype) -> ClipVision:
    """`CLIPVisionModel` + `CLIPImageProcessor` from one local directory, ready for inference."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    try:
        model = CLIPVisionModel.from_pretrained(model_dir)
        processor = CLIPImageProcessor.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot load a CLIP vision model from {str(model_dir)!r}: {exc}") from exc
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return ClipVision(model=model, processor=processor)


@torch.inference_mode()
def clip_features(clip: ClipVision, images: Sequence[np.ndarray], *, grid: int | None) -> dict[str, torch.Tensor]:
    """uint8 (S, S, 3) images -> {`CLIP-L-2`: (B, T, C) float32}."""
    pixels = clip.processor(images=list(images), return_tensors="pt")["pixel_values"]  # (B, 3, S, S)
    model = clip.model
    out = model(pixels.to(device=model.device, dtype=model.dtype), output_hidden_states=True)
    tokens = out.hidden_states[CLIP_LAYER][:, 1:]  # (B, N, C): patch tokens, CLS dropped
    if grid is not None:
        return {CLIP_ARRAY_ID: pool_to_grid(tokens, layout="tokens", grid=grid)}
    return {CLIP_ARRAY_ID: tokens.float()}
