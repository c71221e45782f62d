"""Where an analysis gets its arrays: the store of an extraction YAML, found by fingerprint, and the same
`FeatureEncoder` the extraction runs for whatever that store does not hold.

`FeatureSource.read(keys, array_ids, prompts=...)` serves any array id of the YAML's spec (other feature
names and timesteps too) and conditioned ids `NAME@tT:SOURCE` for prompts given by the caller: arrays the
store holds for those keys are read from it; the rest are computed from the store's latents (or, for keys it
lacks, from the images with the VAE) by one U-Net pass per prompt source, stopping after the deepest tap —
the values `just extract` would write (within float rounding: the unconditional pass runs alone), cast
through the stored dtypes. Every read is counted, so a run
records what came from where, and prints the `just extract` command that would cache what was computed.
"""
from __future__ import annotations

import functools
import json
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from analysis.inputs import view
from stages.cache_spec import LATENTS, CacheSpec, cache_spec_from_yaml, fingerprint_for, image_spec_for
from stages.encoders import FeatureEncoder
from stages.features import ArrayId
from stages.store import Fingerprint, FingerprintMismatch, StoreReader, find_store

__all__ = ["FeatureSource", "CACHEABLE_SOURCES", "write_llava_manifest"]

CACHEABLE_SOURCES = ("caption",)  # prompt sources `just extract` can fill from a LLaVA JSON (first reply)


