"""Where an analysis gets its arrays: the feature-serving room's `SpecFeatures` (`stages.serving`) over the
store of an extraction YAML, found by fingerprint, computing with the same `FeatureEncoder` the extraction
runs whatever that store does not hold.

`AnalysisFeatures.read(keys, array_ids, prompts=...)` serves any array id of the YAML's spec (other feature
names and timesteps too) and conditioned ids `NAME@tT:SOURCE` for prompts given by the caller, as float32:
arrays the store holds for those keys are read from it; the rest are computed from the store's latents (or,
for keys it lacks or whose image file changed, from the images with the VAE) by one U-Net pass per prompt
source, stopping after the deepest tap — the values `just extract` would write (within float rounding: the
unconditional pass runs alone), cast through the stored dtypes. Every read is counted, so a run records
what came from where, and prints the `just extract` command that would cache what was computed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stages.embedded import embedded_model
from stages.encoders import Prompts
from stages.features import LATENTS, ArrayId
from stages.serving import SpecFeatures, YamlStore, find_yaml_store, needs_unet_pass

__all__ = ["AnalysisFeatures", "write_llava_manifest"]


def write_llava_manifest(path: Path, keys: Sequence[str]) -> Path:
    """A LLaVA JSON listing `keys` (one sample each, no text), so `just extract data=<path>` caches them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [{"id": str(i), "image": key, "conversations": []} for i, key in enumerate(keys)]
    path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return path


class AnalysisFeatures(SpecFeatures):
    """The arrays of an extraction YAML's spec for images under `image_root`, as float32: from its store
    where it holds them, computed like the extraction otherwise."""

    def __init__(self, found: YamlStore, *, image_root: str | Path, device: str | None = None) -> None:
        super().__init__(found.spec, store=found.store, image_root=image_root, compute_missing=True, device=device)
        self.found, self.fingerprint = found, found.fingerprint

    @classmethod
    def from_yaml(cls, yaml_path: str | Path, *, image_root: str | Path, cache_root: str | Path | None = None,
                  device: str | None = None) -> "AnalysisFeatures":
        return cls(find_yaml_store(yaml_path, cache_root=cache_root), image_root=image_root, device=device)

    def describe(self) -> dict[str, Any]:
        """`SpecFeatures.describe` and the model, named as `stages.embedded.embedded_model` tells it."""
        return {**super().describe(), "model": self.spec.model, "embedded": embedded_model(self.spec.model)}

    def read(self, keys: Sequence[str], array_ids: Sequence[str], *,
             prompts: Prompts | None = None) -> dict[str, np.ndarray]:
        """`{array_id: (len(keys), *shape) float32}`; `prompts[source]` holds one text per key for each
        conditioned source that is computed rather than read."""
        return {a: v.astype(np.float32) for a, v in super().read(keys, array_ids, prompts=prompts).items()}

    def cache_hint(self, manifest: Path | None = None) -> str:
        """The `just extract` command that would cache what this source had to compute: the config, plus
        the feature names, timesteps and prompt sources it lacks (none of them changes the fingerprint)."""
        spec = self.spec
        parts = ["just extract", f"config={self.found.yaml_path}", f"cache_root={self.found.cache_root}"]
        ids = [ArrayId.parse(a) for a in sorted(self.computed_ids) if a != LATENTS] if spec.kind.has_latents else []
        wanted = {"features": list(spec.features), "timesteps": list(spec.timesteps),
                  "prompt_sources": list(spec.prompt_sources)}
        for array_id in ids:
            for field, value in (("features", str(array_id.feature)), ("timesteps", array_id.timestep),
                                 ("prompt_sources", array_id.source)):
                stored = field != "prompt_sources" or not needs_unet_pass(value)  # a source `just extract` stores
                if value is not None and value not in wanted[field] and stored:
                    wanted[field].append(value)
        for field, values in wanted.items():
            if values != list(getattr(spec, field)):
                parts.append(f"{field}=[{','.join(map(str, values))}]")
        if manifest is not None:
            parts += [f"data={manifest}", f"image_root={self.image_root}"]
        return " ".join(parts)

    def report(self, manifest: Path | None = None) -> None:
        """One line on stderr when something had to be computed: what, and how to cache it."""
        if self.counts["computed"]:
            where = "no store" if self.reader is None else f"store {self.reader.paths.root} lacks them"
            print(f"analysis: computed {self.counts['computed']} array rows for {len(self.computed_keys)} images "
                  f"({where}); to cache them: {self.cache_hint(manifest)}", file=sys.stderr)
