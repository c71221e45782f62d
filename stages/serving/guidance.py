"""Guided SD features: `X = X_u + s·(X_c − X_u)` of one SD array (DESIGN §3), for training and evaluation.

- `s = 0`: `X_u` as served; nothing else is read and no U-Net is ever built.
- a prompt source the store holds (`caption`): `X_c` is its cached conditioned array, a linear
  combination of stored arrays, no U-Net pass.
- a prompt source given per sample (`question`, an evaluation item's prompt: `needs_unet_pass`): `X_c`
  comes from one conditional U-Net pass on the stored latents with the sample's noise, stopping after the
  tapped layer, on the U-Net of the store's own spec.
A dropped prompt keeps `X_u`. Training draws the dropout from the host torch RNG, which its checkpoints
restore: a stored source draws only when `prompt_dropout > 0` (runs without dropout keep their RNG
stream), a pass source draws on every batch — as they always have, so resumed runs stay bit-identical.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from stages.cache_spec import CacheSpec
from stages.encoders import FeatureEncoder
from stages.extractor import amplify
from stages.features import LATENTS, ArrayId, conditioned_id
from stages.llava import QUESTION
from stages.serving.compute import load_encoder, needs_unet_pass

__all__ = ["Guidance", "prompted_features"]


@dataclass(frozen=True)
class Guidance:
    """How `sd_array` is guided. `unet`: the spec of the store holding its latents (model, grid, trials,
    noise seed), needed when the prompt source runs a pass; `device`: where that pass runs."""

    sd_array: str
    scale: float = 0.0
    prompt_source: str = QUESTION
    prompt_dropout: float = 0.0
    unet: CacheSpec | None = None
    device: str | torch.device | None = None

    def __post_init__(self) -> None:
        if self.active:
            ArrayId.parse(self.sd_array)  # an SD array id, checked before any batch

    @property
    def active(self) -> bool:
        return self.scale > 0

    @property
    def runs_unet(self) -> bool:
        return self.active and needs_unet_pass(self.prompt_source)

    @property
    def conditioned(self) -> str:
        """`NAME@tT:SOURCE`: the id of `X_c` (a stored array, or the label of the pass computing it)."""
        return conditioned_id(self.sd_array, self.prompt_source)

    @property
    def arrays(self) -> tuple[str, ...]:
        """What guidance reads beside `sd_array`: the stored `X_c`, or the latents a pass runs on."""
        if not self.active:
            return ()
        return (LATENTS,) if self.runs_unet else (self.conditioned,)

    def dropout(self, n: int) -> Tensor | None:
        """`(n,)` bool, the prompts kept, drawn from the host torch RNG (None: every prompt is kept, no draw)."""
        if self.prompt_dropout > 0 or self.runs_unet:
            return torch.rand(n) >= self.prompt_dropout
        return None

    def __call__(self, features: Mapping[str, Tensor], *, keys: Sequence[str], prompts: Sequence[str] = (),
                 keep: Tensor | None = None) -> Tensor:
        """`X` `(N, T, C)` of `features[sd_array]`; `features` also holds `arrays`, `keys` and `prompts` (for
        a pass) one per row. `keep`: `(N,)` bool, the rows conditioned (default: `dropout`)."""
        uncond = features[self.sd_array]  # (N, T, C)
        if not self.active:
            return uncond
        keep = self.dropout(len(uncond)) if keep is None else keep
        keep = None if keep is None else keep.to(uncond.device)
        if self.runs_unet:
            cond = self._passed(uncond, features[LATENTS], keys, prompts, keep)
        else:
            cond = features[self.conditioned]
            cond = cond if keep is None else torch.where(keep[:, None, None], cond, uncond)
        return amplify(uncond, cond, self.scale)

    def _passed(self, uncond: Tensor, latents: Tensor, keys: Sequence[str], prompts: Sequence[str],
                keep: Tensor) -> Tensor:
        cond = uncond.clone()
        if keep.any():
            if self.unet is None:
                raise ValueError(f"guidance from {self.prompt_source!r} runs the U-Net: give the store's spec (unet=)")
            rows = keep.nonzero().flatten().tolist()
            encoder = load_encoder(self.unet, device=self.device, with_vae=False)  # loaded on first use
            computed = prompted_features(encoder, self.sd_array, latents[keep], [keys[i] for i in rows],
                                         [prompts[i] for i in rows], source=self.prompt_source)
            cond[keep] = computed.to(cond.device, cond.dtype)
        return cond


def prompted_features(encoder: FeatureEncoder, sd_array: str, latents: Tensor, keys: Sequence[str],
                      prompts: Sequence[str], *, source: str = QUESTION) -> Tensor:
    """`X_c` of `sd_array` (NAME@tT) for each key's stored latents conditioned on its prompt: one U-Net pass
    with the key's noise (DESIGN §3), stopping after the tap. (N, T, C) float32."""
    prompted = conditioned_id(sd_array, source)  # the pass's own label
    return encoder.features(latents, list(keys), array_ids=[prompted], prompts={source: list(prompts)})[prompted]