def write_llava_manifest(path: Path, keys: Sequence[str]) -> Path:
    """A LLaVA JSON listing `keys` (one sample each, no text), so `just extract data=<path>` caches them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [{"id": str(i), "image": key, "conversations": []} for i, key in enumerate(keys)]
    path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return path


class FeatureSource:
    """The arrays of `spec` for images under `image_root`: from the spec's store under `cache_root` where it
    holds them, computed like the extraction otherwise. `yaml_path` only names the config in hints."""

    def __init__(self, spec: CacheSpec, *, cache_root: str | Path, image_root: str | Path,
                 yaml_path: str | Path | None = None, device: str | None = None) -> None:
        self.spec, self.cache_root, self.image_root = spec, Path(cache_root), Path(image_root)
        self.yaml_path, self.device = yaml_path, device
        self.fingerprint: Fingerprint = fingerprint_for(spec)
        self.image_spec = image_spec_for(spec)
        try:
            path = find_store(self.cache_root, self.fingerprint)
        except FingerprintMismatch as exc:
            raise FingerprintMismatch(f"{exc}\n(the store for {yaml_path or 'this spec'} is expected there)") from exc
        self.reader = StoreReader(path, expect=self.fingerprint) if path is not None else None
        self._held = frozenset(self.reader.keys) if self.reader is not None else frozenset()
        self._encoder: FeatureEncoder | None = None
        self.counts: Counter[str] = Counter()  # "read" / "computed" array rows
        self.computed_keys: set[str] = set()
        self.computed_ids: set[str] = set()

    @classmethod
    def from_yaml(cls, yaml_path: str | Path, *, image_root: str | Path, cache_root: str | Path | None = None,
                  device: str | None = None) -> "FeatureSource":
        spec, yaml_root = cache_spec_from_yaml(yaml_path)
        return cls(spec, cache_root=cache_root or yaml_root, image_root=image_root, yaml_path=yaml_path,
                   device=device)

    @property
    def encoder(self) -> FeatureEncoder:
        if self._encoder is None:  # loaded on first need: a run served by the store loads no model
            # prompt sources decide only which arrays a store holds (and how its passes pair up): computed
            # arrays run the unconditional pass alone and each conditioned source in a pass of its own
            self._encoder = _load_encoder(replace(self.spec, prompt_sources=()), self.device)
        return self._encoder

    def describe(self) -> dict[str, Any]:
        """Provenance for a run's config: the store, its fingerprint, and how many rows came from where."""
        return {"store": str(self.reader.paths.root) if self.reader is not None else None,
                "fingerprint": self.fingerprint.full, "rows_read": self.counts["read"],
                "rows_computed": self.counts["computed"], "keys_computed": len(self.computed_keys)}

    def cache_hint(self, manifest: Path | None = None) -> str:
        """The `just extract` command that would cache what this source had to compute: the config, plus
        the feature names, timesteps and prompt sources it lacks (none of them changes the fingerprint)."""
        parts = ["just extract"] + ([f"config={self.yaml_path}"] if self.yaml_path else [])
        parts.append(f"cache_root={self.cache_root}")
        has_latents = self.spec.kind.has_latents  # an SD spec: its arrays are NAME@tT[:SOURCE]
        ids = [ArrayId.parse(a) for a in sorted(self.computed_ids) if a != LATENTS] if has_latents else []
        wanted = {"features": list(self.spec.features), "timesteps": list(self.spec.timesteps),
                  "prompt_sources": list(self.spec.prompt_sources)}
        for array_id in ids:
            for field, value in (("features", str(array_id.feature)), ("timesteps", array_id.timestep),
                                 ("prompt_sources", array_id.source)):
                if value is not None and value not in wanted[field] and (
                        field != "prompt_sources" or value in CACHEABLE_SOURCES):
                    wanted[field].append(value)
        for field, values in wanted.items():
            if values != list(getattr(self.spec, field)):
                parts.append(f"{field}=[{','.join(map(str, values))}]")
        if manifest is not None:
            parts += [f"data={manifest}", f"image_root={self.image_root}"]
        return " ".join(parts)

    def read(self, keys: Sequence[str], array_ids: Sequence[str], *,
             prompts: Mapping[str, Sequence[str]] | None = None) -> dict[str, np.ndarray]:
        """`{array_id: (len(keys), *shape) float32}`; `prompts[source]` holds one text per key for each
        conditioned source that is computed rather than read."""
        keys, ids = list(keys), list(dict.fromkeys(array_ids))
        held = [i for i, k in enumerate(keys) if k in self._held]
        other = [i for i, k in enumerate(keys) if k not in self._held]
        parts: list[tuple[list[int], dict[str, np.ndarray]]] = []
        if held:
            parts.append((held, self._from_store([keys[i] for i in held], ids, _subset(prompts, held))))
        if other:
            parts.append((other, self._computed([keys[i] for i in other], ids, _subset(prompts, other), None)))
        out = {}
        for array_id in ids:
            first = parts[0][1][array_id]
            out[array_id] = np.empty((len(keys), *first.shape[1:]), np.float32)
            for rows, arrays in parts:
                out[array_id][rows] = arrays[array_id]
        return out

    def _from_store(self, keys: list[str], ids: list[str], prompts: Mapping[str, Sequence[str]] | None
                    ) -> dict[str, np.ndarray]:
        stored = [a for a in ids if a in self.reader.infos]
        missing = [a for a in ids if a not in self.reader.infos]
        out = {a: v.astype(np.float32) for a, v in self.reader.read(keys, stored).items()} if stored else {}
        self.counts["read"] += len(keys) * len(stored)
        if missing:
            latents = None
            if LATENTS in self.reader.infos:
                latents = torch.from_numpy(self.reader.read(keys, [LATENTS])[LATENTS].astype(np.float32))
            out.update(self._computed(keys, missing, prompts, latents))
        return out

    def _computed(self, keys: list[str], ids: list[str], prompts: Mapping[str, Sequence[str]] | None,
                  latents: torch.Tensor | None) -> dict[str, np.ndarray]:
        """The arrays `ids` as `just extract` computes them (latents from `latents` when given)."""
        encoder = self.encoder
        if latents is None:
            images = np.stack([view(self.image_root, k, self.image_spec) for k in keys])  # (B, R, R, 3) uint8
            if not self.spec.kind.has_latents:  # a backbone without latents (CLIP): its arrays at once
                arrays = encoder.encode(images, keys, {})
                self._count_computed(keys, ids)
                return {a: v.astype(np.float32) for a, v in encoder.stored({a: arrays[a] for a in ids}).items()}
            latents = encoder.latents(images)
        features = encoder.features(latents, keys, prompts=prompts, array_ids=[a for a in ids if a != LATENTS])
        arrays = {**features, LATENTS: latents} if LATENTS in ids else features
        self._count_computed(keys, ids)
        return {a: v.astype(np.float32) for a, v in encoder.stored({a: arrays[a] for a in ids}).items()}

    def _count_computed(self, keys: list[str], ids: list[str]) -> None:
        self.counts["computed"] += len(keys) * len(ids)
        self.computed_keys.update(keys)
        self.computed_ids.update(ids)

    def latents(self, keys: Sequence[str]) -> torch.Tensor:
        """`(B, 4, h, w)` float32 z0 of `keys`, cached where the store has them."""
        return torch.from_numpy(self.read(keys, [LATENTS])[LATENTS])

    def report(self, manifest: Path | None = None) -> None:
        """One line on stderr when something had to be computed: what, and how to cache it."""
        if self.counts["computed"]:
            where = "no store" if self.reader is None else f"store {self.reader.paths.root} lacks them"
            print(f"analysis: computed {self.counts['computed']} array rows for {len(self.computed_keys)} images "
                  f"({where}); to cache them: {self.cache_hint(manifest)}", file=sys.stderr)


@functools.lru_cache(maxsize=4)
def _load_encoder(spec: CacheSpec, device: str | None) -> FeatureEncoder:
    """One load per spec and device in a process (`inspect` runs every analysis on the same models)."""
    return spec.kind.load(spec, device=device)


def _subset(prompts: Mapping[str, Sequence[str]] | None, rows: list[int]) -> dict[str, list[str]] | None:
    return None if prompts is None else {s: [texts[i] for i in rows] for s, texts in prompts.items()}
