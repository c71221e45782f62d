"""The SD features the model consumes: cached, caption-guided (cached) or question-guided (on the fly).

With guidance scale `s`, the SD array becomes `X_u + s·(X_c − X_u)` (DESIGN §3):
- `s = 0`: the cached unconditional features as they are; no U-Net is ever built.
- prompt source `caption`: `X_c` is the store's caption-conditioned array — a linear combination of
  cached arrays, no U-Net pass.
- prompt source `question` (SFT): `X_c` comes from one conditional U-Net pass on the cached latents with
  the sample's noise, stopping after the tapped layer.
Either way a prompt dropped (probability `prompt_dropout`, drawn from the torch RNG the loop checkpoints)
keeps `X_u`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from stages.cache_spec import LATENTS, cache_spec_from
from stages.encoders import SDFeatureEncoder
from stages.extractor import amplify
from stages.features import ArrayId
from train.config import GuidanceConfig, VisionConfig

__all__ = ["guidance_applies", "required_arrays", "GuidedFeatures", "encoder_builder", "prompted_features"]


def guidance_applies(vision: VisionConfig, guidance: GuidanceConfig) -> bool:
    """A positive scale on a mode that reads an SD array."""
    return guidance.scale > 0 and vision.mode_spec.guided


def required_arrays(vision: VisionConfig, guidance: GuidanceConfig) -> tuple[str, ...]:
    """Store arrays a batch needs: the mode's arrays plus what guidance reads."""
    ids = list(vision.array_ids)
    if guidance_applies(vision, guidance):
        ids.append(f"{vision.sd_array}:caption" if guidance.prompt_source == "caption" else LATENTS)
    return tuple(dict.fromkeys(ids))


def encoder_builder(cache_spec: Mapping[str, Any], sd_array: str, *,
                    device: torch.device | None = None) -> Callable[[], SDFeatureEncoder]:
    """A U-Net-only encoder with the store's settings (model, grid, trials, noise seed); the spec is
    checked now, the weights load when the builder is called."""
    ArrayId.parse(sd_array)
    store_spec = cache_spec_from(cache_spec, where=f"the cache_spec recorded with {sd_array}")  # fails now
    return functools.partial(SDFeatureEncoder.load, store_spec, device=device, with_vae=False)


class GuidedFeatures:
    """The loop's `prepare_features` hook: batch -> the feature dict the vision adapter reads."""

    def __init__(self, *, vision: VisionConfig, guidance: GuidanceConfig,
                 build_encoder: Callable[[], SDFeatureEncoder] | None = None) -> None:
        self.vision, self.guidance = vision, guidance
        self.active = guidance_applies(vision, guidance)
        if self.active and guidance.prompt_source == "question" and build_encoder is None:
            raise ValueError("question guidance needs an encoder builder (the U-Net runs on cached latents)")
        self._build = build_encoder
        self._encoder: SDFeatureEncoder | None = None

    @property
    def encoder(self) -> SDFeatureEncoder:
        if self._encoder is None:  # built on first use: s = 0 never loads a U-Net
            self._encoder = self._build()
        return self._encoder

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        features = batch["features"]
        out = {k: features[k] for k in self.vision.array_ids if k in features}
        if not self.active or self.vision.sd_array not in features:  # text-only batch
            return out
        uncond = features[self.vision.sd_array]  # (N_img, T, C)
        if self.guidance.prompt_source == "caption":
            cond = self._caption_features(features, uncond)
        else:
            cond = self._question_features(batch, uncond)
        out[self.vision.sd_array] = amplify(uncond, cond, self.guidance.scale)
        return out

    def _caption_features(self, features: Mapping[str, Tensor], uncond: Tensor) -> Tensor:
        """The cached caption-conditioned array; a dropped prompt keeps `X_u` (no draw when p = 0, so runs
        without dropout keep their RNG stream)."""
        cond = features[f"{self.vision.sd_array}:caption"]
        if self.guidance.prompt_dropout > 0:
            keep = (torch.rand(len(uncond)) >= self.guidance.prompt_dropout).to(uncond.device)  # (N_img,)
            cond = torch.where(keep[:, None, None], cond, uncond)
        return cond

    def _question_features(self, batch: Mapping[str, Any], uncond: Tensor) -> Tensor:
        keys = [k for k in batch["image_keys"] if k is not None]
        questions = [q for q, k in zip(batch["questions"], batch["image_keys"]) if k is not None]
        # drawn on the host RNG (the one checkpoints restore), then moved beside the features
        keep = (torch.rand(len(keys)) >= self.guidance.prompt_dropout).to(uncond.device)  # (N_img,)
        cond = uncond.clone()
        if keep.any():
            rows = keep.nonzero().flatten().tolist()
            latents = batch["features"][LATENTS][keep]  # (N_keep, 4, h, w)
            computed = prompted_features(self.encoder, self.vision.sd_array, latents, [keys[i] for i in rows],
                                         [questions[i] for i in rows])
            cond[keep] = computed.to(cond.device, cond.dtype)
        return cond


def prompted_features(encoder: SDFeatureEncoder, sd_array: str, latents: Tensor, keys: list[str],
                      prompts: list[str]) -> Tensor:
    """`X_c` of `sd_array` (NAME@tT) for each key's cached latents conditioned on its prompt: one U-Net pass
    with the key's noise (DESIGN §3), stopping after the tap. (N, T, C) float32."""
    sd = ArrayId.parse(sd_array)
    prompted = str(ArrayId(sd.feature, sd.timestep, "question"))  # NAME@tT:question, the pass's own label
    return encoder.features(latents, keys, array_ids=[prompted], prompts={"question": prompts})[prompted]
