"""Computing arrays as `just extract` computes them: preprocessed images (or stored latents) -> a spec's
`FeatureEncoder` -> arrays as a store takes them.

The extraction worker runs `compute_arrays` on every mini-batch with the encoder of the store's spec (its
pass layout pairs the unconditional half with the first prompt source). Serving loads its encoders with
`load_encoder`, which drops the prompt sources: prompt sources decide only which arrays a store holds and
how its passes pair up, so a served array runs the unconditional pass alone and each conditioned source in
a pass of its own (values equal to the store's within float rounding).
"""
from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from stages.cache_spec import CacheSpec
from stages.encoders import FeatureEncoder, Prompts, SDFeatureEncoder
from stages.errors import UserError
from stages.features import LATENTS, ArrayId
from stages.llava import PROMPT_TEXT
from stages.preprocess import ImageSpec, load_image, preprocess

__all__ = ["MissingPrompts", "needs_unet_pass", "load_encoder", "load_images", "compute_arrays"]


class MissingPrompts(UserError, KeyError):
    """Conditioned arrays asked to be computed without the texts of their prompt source."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def needs_unet_pass(source: str) -> bool:
    """Whether `X_c` of prompt source `source` comes from a U-Net pass on stored latents when it is served:
    a text given per sample at serving time (`question`, an evaluation item's prompt), not one `just
    extract` stores from a LLaVA JSON (`stages.llava.PROMPT_TEXT`: `caption`). The one place that decides."""
    return source not in PROMPT_TEXT


@functools.lru_cache(maxsize=4)
def load_encoder(spec: CacheSpec, *, device: str | torch.device | None = None,
                 with_vae: bool = True) -> FeatureEncoder:
    """The encoder serving `spec`'s arrays, its prompt sources dropped (module docstring); loaded once per
    spec and device in a process. `with_vae=False`: a U-Net-only encoder, for passes on stored latents."""
    spec = replace(spec, prompt_sources=())
    if with_vae or not spec.kind.has_latents:
        return spec.kind.load(spec, device=device)
    return SDFeatureEncoder.load(spec, device=device, with_vae=False)


def load_images(image_root: str | Path, keys: Sequence[str], image_spec: ImageSpec) -> np.ndarray:
    """uint8 `(B, R, R, 3)`: the images of `keys` as the backbone receives them (padded or cropped, resized)."""
    return np.stack([np.asarray(preprocess(load_image(image_root, k, max_pixels=image_spec.max_pixels), image_spec))
                     for k in keys])


def _check_prompts(array_ids: Sequence[str], prompts: Prompts) -> None:
    sources = sorted({ArrayId.parse(a).source for a in array_ids} - {None} - set(prompts))
    if sources:
        raise MissingPrompts(f"arrays {list(array_ids)} are conditioned on prompt source(s) {sources}, whose "
                             "texts were not given: they can only be read from a store that holds them")


def compute_arrays(encoder: FeatureEncoder, keys: Sequence[str], *, array_ids: Sequence[str],
                   images: np.ndarray | None = None, latents: torch.Tensor | None = None,
                   prompts: Prompts | None = None) -> dict[str, np.ndarray]:
    """`{array_id: (B, ...)}` as a store takes them (`FeatureEncoder.stored`) for `keys`, from uint8 `images`
    `(B, R, R, 3)` or, for a backbone with latents, from `latents` `(B, 4, h, w)` float32 (the stored ones:
    no VAE runs).
    `prompts[source]` holds one text per key for each conditioned source of `array_ids`."""
    prompts = prompts or {}
    if not encoder.spec.kind.has_latents:
        arrays = encoder.encode(images, keys, prompts)
    else:
        features = [a for a in array_ids if a != LATENTS]
        _check_prompts(features, prompts)
        latents = encoder.latents(images) if latents is None else latents  # rounded to the stored dtype
        arrays = {LATENTS: latents}
        if features:  # (an empty list would ask the encoder for every array of its spec)
            arrays.update(encoder.features(latents, keys, prompts=prompts, array_ids=features))
    return encoder.stored({a: arrays[a] for a in array_ids})
