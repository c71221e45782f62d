"""The encoder registry: `ENCODERS[spec.encoder]` knows a backbone's arrays, shapes, preprocessing,
fingerprint fields, whether it stores latents, its pass layout and FLOPs, and loads the `FeatureEncoder`
that computes them. A new backbone is a new entry."""
from __future__ import annotations

from typing import Mapping

from stages.encoders.base import EncoderKind, FeatureEncoder, Prompts
from stages.encoders.clip import CLIP, CLIP_ARRAY_ID, ClipFeatureEncoder
from stages.encoders.sd import SD, SDFeatureEncoder
from stages.encoders.sdxl import SDXL

__all__ = ["ENCODERS", "encoder_kind", "EncoderKind", "FeatureEncoder", "Prompts", "SDFeatureEncoder",
           "ClipFeatureEncoder", "CLIP_ARRAY_ID"]

ENCODERS: Mapping[str, EncoderKind] = {kind.name: kind for kind in (SD, SDXL, CLIP)}


def encoder_kind(name: str) -> EncoderKind:
    if name not in ENCODERS:
        raise ValueError(f"encoder {name!r} is not one of {sorted(ENCODERS)}")
    return ENCODERS[name]
