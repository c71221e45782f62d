"""CLIP vision features, the LLaVA-1.5 convention: penultimate-layer patch tokens (CLS dropped).

Array id `CLIP-L-2` = `CLIPVisionModel(...).hidden_states[-2][:, 1:]`, `(B, (S/P)^2, hidden)`, i.e.
576 x 1024 for ViT-L/14-336 and 256 x 64 for `embedded:tiny-clip-vision`; pooled to `grid x grid`
tokens (DESIGN §3 pooling) only when a grid is given. Images arrive already padded to a square with
the CLIP mean colour and resized to the processor's crop size (`stages.preprocess` with
`resize_mode="pad"`), so the `CLIPImageProcessor`'s own resize and centre crop are identities and only
its rescale + normalise change the pixels, exactly as LLaVA-1.5's `expand2square` + processor do.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from stages.config import ConfigError
from stages.encoders.base import EncoderKind, FeatureEncoder, Prompts, Spec
from stages.extractor import pool_to_grid
from stages.flops import clip_vision_gflop
from stages.models import ModelLoadError, default_device, resolve_model_dir, resolve_precision
from stages.preprocess import ImageSpec
from stages.store.fingerprint import contract_fields


__all__ = ["CLIP", "CLIP_ARRAY_ID", "CLIP_LAYER", "ClipKind", "ClipFeatureEncoder"]

CLIP_LAYER = -2  # hidden_states index: the penultimate encoder layer
CLIP_ARRAY_ID = "CLIP-L-2"


class ClipFeatureEncoder(FeatureEncoder):
    """A `CLIPVisionModel` and its `CLIPImageProcessor`, ready for inference."""

    def __init__(self, spec: Spec, *, model: Any, processor: Any) -> None:
        super().__init__(spec)
        self.model, self.processor = model, processor

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def encode(self, images: np.ndarray, keys: Sequence[str], prompts: Prompts) -> dict[str, torch.Tensor]:
        """uint8 (B, S, S, 3) images -> {`CLIP-L-2`: (B, T, C) float32}; keys and prompts are not used."""
        with self.timed("clip"):
            pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]  # (B, 3, S, S)
            out = self.model(pixels.to(device=self.model.device, dtype=self.model.dtype), output_hidden_states=True)
            tokens = out.hidden_states[CLIP_LAYER][:, 1:]  # (B, N, C): patch tokens, CLS dropped
            if self.spec.grid is not None:
                tokens = pool_to_grid(tokens, layout="tokens", grid=self.spec.grid)
        return {CLIP_ARRAY_ID: tokens.float()}


def _native_resolution(model_dir: Path) -> int:
    path = model_dir / "preprocessor_config.json"
    if not path.is_file():
        raise ModelLoadError(f"{model_dir} has no preprocessor_config.json (a CLIPImageProcessor config)")
    crop = json.loads(path.read_text()).get("crop_size")
    side = crop.get("height") if isinstance(crop, dict) else crop
    if not isinstance(side, int):
        raise ModelLoadError(f"{model_dir}/preprocessor_config.json has no usable crop_size ({crop!r})")
    return side


class ClipKind(EncoderKind):
    """A local `CLIPVisionModel` directory with its `preprocessor_config.json`."""

    name = "clip"
    time_stages = ("clip",)
    has_latents = False

    def validate(self, spec: Spec) -> None:
        if spec.prompt_sources:
            raise ValueError("prompt_sources apply to the U-Net encoders (sd, sdxl) only: CLIP vision features "
                             "take no text")

    def image_spec(self, spec: Spec, model_dir: Path, **extra: Any) -> ImageSpec:
        """LLaVA-1.5's expand2square + resize to the processor's crop size (its own resize and centre
        crop are then no-ops)."""
        native = _native_resolution(model_dir)
        if spec.resolution not in (None, native):
            raise ConfigError(f"CLIP model {spec.model} takes {native} px images, not resolution={spec.resolution}")
        return ImageSpec(resolution=native, resize_mode=spec.resize_mode, pad_color=tuple(spec.pad_color), **extra)

    def array_ids(self, spec: Spec) -> list[str]:
        return [CLIP_ARRAY_ID]

    def sample_shapes(self, spec: Spec, model_dir: Path) -> dict[str, tuple[int, ...]]:
        """(T, C): the native patch grid or `grid * grid` tokens, hidden-size channels."""
        from transformers import CLIPVisionConfig

        config = CLIPVisionConfig.from_pretrained(model_dir)
        side = spec.grid if spec.grid is not None else config.image_size // config.patch_size
        return {CLIP_ARRAY_ID: (side * side, config.hidden_size)}

    def fingerprint_fields(self, spec: Spec, model_dir: Path, *, preprocess: Mapping[str, Any],
                           pooling: Mapping[str, Any], memo_path: str | Path | None) -> dict[str, Any]:
        fields = contract_fields(components={"vision": model_dir}, scheduler_config={}, preprocess=preprocess,
                                 noise={}, pooling=pooling, dtypes={"features": spec.feature_dtype},
                                 memo_path=memo_path)
        return {**fields, "encoder": self.name, "clip_layer": CLIP_LAYER}

    def image_gflop(self, spec: Spec, model_dir: Path, *, array_ids: Sequence[str] | None = None,
                    encode: bool = True, early_exit: bool = True) -> dict[str, float]:
        """One forward of the vision tower at its input resolution (there are no latents to start from)."""
        resolution = self.image_spec(spec, model_dir).resolution
        computed = spec.array_ids() if array_ids is None else array_ids
        return {"clip_vision": clip_vision_gflop(str(model_dir), resolution) if computed else 0.0}

    def load(self, spec: Spec, *, device: torch.device | str | None = None,
             dtype: torch.dtype | None = None) -> ClipFeatureEncoder:
        from transformers import CLIPImageProcessor, CLIPVisionModel

        model_dir = resolve_model_dir(spec.model)
        device = torch.device(device) if device is not None else default_device()
        try:
            model = CLIPVisionModel.from_pretrained(model_dir)
            processor = CLIPImageProcessor.from_pretrained(model_dir)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load a CLIP vision model from {str(model_dir)!r}: {exc}") from exc
        model = model.to(device=device, dtype=dtype or resolve_precision("auto", device)).eval().requires_grad_(False)
        return ClipFeatureEncoder(spec, model=model, processor=processor)


CLIP = ClipKind()
