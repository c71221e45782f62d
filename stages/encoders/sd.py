"""Stable Diffusion U-Net features (DESIGN §2–§3) as a `FeatureEncoder`: images -> VAE latents rounded to
the stored dtype -> U-Net taps on exactly those latents -> pooled arrays. Any SD 1.x / 2.x-layout
pipeline (one CLIP text encoder) is this entry; SDXL (`stages.encoders.sdxl`) extends it.

Pass layout (it decides the float rounding, so it is part of what a store's values are): the
unconditional half shares one batched pass with the spec's first prompt source; every other prompt
source (further extraction sources, or `question` at training time) runs a conditional pass of its own.
Restricting `array_ids` restricts the names and timesteps computed, never the layout of a pass.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import types
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from stages.config import ConfigError
from stages.encoders.base import EncoderKind, FeatureEncoder, Prompts, Spec
from stages.extractor import SDExtractor, check_resolution
from stages.features import LATENTS, ArrayId, FeatureName
from stages.flops import meta_text, meta_unet, text_encoder_gflop, unet_gflop, vae_encode_gflop
from stages.models import ModelLoadError, SDComponents, is_sdxl_layout, load_sd_components, resolve_model_dir
from stages.preprocess import ImageSpec, to_tensor
from stages.store.fingerprint import contract_fields


__all__ = ["SD", "SDKind", "SDFeatureEncoder", "Pass"]

Pass = tuple[str | None, ...]  # the sources one batched U-Net pass conditions on (None: the empty prompt)

class SDFeatureEncoder(FeatureEncoder):
    """`latents(images)` and `features(latents, keys, prompts=..., array_ids=...)` for one `CacheSpec` (`Spec`)."""

    def __init__(self, spec: Spec, components: SDComponents) -> None:
        super().__init__(spec)
        self.components = components
        self._latents_dtype = getattr(torch, spec.latents_dtype)
        self._extractors: dict[tuple[tuple[str, ...], tuple[int, ...]], SDExtractor] = {}

    @classmethod
    def load(cls, spec: Spec, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
             with_vae: bool = True) -> "SDFeatureEncoder":
        """`with_vae=False`: U-Net only, for features of cached latents (SFT question conditioning)."""
        model_dir = resolve_model_dir(spec.model)
        spec.kind.check_layout(model_dir)  # an SDXL directory under encoder sd (or vice versa) is refused
        encoder = cls(spec, load_sd_components(str(model_dir), device=device, dtype=dtype, with_vae=with_vae))
        if with_vae:
            encoder._extractor(spec.features, spec.timesteps).check_resolution(spec.resolution)
        return encoder

    @property
    def device(self) -> torch.device:
        return self.components.device

    def _extractor(self, names: Sequence[str], timesteps: Sequence[int]) -> SDExtractor:
        key = (tuple(names), tuple(timesteps))
        if key not in self._extractors:
            self._extractors[key] = SDExtractor(self.components,
                                                self.spec.extraction_spec(features=key[0], timesteps=key[1]))
        return self._extractors[key]

    def latents(self, images: np.ndarray) -> torch.Tensor:
        """uint8 `(B, R, R, 3)` -> `(B, 4, R/8, R/8)` float32 holding values of the stored latents dtype."""
        pixels = torch.stack([to_tensor(image) for image in images])  # (B, 3, R, R) in [-1, 1]
        with self.timed("vae"):
            z0 = self._extractor(self.spec.features, self.spec.timesteps).encode(pixels)
        return z0.to(self._latents_dtype).float()

    def _selection(self, ids: Sequence[ArrayId]) -> tuple[list[str], list[int]]:
        """Feature names and timesteps of `ids`, in the spec's order (extra ones after it)."""
        names = [str(i.feature) for i in ids]
        steps = [i.timestep for i in ids]
        spec_names = [str(FeatureName.parse(n)) for n in self.spec.features]
        return ([n for n in spec_names if n in names] + [n for n in dict.fromkeys(names) if n not in spec_names],
                [t for t in self.spec.timesteps if t in steps] + [t for t in dict.fromkeys(steps)
                                                                   if t not in self.spec.timesteps])

    def features(self, latents: torch.Tensor, keys: Sequence[str], *, prompts: Prompts | None = None,
                 array_ids: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """`{array_id: (B, T, C) float32}` for `array_ids` (default: every feature array of the spec);
        `prompts[source]` holds the texts of each conditioned source they name."""
        prompts = prompts or {}
        ids = [ArrayId.parse(a) for a in (array_ids or self.spec.array_ids()) if a != LATENTS]
        if not ids:
            return {}
        extractor = self._extractor(*self._selection(ids))
        sources = list(dict.fromkeys(i.source for i in ids))
        missing = [s for s in sources if s is not None and s not in prompts]
        if missing:
            raise KeyError(f"no prompts for source(s) {missing}; given {sorted(prompts)}")
        out: dict[str, torch.Tensor] = {}
        with self.timed("unet"):
            for batch in self.spec.kind.passes(self.spec, sources):
                if batch == (None,):
                    out.update(extractor.features(latents, keys))
                elif batch[0] is None:  # (None, source): both halves share one batched pass and its x_t
                    out.update(extractor.conditional_pair(latents, keys, prompts=prompts[batch[1]], source=batch[1]))
                else:
                    out.update(extractor.features(latents, keys, prompts=prompts[batch[0]], source=batch[0]))
        return {str(i): out[str(i)] for i in ids}

    def encode(self, images: np.ndarray, keys: Sequence[str], prompts: Prompts) -> dict[str, torch.Tensor]:
        latents = self.latents(images)
        return {LATENTS: latents, **self.features(latents, keys, prompts=prompts)}


@functools.lru_cache(maxsize=None)
def _tap_channels(model_dir: str, resolution: int, side: int, features: tuple[str, ...]) -> Mapping[str, int]:
    """Feature name -> channels, from one U-Net forward on the meta device at `side` x `side` latents (a few
    seconds, so once per model and names: a sweep's dry run asks for every training stage)."""
    unet = meta_unet(model_dir)
    latents = torch.empty(1, unet.config.in_channels, side, side, device="meta")
    text = meta_text(unet.config).unet_kwargs(image_size=(resolution, resolution))
    names = [FeatureName.parse(n) for n in features]
    channels: dict[str, int] = {}

    def hook(name: FeatureName):
        def capture(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            channels[str(name)] = out.shape[-1] if name.layout == "tokens" else out.shape[1]
        return capture

    handles = [name.resolve(unet).register_forward_hook(hook(name)) for name in names]
    try:
        with torch.no_grad():
            unet(latents, torch.full((1,), 1, device="meta"), **text)
    finally:
        for handle in handles:
            handle.remove()
    return types.MappingProxyType(channels)


class SDKind(EncoderKind):
    """SD 1.x / 2.x-layout pipelines (`vae/ unet/ text_encoder/ tokenizer/ scheduler/`): latents + U-Net taps."""

    name = "sd"
    time_stages = ("vae", "unet")
    has_latents = True
    components: tuple[str, ...] = ("vae", "unet", "text_encoder", "tokenizer")  # hashed (+ scheduler config)
    text_encoders: tuple[tuple[str, str], ...] = (("text_encoder", "CLIPTextModel"),)  # (directory, class)
    layout = "Stable Diffusion"

    def passes(self, spec: Spec, sources: Sequence[str | None]) -> list[Pass]:
        """The pass layout (module docstring) computing arrays of `sources` (None: unconditional): the
        unconditional half shares one batched pass with the spec's first prompt source, every other source
        has a pass of its own. Each pass covers every timestep and trial."""
        paired = spec.prompt_sources[0] if spec.prompt_sources else None
        shared = paired is not None and (None in sources or paired in sources)
        layout: list[Pass] = [(None, paired)] if shared else [(None,)] if None in sources else []
        return layout + [(s,) for s in dict.fromkeys(sources) if s not in (None, paired)]

    def image_gflop(self, spec: Spec, model_dir: Path, *, array_ids: Sequence[str] | None = None,
                    encode: bool = True, early_exit: bool = True) -> dict[str, float]:
        """The VAE once (`encode`), each pass of `passes` once per timestep and trial (one U-Net forward
        per half), each prompt through the text encoder(s) once (the empty prompt's embedding is computed
        once per worker)."""
        ids = [ArrayId.parse(a) for a in (spec.array_ids() if array_ids is None else array_ids) if a != LATENTS]
        layout = self.passes(spec, list(dict.fromkeys(i.source for i in ids)))
        names = tuple(sorted({str(i.feature) for i in ids}))
        forward = unet_gflop(str(model_dir), spec.resolution, names if early_exit else None) if ids else 0.0
        prompts = sum(s is not None for batch in layout for s in batch)
        return {"vae_encode": vae_encode_gflop(str(model_dir), spec.resolution) if encode else 0.0,
                "unet": spec.trials * len({i.timestep for i in ids}) * sum(map(len, layout)) * forward,
                "text_encoder": prompts * text_encoder_gflop(str(model_dir), self.text_encoders)}

    def guided_gflop(self, spec: Spec, model_dir: Path, array_id: str, *, source: str,
                     early_exit: bool = True) -> float:
        """A pass of its own on the stored latents (a source other than the spec's paired first one) and
        the prompt through the text encoder(s)."""
        guided = str(dataclasses.replace(ArrayId.parse(array_id), source=source))
        alone = dataclasses.replace(spec, prompt_sources=())
        return sum(self.image_gflop(alone, model_dir, array_ids=[guided], encode=False,
                                    early_exit=early_exit).values())

    def validate(self, spec: Spec) -> None:
        if spec.resolution is None or spec.grid is None:
            raise ValueError(f"encoder {self.name} needs an explicit resolution and grid")
        if not spec.features or not spec.timesteps:
            raise ValueError(f"encoder {self.name} needs at least one feature name and one timestep")
        for name in spec.features:
            FeatureName.parse(name)

    def check_layout(self, model_dir: Path) -> None:
        """The pipeline directories this backbone reads, and a text conditioning it implements."""
        missing = [p for p in (*self.components, "scheduler") if not (model_dir / p).is_dir()]
        if missing:
            raise ModelLoadError(f"{model_dir} lacks {missing}: expected a diffusers {self.layout} layout")
        self.check_conditioning(model_dir)

    def check_conditioning(self, model_dir: Path) -> None:
        """From config files: the U-Net takes the text conditioning this backbone gives it."""
        if is_sdxl_layout(model_dir):
            raise ModelLoadError(f"{model_dir} is an SDXL pipeline (it has text_encoder_2/): use encoder: sdxl")

    def conditioning_fields(self, model_dir: Path) -> dict[str, Any]:
        """Fingerprint fields of the text conditioning beyond the weights (none for SD 1.x / 2.x)."""
        return {}

    def check_model(self, spec: Spec, model_dir: Path) -> None:
        """Timesteps inside the scheduler's `num_train_timesteps`; feature names that exist in this U-Net."""
        self.check_layout(model_dir)
        scheduler = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
        steps = scheduler.get("num_train_timesteps", 1000)  # DDPMScheduler's default
        outside = [t for t in spec.timesteps if not 0 <= t < steps]
        if outside:
            raise ConfigError(f"timesteps {outside} are outside the range 0..{steps - 1} of the scheduler of "
                              f"{spec.model} (num_train_timesteps={steps})")
        unet = meta_unet(model_dir)
        for name in spec.features:
            FeatureName.parse(name).resolve(unet)  # a FeatureNameError listing the valid names

    def image_spec(self, spec: Spec, model_dir: Path, **extra: Any) -> ImageSpec:
        return ImageSpec(resolution=spec.resolution, resize_mode=spec.resize_mode, pad_color=tuple(spec.pad_color),
                         **extra)

    def array_ids(self, spec: Spec) -> list[str]:
        """`latents`, then `NAME@tT` and `NAME@tT:SOURCE` for every name, timestep and prompt source."""
        return [LATENTS] + [str(ArrayId(FeatureName.parse(n), t, source)) for source in (None, *spec.prompt_sources)
                            for n in spec.features for t in spec.timesteps]

    def sample_shapes(self, spec: Spec, model_dir: Path) -> dict[str, tuple[int, ...]]:
        """Tap channels from a U-Net forward on the meta device (no weights, no compute)."""
        from diffusers import AutoencoderKL

        vae_config = AutoencoderKL.load_config(model_dir / "vae")
        side = spec.resolution // 2 ** (len(vae_config["block_out_channels"]) - 1)
        channels = _tap_channels(str(model_dir), spec.resolution, side, tuple(spec.features))
        shapes = {LATENTS: (vae_config["latent_channels"], side, side)}
        for array_id in self.array_ids(spec)[1:]:
            shapes[array_id] = (spec.grid * spec.grid, channels[str(ArrayId.parse(array_id).feature)])
        return shapes

    def fingerprint_fields(self, spec: Spec, model_dir: Path, *, preprocess: Mapping[str, Any],
                           pooling: Mapping[str, Any], memo_path: str | Path | None) -> dict[str, Any]:
        self.check_layout(model_dir)
        scheduler = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
        check_resolution(spec.resolution, vae_config=json.loads((model_dir / "vae" / "config.json").read_text()),
                         unet_config=json.loads((model_dir / "unet" / "config.json").read_text()), source=spec.model)
        fields = contract_fields(
            components={name: model_dir / name for name in self.components}, scheduler_config=scheduler,
            preprocess=preprocess, noise={"seed": spec.seed, "trials": spec.trials}, pooling=pooling,
            dtypes={"features": spec.feature_dtype, "latents": spec.latents_dtype}, memo_path=memo_path)
        return {**fields, "encoder": self.name, **self.conditioning_fields(model_dir)}

    def load(self, spec: Spec, *, device: torch.device | str | None = None,
             dtype: torch.dtype | None = None) -> SDFeatureEncoder:
        return SDFeatureEncoder.load(spec, device=device, dtype=dtype)


SD = SDKind()
