"""The SD features the model consumes: cached, caption-guided (cached) or question-guided (on the fly).

With guidance scale `s`, the SD array becomes `X_u + s·(X_c − X_u)` (DESIGN §3):
- `s = 0`: the cached unconditional features as they are; no U-Net is ever built.
- prompt source `caption`: `X_c` is the store's caption-conditioned array — a linear combination of
  cached arrays, no U-Net pass.
- prompt source `question` (SFT): `X_c` comes from one conditional U-Net pass on the cached latents with
  the sample's noise, stopping after the tapped layer; a prompt dropped (probability `prompt_dropout`,
  drawn from the torch RNG the loop checkpoints) keeps `X_u`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from stages.cache_spec import LATENTS, cache_spec_from, extraction_spec_for
from stages.extractor import SDExtractor, amplify
from stages.features import ArrayId
from train.config import GuidanceConfig, VisionConfig

__all__ = ["required_arrays", "GuidedFeatures", "extractor_builder"]


def _conditioned(vision: VisionConfig, guidance: GuidanceConfig) -> bool:
    return guidance.scale > 0 and vision.mode != "clip"


def required_arrays(vision: VisionConfig, guidance: GuidanceConfig) -> tuple[str, ...]:
    """Store arrays a batch needs: the mode's arrays plus what guidance reads."""
    ids = list(vision.array_ids)
    if _conditioned(vision, guidance):
        ids.append(f"{vision.sd_array}:caption" if guidance.prompt_source == "caption" else LATENTS)
    return tuple(dict.fromkeys(ids))


def extractor_builder(cache_spec: Mapping[str, Any], sd_array: str, *,
                      device: torch.device | None = None) -> Callable[[], SDExtractor]:
    """A U-Net-only extractor reproducing the store's settings (model, grid, trials, noise seed)."""

    array = ArrayId.parse(sd_array)
    store_spec = cache_spec_from(cache_spec, where=f"the cache_spec recorded with {sd_array}")  # fails now

    def build() -> SDExtractor:
        from stages.models import load_sd_components

        components = load_sd_components(store_spec.model, device=device, with_vae=False)
        return SDExtractor(components, extraction_spec_for(store_spec, features=(str(array.feature),),
                                                           timesteps=(array.timestep,)))

    return build


class GuidedFeatures:
    """The loop's `prepare_features` hook: batch -> the feature dict the vision adapter reads."""

    def __init__(self, *, vision: VisionConfig, guidance: GuidanceConfig,
                 build_extractor: Callable[[], SDExtractor] | None = None) -> None:
        self.vision, self.guidance = vision, guidance
        self.active = _conditioned(vision, guidance)
        if self.active and guidance.prompt_source == "question" and build_extractor is None:
            raise ValueError("question guidance needs an extractor builder (the U-Net runs on cached latents)")
        self._build = build_extractor
        self._extractor: SDExtractor | None = None

    @property
    def extractor(self) -> SDExtractor:
        if self._extractor is None:  # built on first use: s = 0 never loads a U-Net
            self._extractor = self._build()
        return self._extractor

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        features = batch["features"]
        out = {k: features[k] for k in self.vision.array_ids if k in features}
        if not self.active or self.vision.sd_array not in features:  # text-only batch
            return out
        uncond = features[self.vision.sd_array]  # (N_img, T, C)
        if self.guidance.prompt_source == "caption":
            cond = features[f"{self.vision.sd_array}:caption"]
        else:
            cond = self._question_features(batch, uncond)
        out[self.vision.sd_array] = amplify(uncond, cond, self.guidance.scale)
        return out

    def _question_features(self, batch: Mapping[str, Any], uncond: Tensor) -> Tensor:
        keys = [k for k in batch["image_keys"] if k is not None]
        questions = [q for q, k in zip(batch["questions"], batch["image_keys"]) if k is not None]
        # drawn on the host RNG (the one checkpoints restore), then moved beside the features
        keep = (torch.rand(len(keys)) >= self.guidance.prompt_dropout).to(uncond.device)  # (N_img,)
        cond = uncond.clone()
        if keep.any():
            rows = keep.nonzero().flatten().tolist()
            latents = batch["features"][LATENTS][keep]  # (N_keep, 4, h, w)
            computed = self.extractor.features(latents, [keys[i] for i in rows],
                                               prompts=[questions[i] for i in rows], source="question")
            cond[keep] = computed[f"{self.vision.sd_array}:question"].to(cond.device, cond.dtype)
        return cond
