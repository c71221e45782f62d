"""The features a trained run sees at evaluation: its own stores' arrays for the benchmark images, and,
when the run was trained with SD guidance, `X_u + s·(X_c − X_u)` with `X_c` from one U-Net pass on the
cached latents conditioned on the item's SD prompt — the pass SFT runs (`train.conditioning`), with the
same noise contract. An empty prompt (COCO's no-caption setting) is the unconditional pass: `X = X_u`.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from stages.cache_spec import LATENTS
from stages.errors import UserError
from stages.extractor import amplify
from train.conditioning import encoder_builder, guidance_applies, prompted_features
from train.config import TrainConfig
from train.stores import CachedFeatures, LocatedStore, locate_stores

__all__ = ["ImagesNotCached", "EvalFeatures"]


class ImagesNotCached(UserError, LookupError):
    """Benchmark images missing from the run's stores; the message holds the `just extract` command."""


class EvalFeatures:
    """`features(keys, prompts)` -> `{array_id: (N, T, C)}` on `device`, what the run's adapter reads."""

    def __init__(self, config: TrainConfig, *, cache_root: str = "", device: torch.device) -> None:
        self.config, self.device = config, device
        self.vision, self.guidance = config.vision, config.guidance
        self.guided = guidance_applies(self.vision, self.guidance)
        data = replace(config.data, cache_root=cache_root or config.data.cache_root)
        self.stores: list[LocatedStore] = locate_stores(data)
        array_ids = (*self.vision.array_ids, *((LATENTS,) if self.guided else ()))
        self.source = CachedFeatures(self.stores, array_ids=array_ids)
        sd = self.vision.sd_array
        self._build = encoder_builder(self.source.cache_spec(sd), sd, device=device) if self.guided else None
        self._encoder = None

    @property
    def fingerprints(self) -> list[str]:
        return [str(store.fingerprint) for store in self.stores]

    def check_cached(self, keys: Sequence[str], *, data_json: Path, image_root: Path) -> None:
        """Refuse with the extraction commands that fill the stores when any image is not cached."""
        missing = [k for k in dict.fromkeys(keys) if k not in self.source]
        if not missing:
            return
        root = f" cache_root={self.config.data.cache_root}" if self.config.data.cache_root else ""
        commands = [f"just extract config={yaml} data=[{data_json}] image_root={image_root}{root}"
                    for yaml in self.config.data.extract_configs]
        commands += [f"(store {store}: extract {data_json} into it with the settings it records)"
                     for store in self.config.data.stores]
        raise ImagesNotCached(f"{len(missing)} of {len(set(keys))} benchmark images are not in the run's feature "
                              f"stores (first: {missing[0]!r}; {self.source.why_missing(missing[0])}); "
                              "extract them with:\n  " + "\n  ".join(commands))

    def __call__(self, keys: list[str], prompts: list[str]) -> dict[str, Tensor]:
        arrays = self.source.read(keys, list(self.source.array_ids))
        features = {a: torch.from_numpy(v).to(self.device, torch.float32) for a, v in arrays.items()}
        out = {a: features[a] for a in self.vision.array_ids}
        if self.guided:
            sd = self.vision.sd_array
            cond = out[sd].clone()
            rows = [i for i, p in enumerate(prompts) if p]
            if rows:
                if self._encoder is None:  # built on first use: an unguided evaluation never loads a U-Net
                    self._encoder = self._build()
                computed = prompted_features(self._encoder, sd, features[LATENTS][rows], [keys[i] for i in rows],
                                             [prompts[i] for i in rows])
                cond[rows] = computed.to(cond.device, cond.dtype)
            out[sd] = amplify(out[sd], cond, self.guidance.scale)
        return out
