"""Stable Diffusion U-Net features (DESIGN §2–§3a): latents, noise, taps with early exit, pooling.

`SDExtractor` is the tap engine under `stages.encoders.SDFeatureEncoder` (which the pipeline, the
trainer and the tests call): the U-Net runs once per batch for every requested tap, timestep and (for
guidance) both prompt halves, and stops right after the last tap. What the U-Net is conditioned on
(SD's one text encoder, SDXL's two plus pooled text and size) is the components' `TextConditioning`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from stages.config import ConfigError
from stages.features import ArrayId, FeatureName, FeatureNameError
from stages.models import SDComponents
from stages.noise import batch_noise
from stages.text_conditioning import TextEmbedding, text_conditioning_for

__all__ = ["ExtractionSpec", "SDExtractor", "amplify", "check_resolution", "pool_to_grid"]


@dataclass(frozen=True)
class ExtractionSpec:
    features: tuple[str, ...] = ("U-L1-R1-B0-Cross-Q",)
    timesteps: tuple[int, ...] = (50,)
    grid: int = 16  # token grid side: grid * grid tokens per feature
    trials: int = 1  # noise draws averaged after pooling
    seed: int = 0  # global noise seed `g`

    def __post_init__(self) -> None:
        if not self.features or not self.timesteps:
            raise ValueError("at least one feature name and one timestep are needed")
        if self.grid <= 0 or self.trials <= 0:
            raise ValueError("grid and trials must be positive")
        for name in self.features:
            FeatureName.parse(name)


def pool_to_grid(tap: torch.Tensor, *, layout: str, grid: int) -> torch.Tensor:
    """(B, HW, C) tokens or (B, C, H, W) map -> (B, grid*grid, C) float32, row-major tokens.

    Area averaging when shrinking, bilinear (align_corners=False) when growing.
    """
    tap = tap.float()
    if layout == "tokens":
        batch, hw, channels = tap.shape
        side = int(round(hw**0.5))
        if side * side != hw:
            raise ValueError(f"token tap of length {hw} is not a square map")
        tap = tap.transpose(1, 2).reshape(batch, channels, side, side)  # (B, C, H, W)
    height, width = tap.shape[-2:]
    if (height, width) != (grid, grid):
        mode = "area" if height >= grid and width >= grid else "bilinear"
        extra = {"align_corners": False} if mode == "bilinear" else {}
        tap = F.interpolate(tap, size=(grid, grid), mode=mode, **extra)
    return tap.flatten(2).transpose(1, 2).contiguous()  # (B, T, C)


def amplify(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """`X_u + s * (X_c - X_u)`: s=0 unconditional, s=1 conditional, s>1 amplified."""
    return uncond + scale * (cond - uncond)


def check_resolution(resolution: int, *, vae_config: Mapping[str, Any], unet_config: Mapping[str, Any],
                     source: str = "") -> None:
    """Image sides must be multiples of the VAE x U-Net down-sampling factor (64 for SD 2.1-base)."""
    multiple = 2 ** (len(vae_config["block_out_channels"]) - 1) * 2 ** (len(unet_config["down_block_types"]) - 1)
    if resolution <= 0 or resolution % multiple:
        raise ConfigError(f"resolution {resolution} is not a positive multiple of {multiple} "
                          f"(VAE x U-Net down-sampling factor of {source or 'this model'})")


class _StopForward(Exception):
    """Raised by the last tap's hook so the U-Net does no work after it."""


class _Taps:
    """Forward hooks capturing module outputs; optionally stops the forward once all have fired."""

    def __init__(self, modules: Mapping[FeatureName, torch.nn.Module], *, early_exit: bool) -> None:
        self.modules = dict(modules)
        self.early_exit = early_exit
        self.outputs: dict[FeatureName, torch.Tensor] = {}

    def _hook(self, name: FeatureName):
        def hook(_module, _inputs, output):
            self.outputs[name] = output[0] if isinstance(output, tuple) else output
            if self.early_exit and len(self.outputs) == len(self.modules):
                raise _StopForward
        return hook

    @contextlib.contextmanager
    def attached(self) -> Iterator["_Taps"]:
        handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        try:
            yield self
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()


