"""The features a trained run sees at evaluation: its own stores' arrays for the benchmark images, and,
when the run was trained with SD guidance, `X_u + s·(X_c − X_u)` with `X_c` from one U-Net pass on the
cached latents conditioned on the item's SD prompt — the pass SFT runs (`train.conditioning`), with the
same noise contract. An empty prompt (COCO's no-caption setting) is the unconditional pass: `X = X_u`.

A store row is keyed by an image's path, and an eval root can hold another picture under the same path
(a second `eval_root`, an image replaced): images whose file changed since their rows were cached
(`stages.image_files`) are computed from the files with each store's encoder, as `just extract` would,
and never read from the store (DESIGN §8).
"""
from __future__ import annotations

import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from stages.cache_spec import LATENTS, cache_spec_from, image_spec_for
from stages.errors import UserError
from stages.extractor import amplify
from stages.image_files import changed_keys
from stages.preprocess import load_image, preprocess
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
        self._recomputed: dict[str, dict[str, np.ndarray]] = {}  # key -> array id -> values (changed images)

    @property
    def settings(self) -> dict[str, Any]:
        """What the features depend on besides an image and its SD prompt (part of a result's identity): the
        run's vision setup, the guidance scale applied (0 when none is) and the stores read."""
        return {"vision": asdict(self.vision), "guidance_scale": self.guidance.scale if self.guided else 0.0,
                "stores": [store.fingerprint.full for store in self.stores]}

    def check_cached(self, keys: Sequence[str], *, data_json: Path, image_root: Path) -> None:
        """Refuse with the extraction commands that fill the stores when any image is not cached; compute
        the arrays of images whose file changed since it was cached (`_recompute`)."""
        missing = [k for k in dict.fromkeys(keys) if k not in self.source]
        if not missing:
            self._recompute(list(dict.fromkeys(keys)), image_root, data_json=data_json)
            return
        root = f" cache_root={self.config.data.cache_root}" if self.config.data.cache_root else ""
        commands = [f"just extract config={yaml} data=[{data_json}] image_root={image_root}{root}"
                    for yaml in self.config.data.extract_configs]
        commands += [f"(store {store}: extract {data_json} into it with the settings it records)"
                     for store in self.config.data.stores]
        raise ImagesNotCached(f"{len(missing)} of {len(set(keys))} benchmark images are not in the run's feature "
                              f"stores (first: {missing[0]!r}; {self.source.why_missing(missing[0])}); "
                              "extract them with:\n  " + "\n  ".join(commands))

    def _recompute(self, keys: list[str], image_root: Path, *, data_json: Path) -> None:
        """The arrays of those `keys` whose image file under `image_root` is not the one their rows were
        computed from, from the files, in the stores' dtypes (one line on stderr says how many)."""
        stale = sorted({k for reader in self.source.readers
                        for k in changed_keys(image_root, keys, reader.image_stamps(keys))})
        if not stale:
            return
        print(f"eval: {len(stale)} images under {image_root} are not the pictures cached under their names "
              f"(first: {stale[0]!r}); computing their features from the files (to cache them: "
              f"just extract data=[{data_json}] image_root={image_root} with the run's extraction config)",
              file=sys.stderr)
        for reader in self.source.readers:
            spec = cache_spec_from(reader.attrs["cache_spec"], where=f"{reader.paths.root} (recorded cache_spec)")
            unconditional = replace(spec, prompt_sources=())  # what a caption-free image can be computed to
            lacking = [a for a in reader.array_ids if a not in unconditional.array_ids()]
            if lacking:
                raise ImagesNotCached(f"{stale[0]!r} changed since it was cached and {lacking} cannot be computed "
                                      f"without its caption: re-extract with just extract data=[{data_json}] "
                                      f"image_root={image_root} (the run's extraction config)")
            encoder, image_spec = unconditional.kind.load(unconditional, device=self.device), image_spec_for(spec)
            images = np.stack([np.asarray(preprocess(load_image(image_root, k, max_pixels=image_spec.max_pixels),
                                                     image_spec)) for k in stale])  # (B, R, R, 3) uint8
            computed = encoder.stored(encoder.encode(images, stale, {}))
            for i, key in enumerate(stale):
                self._recomputed.setdefault(key, {}).update({a: computed[a][i] for a in reader.array_ids})

    def _read(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The served arrays of `keys`: recomputed rows for changed images, the stores' for the others."""
        ids = list(self.source.array_ids)
        if not self._recomputed:
            return self.source.read(keys, ids)
        cached = [k for k in keys if k not in self._recomputed]
        stored, row = (self.source.read(cached, ids) if cached else {}), {k: i for i, k in enumerate(cached)}
        return {a: np.stack([stored[a][row[k]] if k in row else self._recomputed[k][a] for k in keys]) for a in ids}

    def __call__(self, keys: list[str], prompts: list[str]) -> dict[str, Tensor]:
        arrays = self._read(keys)
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
