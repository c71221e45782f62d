"""The features a trained run sees at evaluation, served by the feature-serving room (`stages.serving`):
its own stores' arrays for the benchmark images, and, when the run was trained with SD guidance,
`X_u + s·(X_c − X_u)` with `X_c` from one U-Net pass on the cached latents conditioned on the item's SD
prompt — the pass SFT runs, with the same noise contract. An empty prompt (COCO's no-caption setting) is
the unconditional pass: `X = X_u`.

A store row is keyed by an image's path, and an eval root can hold another picture under the same path
(a second `eval_root`, an image replaced): images whose file changed since their rows were cached are
computed from the files with each store's encoder, as `just extract` would, and never read from the
store (DESIGN §8).
"""
from __future__ import annotations

import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from stages.errors import UserError
from stages.llava import QUESTION
from stages.serving import CachedFeatures, LocatedStore, MissingPrompts
from train.conditioning import required_arrays, run_guidance
from train.config import TrainConfig
from train.stores import locate_stores

__all__ = ["ImagesNotCached", "EvalFeatures"]


class ImagesNotCached(UserError, LookupError):
    """Benchmark images missing from the run's stores; the message holds the `just extract` command."""


class EvalFeatures:
    """`features(keys, prompts)` -> `{array_id: (N, T, C)}` on `device`, what the run's adapter reads, for
    images under `image_root` (None: every image is taken to be the one cached under its name)."""

    def __init__(self, config: TrainConfig, *, cache_root: str = "", device: torch.device,
                 image_root: str | Path | None = None) -> None:
        self.config, self.device, self.vision = config, device, config.vision
        self.image_root = None if image_root is None else Path(image_root)
        data = replace(config.data, cache_root=cache_root or config.data.cache_root)
        self.stores: list[LocatedStore] = locate_stores(data)
        guidance = replace(config.guidance, prompt_source=QUESTION)  # the item's SD prompt, given per call
        self.source = CachedFeatures(self.stores, array_ids=required_arrays(self.vision, guidance),
                                     image_root=image_root, device=device)
        self.guidance = run_guidance(self.vision, guidance, source=self.source, device=device)

    @property
    def guided(self) -> bool:
        return self.guidance.active

    @property
    def settings(self) -> dict[str, Any]:
        """What the features depend on besides an image and its SD prompt (part of a result's identity): the
        run's vision setup, the guidance scale applied (0 when none is) and the stores read."""
        return {"vision": asdict(self.vision), "guidance_scale": self.guidance.scale,
                "stores": [store.fingerprint.full for store in self.stores]}

    def check_cached(self, keys: Sequence[str], *, data_json: Path) -> None:
        """Refuse with the extraction commands that fill the stores when any image is not cached; compute
        now the arrays of images whose file changed since it was cached (refusing those that cannot be)."""
        keys = list(dict.fromkeys(keys))
        missing = [k for k in keys if k not in self.source]
        if not missing:
            self._check_changed(keys, data_json=data_json)
            return
        root = f" cache_root={self.config.data.cache_root}" if self.config.data.cache_root else ""
        commands = [f"just extract config={yaml} data=[{data_json}] image_root={self.image_root}{root}"
                    for yaml in self.config.data.extract_configs]
        commands += [f"(store {store}: extract {data_json} into it with the settings it records)"
                     for store in self.config.data.stores]
        raise ImagesNotCached(f"{len(missing)} of {len(set(keys))} benchmark images are not in the run's feature "
                              f"stores (first: {missing[0]!r}; {self.source.why_missing(missing[0])}); "
                              "extract them with:\n  " + "\n  ".join(commands))

    def _check_changed(self, keys: list[str], *, data_json: Path) -> None:
        """One line on stderr when images under `image_root` are not the pictures cached under their names."""
        stale = self.source.stale(keys)
        if not stale:
            return
        extract = f"just extract data=[{data_json}] image_root={self.image_root} (the run's extraction config)"
        print(f"eval: {len(stale)} images under {self.image_root} are not the pictures cached under their names "
              f"(first: {stale[0]!r}); computing their features from the files (to cache them: {extract})",
              file=sys.stderr)
        try:
            self.source.read(stale, self.source.array_ids)
        except MissingPrompts as exc:
            raise ImagesNotCached(f"{stale[0]!r} changed since it was cached and {exc}; re-extract with "
                                  f"{extract}") from None

    def __call__(self, keys: list[str], prompts: list[str]) -> dict[str, Tensor]:
        arrays = self.source.read(keys, self.source.array_ids)
        features = {a: torch.from_numpy(v).to(self.device, torch.float32) for a, v in arrays.items()}
        out = {a: features[a] for a in self.vision.array_ids}
        if self.guided:  # rows with an empty SD prompt keep X_u
            keep = torch.tensor([bool(p) for p in prompts])
            out[self.vision.sd_array] = self.guidance(features, keys=keys, prompts=prompts, keep=keep)
        return out
