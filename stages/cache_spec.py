"""What a cache holds, as one frozen value: `CacheSpec` -> fingerprint, array ids, array shapes.

The extraction pipeline writes a store for a `CacheSpec`; the trainer rebuilds the same spec from its
config to find that store (`find_store(cache_root, fingerprint_for(spec))`), so this module is
Ray-free and loads no weights: fingerprints hash weight files (memoised), shapes come from a forward
on the meta device.

Stored dtypes: features float16 (655 KB per 256x1280 image); SD latents float32 (64 KB per image at
512 px, small next to the features) so that the unconditional features, computed from the latents as
stored, and a later on-the-fly conditional pass on the cached latents see exactly the same `z0`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from stages.extractor import check_resolution
from stages.features import ArrayId, FeatureName
from stages.models import resolve_model_dir
from stages.preprocess import CLIP_MEAN_RGB, ImageSpec
from stages.store.fingerprint import Fingerprint, contract_fields

if TYPE_CHECKING:
    from stages.extractor import ExtractionSpec

__all__ = ["CacheSpec", "ENCODERS", "LATENTS", "POOLING", "cache_spec_from", "extraction_spec_for", "image_spec_for",
           "fingerprint_for", "array_ids_for", "array_shapes_for", "spec_summary"]

ENCODERS = ("sd", "clip")
LATENTS = "latents"
SD_COMPONENTS = ("vae", "unet", "text_encoder", "tokenizer")
# DESIGN §3 pooling: F.interpolate area when shrinking, bilinear (align_corners=False) when growing
POOLING = "area-shrink/bilinear-grow"


@dataclass(frozen=True)
class CacheSpec:
    """Every setting that determines the stored values (and nothing about how the run is executed)."""

    model: str = "embedded:tiny-sd"
    encoder: str = "sd"  # "sd": VAE latents + U-Net taps; "clip": CLIP vision patch tokens
    resolution: int | None = 512  # None: the encoder's native size (CLIP only)
    resize_mode: str = "pad"
    pad_color: tuple[int, int, int] = CLIP_MEAN_RGB
    features: tuple[str, ...] = ("U-L1-R1-B0-Cross-Q",)
    timesteps: tuple[int, ...] = (50,)
    grid: int | None = 16  # token grid side; None keeps the native grid (CLIP only)
    trials: int = 1
    seed: int = 0
    feature_dtype: str = "float16"
    latents_dtype: str = "float32"
    prompt_sources: tuple[str, ...] = ()  # e.g. ("caption",): also store caption-conditioned arrays

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder {self.encoder!r} is not one of {ENCODERS}")
        for dtype in (self.feature_dtype, self.latents_dtype):
            if np.dtype(dtype).kind != "f":
                raise ValueError(f"stored dtype {dtype!r} is not a floating-point dtype")
        if self.encoder == "sd":
            if self.resolution is None or self.grid is None:
                raise ValueError("encoder sd needs an explicit resolution and grid")
            if not self.features or not self.timesteps:
                raise ValueError("encoder sd needs at least one feature name and one timestep")
            for name in self.features:
                FeatureName.parse(name)
        elif self.prompt_sources:
            raise ValueError("prompt_sources apply to encoder sd only (CLIP vision features take no text)")
        if self.grid is not None and self.grid <= 0 or self.trials <= 0:
            raise ValueError("grid and trials must be positive")


def cache_spec_from(values: Mapping[str, Any], *, where: str) -> CacheSpec:
    """The `CacheSpec` of an extraction config mapping; its run fields (and nothing else) are ignored."""
    from stages.config import build_dataclass

    names = {f.name for f in fields(CacheSpec)}
    return build_dataclass(CacheSpec, {k: v for k, v in values.items() if k in names}, where=where)


def extraction_spec_for(spec: CacheSpec, *, features: Sequence[str] | None = None,
                        timesteps: Sequence[int] | None = None) -> "ExtractionSpec":
    """The extractor settings that reproduce a store's values (optionally for a subset of its arrays)."""
    from stages.extractor import ExtractionSpec

    return ExtractionSpec(features=tuple(features or spec.features), timesteps=tuple(timesteps or spec.timesteps),
                          grid=spec.grid, trials=spec.trials, seed=spec.seed)


def _clip_processor_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "preprocessor_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} has no preprocessor_config.json (a CLIPImageProcessor config)")
    return json.loads(path.read_text())


def _clip_native_resolution(model_dir: Path) -> int:
    crop = _clip_processor_config(model_dir).get("crop_size")
    side = crop.get("height") if isinstance(crop, dict) else crop
    if not isinstance(side, int):
        raise ValueError(f"{model_dir}/preprocessor_config.json has no usable crop_size ({crop!r})")
    return side


def image_spec_for(spec: CacheSpec, *, model_dir: Path | None = None, max_pixels: int | None = None) -> ImageSpec:
    """The CPU-side preprocessing. For CLIP this is LLaVA-1.5's expand2square + resize to the
    processor's crop size (its own resize and centre crop are then no-ops)."""
    extra = {} if max_pixels is None else {"max_pixels": max_pixels}
    resolution = spec.resolution
    if spec.encoder == "clip":
        native = _clip_native_resolution(model_dir or resolve_model_dir(spec.model))
        if resolution not in (None, native):
            raise ValueError(f"CLIP model {spec.model} takes {native} px images, not resolution={resolution}")
        resolution = native
    return ImageSpec(resolution=resolution, resize_mode=spec.resize_mode, pad_color=tuple(spec.pad_color),
                     **extra)