class SDExtractor:
    """Runs the SD components of `components` to produce the features named in `spec`."""

    def __init__(self, components: SDComponents, spec: ExtractionSpec, *, early_exit: bool = True) -> None:
        self.components = components
        self.spec = spec
        self.early_exit = early_exit
        self.names = tuple(dict.fromkeys(FeatureName.parse(n) for n in spec.features))
        self.modules = {name: name.resolve(components.unet) for name in self.names}
        self.text = text_conditioning_for(components)

    def check_resolution(self, resolution: int) -> None:
        """Refuse image sides the VAE and U-Net cannot down-sample evenly."""
        if self.components.vae is None:
            raise RuntimeError("this extractor was built without a VAE (U-Net-only, for cached latents)")
        check_resolution(resolution, vae_config=self.components.vae.config,
                         unet_config=self.components.unet.config, source=self.components.source)

    # ---- stages ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] -> z0 (B, 4, R/8, R/8) float32: posterior mean x scaling factor."""
        self.check_resolution(pixels.shape[-1])
        vae = self.components.vae
        posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        return (posterior.mean * vae.config.scaling_factor).float()

    def condition(self, prompts: Sequence[str]) -> TextEmbedding:
        """What the U-Net is conditioned on for `prompts` ("" = unconditional; cached)."""
        return self.text(prompts)

    @torch.inference_mode()
    def features(self, latents: torch.Tensor, keys: Sequence[str], *, prompts: Sequence[str] | None = None,
                 source: str | None = None) -> dict[str, torch.Tensor]:
        """Pooled features (B, T, C) float32 per array id, for every feature and timestep of the spec.

        `prompts=None` gives the unconditional features (empty prompt); otherwise each sample is
        conditioned on its prompt and the ids carry `:source`.
        """
        if (prompts is None) != (source is None):
            raise ValueError("pass prompts and source together (source names the prompt in array ids)")
        text = self.condition(prompts if prompts is not None else [""] * len(keys))
        return self._run(latents, keys, [(text, source)])

    @torch.inference_mode()
    def conditional_pair(self, latents: torch.Tensor, keys: Sequence[str], *, prompts: Sequence[str],
                         source: str) -> dict[str, torch.Tensor]:
        """Unconditional and `source`-conditioned features from one batched pass sharing `x_t`."""
        halves = [(self.condition([""] * len(keys)), None), (self.condition(prompts), source)]
        return self._run(latents, keys, halves)

    def _run(self, latents: torch.Tensor, keys: Sequence[str],
             halves: list[tuple[TextEmbedding, str | None]]) -> dict[str, torch.Tensor]:
        """One U-Net pass per trial over (prompt halves x timesteps x batch); trials averaged."""
        if len(keys) != latents.shape[0]:
            raise ValueError(f"{len(keys)} keys for {latents.shape[0]} latents")
        unet, scheduler = self.components.unet, self.components.scheduler
        device, dtype = unet.device, unet.dtype
        z0 = latents.to(device=device, dtype=torch.float32)
        steps = self.spec.timesteps
        text = TextEmbedding.cat([t.to(dtype).repeat(len(steps)) for t, _ in halves])  # (H*S*B, 77, D)
        timesteps = torch.tensor(steps, device=device).repeat_interleave(len(keys))  # (S*B,)
        totals: dict[str, torch.Tensor] = {}
        for trial in range(self.spec.trials):
            eps = batch_noise(z0.shape[1:], keys=keys, trial=trial, global_seed=self.spec.seed).to(device)
            x_t = scheduler.add_noise(z0.repeat(len(steps), 1, 1, 1), eps.repeat(len(steps), 1, 1, 1), timesteps)
            sample = x_t.repeat(len(halves), 1, 1, 1).to(dtype)
            taps = self._forward(sample, timesteps.repeat(len(halves)), text.hidden_states, text.pooled)
            for name, tap in taps.items():
                pooled = pool_to_grid(tap, layout=name.layout, grid=self.spec.grid)
                for (_, src), per_half in zip(halves, pooled.chunk(len(halves))):
                    for t, block in zip(steps, per_half.chunk(len(steps))):
                        array_id = str(ArrayId(name, t, src))
                        totals[array_id] = totals[array_id] + block if array_id in totals else block
        return {k: v / self.spec.trials for k, v in totals.items()}  # exact for one trial

    def _forward(self, sample: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                 pooled: torch.Tensor | None = None) -> dict[FeatureName, torch.Tensor]:
        """Raw taps of one U-Net pass on `sample` (N, 4, h, w) with `text` (N, 77, D) and, for SDXL,
        `pooled` (N, P) text embeddings; SDXL's time ids are the image size of `sample`."""
        factor = self.components.vae_scale_factor
        kwargs = TextEmbedding(text, pooled).unet_kwargs(image_size=(sample.shape[-2] * factor,
                                                                     sample.shape[-1] * factor))
        taps = _Taps(self.modules, early_exit=self.early_exit)
        with taps.attached():
            self.components.unet(sample, timesteps, **kwargs, return_dict=False)
        missing = set(self.names) - set(taps.outputs)
        if missing:
            raise FeatureNameError(f"taps {sorted(map(str, missing))} were not reached by the U-Net forward")
        return taps.outputs
