"""The SD features the model consumes: a run's guidance settings as the feature-serving room's `Guidance`
(`stages.serving.guidance`: `X_u + s·(X_c − X_u)`, with `X_c` cached or from a pass on the cached
latents), and the loop's feature hook applying it to a collated batch.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from stages.serving import FeatureSource, Guidance
from train.batch import Batch
from train.config import GuidanceConfig, VisionConfig

__all__ = ["guidance_applies", "run_guidance", "required_arrays", "GuidedFeatures"]

def guidance_applies(vision: VisionConfig, guidance: GuidanceConfig) -> bool:
    """A positive scale on a mode that reads an SD array."""
    return guidance.scale > 0 and vision.mode_spec.guided


def run_guidance(vision: VisionConfig, guidance: GuidanceConfig, *, source: FeatureSource | None = None,
                 device: torch.device | None = None) -> Guidance:
    """The room's `Guidance` of a run (scale 0 where it does not apply). A prompt source that runs a U-Net
    pass takes the settings of the store holding the SD array from `source` (checked now)."""
    scale = guidance.scale if guidance_applies(vision, guidance) else 0.0
    settings = Guidance(sd_array=vision.sd_array, scale=scale, prompt_source=guidance.prompt_source,
                        prompt_dropout=guidance.prompt_dropout, device=device)
    if settings.runs_unet and source is not None:
        settings = replace(settings, unet=source.spec_of(vision.sd_array))
    return settings


def required_arrays(vision: VisionConfig, guidance: GuidanceConfig) -> tuple[str, ...]:
    """Store arrays a batch needs: the mode's arrays plus what guidance reads."""
    return tuple(dict.fromkeys([*vision.array_ids, *run_guidance(vision, guidance).arrays]))


class GuidedFeatures:
    """The loop's `prepare_features` hook: batch -> the feature dict the vision adapter reads. `source`
    gives the U-Net settings of a question-guided run; s = 0 never loads a U-Net."""

    def __init__(self, *, vision: VisionConfig, guidance: GuidanceConfig, source: FeatureSource | None = None,
                 device: torch.device | None = None) -> None:
        self.vision = vision
        self.guidance = run_guidance(vision, guidance, source=source, device=device)
        if self.guidance.runs_unet and self.guidance.unet is None:
            raise ValueError("question guidance needs the feature source (the U-Net runs on cached latents)")

    def __call__(self, batch: Batch) -> dict[str, Tensor]:
        features = batch.features
        out = {k: features[k] for k in self.vision.array_ids if k in features}
        if not self.guidance.active or self.vision.sd_array not in features:  # text-only batch
            return out
        images = [i for i, k in enumerate(batch.image_keys) if k is not None]
        texts = batch.prompts[self.guidance.prompt_source]
        out[self.vision.sd_array] = self.guidance(features, keys=[batch.image_keys[i] for i in images],
                                                  prompts=[texts[i] for i in images])
        return out
