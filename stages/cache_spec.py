"""What a cache holds, as one frozen value: `CacheSpec` -> fingerprint, array ids, array shapes.

The extraction pipeline writes a store for a `CacheSpec`; the trainer rebuilds the same spec from its
config to find that store (`find_store(cache_root, fingerprint_for(spec))`), so this module is
Ray-free and loads no weights: fingerprints hash weight files (memoised), shapes come from a forward
on the meta device. Everything that depends on the backbone is asked of its registry entry
(`stages.encoders.ENCODERS[spec.encoder]`).

Stored dtypes: features float16 (655 KB per 256x1280 image), or a compact dtype (`int8`, `float8_e4m3fn`:
codes with a float16 scale per token, `stages.store.compact`, half the bytes); SD latents float32 (64 KB per
image at 512 px, small next to the features; never compact: they feed the U-Net) so that the unconditional
features, computed from the latents as stored, and a later on-the-fly conditional pass on the cached latents
see exactly the same `z0`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from stages.config import build_dataclass, load_config
from stages.encoders import EncoderKind, encoder_kind
from stages.extractor import ExtractionSpec
from stages.features import LATENTS
from stages.models import resolve_model_dir
from stages.preprocess import CLIP_MEAN_RGB, ImageSpec
from stages.store.compact import COMPACT
from stages.store.fingerprint import Fingerprint

__all__ = ["CacheSpec", "LATENTS", "POOLING", "cache_spec_from", "cache_spec_from_yaml", "image_spec_for", "fingerprint_for",
           "array_shapes_for", "spec_summary"]

# DESIGN §3 pooling: F.interpolate area when shrinking, bilinear (align_corners=False) when growing
POOLING = "area-shrink/bilinear-grow"


@dataclass(frozen=True)
class CacheSpec:
    """Every setting that determines the stored values (and nothing about how the run is executed)."""

    model: str = "embedded:tiny-sd"
    encoder: str = "sd"  # a key of stages.encoders.ENCODERS: "sd", "sdxl" (latents + U-Net taps), "clip" (patch tokens)
    resolution: int | None = 512  # None: the encoder's native size (CLIP only)
    resize_mode: str = "pad"
    pad_color: tuple[int, int, int] = CLIP_MEAN_RGB
    features: tuple[str, ...] = ("U-L1-R1-B0-Cross-Q",)
    timesteps: tuple[int, ...] = (50,)
    grid: int | None = 16  # token grid side; None keeps the native grid (CLIP only)
    trials: int = 1
    seed: int = 0
    feature_dtype: str = "float16"  # or a compact dtype: "int8", "float8_e4m3fn" (stages.store.compact)
    latents_dtype: str = "float32"
    prompt_sources: tuple[str, ...] = ()  # e.g. ("caption",): also store caption-conditioned arrays

    def __post_init__(self) -> None:
        if self.feature_dtype not in COMPACT and np.dtype(self.feature_dtype).kind != "f":
            raise ValueError(f"feature_dtype {self.feature_dtype!r} is neither a floating-point dtype nor a compact "
                             f"one ({', '.join(COMPACT)})")
        if np.dtype(self.latents_dtype).kind != "f":
            raise ValueError(f"latents_dtype {self.latents_dtype!r} is not a floating-point dtype (latents are "
                             "never compact: the U-Net reads them)")
        self.kind.validate(self)
        if self.grid is not None and self.grid <= 0 or self.trials <= 0:
            raise ValueError("grid and trials must be positive")

    @property
    def kind(self) -> EncoderKind:
        """The registry entry of this spec's backbone."""
        return encoder_kind(self.encoder)

    def array_ids(self) -> list[str]:
        """Ids of every array a store for this spec holds (`latents`, `NAME@tT[:SOURCE]`, `CLIP-L-2`)."""
        return self.kind.array_ids(self)

    def stored_dtype(self, array_id: str) -> str:
        return self.latents_dtype if array_id == LATENTS else self.feature_dtype

    def extraction_spec(self, *, features: Sequence[str] | None = None,
                        timesteps: Sequence[int] | None = None) -> ExtractionSpec:
        """The U-Net tap settings that reproduce this spec's values (optionally for a subset of its
        names and timesteps: noise depends on key, trial and seed only)."""
        return ExtractionSpec(features=tuple(features or self.features), timesteps=tuple(timesteps or self.timesteps),
                              grid=self.grid, trials=self.trials, seed=self.seed)


def cache_spec_from(values: Mapping[str, Any], *, where: str) -> CacheSpec:
    """The `CacheSpec` of an extraction config mapping; its run fields (and nothing else) are ignored."""
    names = {f.name for f in fields(CacheSpec)}
    return build_dataclass(CacheSpec, {k: v for k, v in values.items() if k in names}, where=where)


def cache_spec_from_yaml(path: str | Path) -> tuple[CacheSpec, str]:
    """The `CacheSpec` of an extraction YAML (its run fields ignored) and the YAML's `cache_root`."""
    from stages.locations import DEFAULT_CACHE_ROOT

    values = load_config(path)
    return cache_spec_from(values, where=str(path)), str(values.get("cache_root", DEFAULT_CACHE_ROOT))


def image_spec_for(spec: CacheSpec, *, model_dir: Path | None = None, max_pixels: int | None = None) -> ImageSpec:
    """The CPU-side preprocessing of the images the backbone sees."""
    extra = {} if max_pixels is None else {"max_pixels": max_pixels}
    return spec.kind.image_spec(spec, model_dir or resolve_model_dir(spec.model), **extra)


def fingerprint_for(spec: CacheSpec, *, memo_path: str | Path | None = None) -> Fingerprint:
    """DESIGN §4 fields: weight content hashes, scheduler config, preprocessing, noise, pooling, dtypes.
    Feature names, timesteps and prompt sources are array ids inside the store, not fields."""
    model_dir = resolve_model_dir(spec.model)
    image = image_spec_for(spec, model_dir=model_dir)
    preprocess = {"resolution": image.resolution, "resize_mode": image.resize_mode,
                  "pad_color": list(image.pad_color)}
    pooling = {"grid": spec.grid, "mode": POOLING if spec.grid is not None else "native"}
    return Fingerprint.from_fields(spec.kind.fingerprint_fields(spec, model_dir, preprocess=preprocess,
                                                                pooling=pooling, memo_path=memo_path))


def array_shapes_for(spec: CacheSpec) -> dict[str, tuple[tuple[int, ...], str]]:
    """`{array_id: (sample_shape, stored dtype)}` for every array of `spec.array_ids()`."""
    shapes = spec.kind.sample_shapes(spec, resolve_model_dir(spec.model))
    return {a: (tuple(s), spec.stored_dtype(a)) for a, s in shapes.items()}


def spec_summary(spec: CacheSpec) -> dict[str, Any]:
    """The spec as plain JSON-able fields (recorded in store attributes)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}