def array_ids_for(spec: CacheSpec) -> list[str]:
    """Ids of every array a store for `spec` holds: `latents`, `NAME@tT` and `NAME@tT:SOURCE` for SD;
    `CLIP-L-2` (penultimate-layer patch tokens) for CLIP."""
    if spec.encoder == "clip":
        from stages.clip_features import CLIP_ARRAY_ID

        return [CLIP_ARRAY_ID]
    ids = [LATENTS]
    for source in (None, *spec.prompt_sources):
        ids += [str(ArrayId(FeatureName.parse(n), t, source)) for n in spec.features for t in spec.timesteps]
    return ids


def fingerprint_for(spec: CacheSpec, *, memo_path: str | Path | None = None) -> Fingerprint:
    """DESIGN §4 fields: weight content hashes, scheduler config, preprocessing, noise, pooling, dtypes.
    Feature names, timesteps and prompt sources are array ids inside the store, not fields."""
    model_dir = resolve_model_dir(spec.model)
    image = image_spec_for(spec, model_dir=model_dir)
    preprocess = {"resolution": image.resolution, "resize_mode": image.resize_mode,
                  "pad_color": list(image.pad_color)}
    pooling = {"grid": spec.grid, "mode": POOLING if spec.grid is not None else "native"}
    if spec.encoder == "clip":
        from stages.clip_features import CLIP_LAYER

        fields = contract_fields(components={"vision": model_dir}, scheduler_config={}, preprocess=preprocess,
                                 noise={}, pooling=pooling, dtypes={"features": spec.feature_dtype},
                                 memo_path=memo_path)
        return Fingerprint.from_fields({**fields, "encoder": "clip", "clip_layer": CLIP_LAYER})
    missing = [p for p in (*SD_COMPONENTS, "scheduler") if not (model_dir / p).is_dir()]
    if missing:
        raise FileNotFoundError(f"{model_dir} lacks {missing}: expected a diffusers Stable Diffusion layout")
    scheduler = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    check_resolution(image.resolution, vae_config=json.loads((model_dir / "vae" / "config.json").read_text()),
                     unet_config=json.loads((model_dir / "unet" / "config.json").read_text()), source=spec.model)
    fields = contract_fields(
        components={name: model_dir / name for name in SD_COMPONENTS}, scheduler_config=scheduler,
        preprocess=preprocess, noise={"seed": spec.seed, "trials": spec.trials}, pooling=pooling,
        dtypes={"features": spec.feature_dtype, "latents": spec.latents_dtype}, memo_path=memo_path)
    return Fingerprint.from_fields({**fields, "encoder": "sd"})


def _sd_shapes(spec: CacheSpec, model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Tap channels from a U-Net forward on the meta device (no weights, no compute)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    vae_config = AutoencoderKL.load_config(model_dir / "vae")
    unet_config = UNet2DConditionModel.load_config(model_dir / "unet")
    side = spec.resolution // 2 ** (len(vae_config["block_out_channels"]) - 1)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        latents = torch.empty(1, unet.config.in_channels, side, side)
        text = torch.empty(1, 77, unet.config.cross_attention_dim)
    channels: dict[str, int] = {}
    handles = []
    for text_name in spec.features:
        name = FeatureName.parse(text_name)

        def hook(_module, _inputs, output, name=name):
            out = output[0] if isinstance(output, tuple) else output
            channels[str(name)] = out.shape[-1] if name.layout == "tokens" else out.shape[1]
        handles.append(name.resolve(unet).register_forward_hook(hook))
    try:
        with torch.no_grad():
            unet(latents, torch.full((1,), 1, device="meta"), encoder_hidden_states=text)
    finally:
        for handle in handles:
            handle.remove()
    shapes = {LATENTS: (vae_config["latent_channels"], side, side)}
    for array_id in array_ids_for(spec)[1:]:
        shapes[array_id] = (spec.grid * spec.grid, channels[str(ArrayId.parse(array_id).feature)])
    return shapes


def array_shapes_for(spec: CacheSpec) -> dict[str, tuple[tuple[int, ...], str]]:
    """`{array_id: (sample_shape, stored dtype)}` for every array of `array_ids_for(spec)`."""
    model_dir = resolve_model_dir(spec.model)
    if spec.encoder == "clip":
        from stages.clip_features import CLIP_ARRAY_ID, clip_tokens_shape

        return {CLIP_ARRAY_ID: (clip_tokens_shape(model_dir, grid=spec.grid), spec.feature_dtype)}
    shapes = _sd_shapes(spec, model_dir)
    return {a: (s, spec.latents_dtype if a == LATENTS else spec.feature_dtype) for a, s in shapes.items()}


def spec_summary(spec: CacheSpec) -> dict[str, Any]:
    """The spec as plain JSON-able fields (recorded in store attributes)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}
