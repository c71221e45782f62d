"""Loading Stable Diffusion components from a local directory, a hub id or an embedded default.

The same `from_pretrained` calls load a real SD 1.x / 2.x / SDXL checkout and the tiny embedded models;
a pipeline with `text_encoder_2/` is SDXL (DESIGN §3a: a second text encoder with projection, its
`force_zeros_for_empty_prompt` from `model_index.json`, the VAE in float32 when its config says
`force_upcast`). `resolve_precision` turns every config's `precision` (extraction, training, evaluation)
into a dtype; `auto` follows the device: bf16 on CUDA, fp32 on CPU (bf16 matmuls on CPUs without bf16
units are two orders of magnitude slower).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stages.errors import UserError

__all__ = ["SDComponents", "ModelLoadError", "load_sd_components", "resolve_model_dir", "default_device",
           "PRECISIONS", "resolve_precision", "is_sdxl_layout", "vae_scale_factor", "force_zeros_for_empty_prompt"]


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # a config's `precision`: these or auto


class ModelLoadError(UserError, OSError):
    """A model that cannot be found or loaded, with the location that was tried."""


@dataclass(frozen=True)
class SDComponents:
    """What the extractor needs; `vae` is None when only the U-Net pass runs (on cached latents)."""

    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    vae: Any = None
    source: str = ""
    text_encoder_2: Any = None  # SDXL: the second text encoder (CLIPTextModelWithProjection); None for SD
    tokenizer_2: Any = None
    force_zeros_for_empty_prompt: bool = False  # SDXL: the unconditional text is zeros (model_index.json)
    vae_scale_factor: int = 8  # image pixels per latent pixel; SDXL's time ids are the image size

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """A config's `precision` (checked where the config is read) as a dtype: auto is bf16 on CUDA, else fp32."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return PRECISIONS[name]


def resolve_model_dir(model: str) -> Path:
    """`embedded:…`, a local directory or a hub id already in the local HF cache -> a local directory."""
    from stages.embedded import resolve_model

    source = resolve_model(model)
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(source, local_files_only=True))
        except Exception as exc:  # the hub raises several unrelated types for "not cached"
            raise ModelLoadError(f"model {source!r} is not a local directory and not in the local "
                                 f"Hugging Face cache ({type(exc).__name__}); download it first") from exc
    raise ModelLoadError(f"model directory {source!r} does not exist")


def is_sdxl_layout(model_dir: str | Path) -> bool:
    """A diffusers pipeline with a second text encoder: SDXL's conditioning (DESIGN §3a)."""
    return (Path(model_dir) / "text_encoder_2").is_dir()


def force_zeros_for_empty_prompt(model_dir: str | Path) -> bool:
    """The SDXL pipeline's unconditional-prompt convention from its `model_index.json` (diffusers'
    `StableDiffusionXLPipeline` default, True, when the file or the key is absent)."""
    index = Path(model_dir) / "model_index.json"
    if not index.is_file():
        return True
    return bool(json.loads(index.read_text(encoding="utf-8")).get("force_zeros_for_empty_prompt", True))


def vae_scale_factor(vae_config: Any) -> int:
    """Image pixels per latent pixel: 2 per VAE down-sampling level (8 for SD and SDXL)."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def load_sd_components(
    spec: str, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    with_vae: bool = True,
) -> SDComponents:
    """Load an SD-layout pipeline (`unet/ vae/ text_encoder/ tokenizer/ scheduler/`, plus `text_encoder_2/
    tokenizer_2/` for SDXL) for inference. Any scheduler config is read as a `DDPMScheduler` (only
    `add_noise` is used, DESIGN §3)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    try:
        source = str(resolve_model_dir(spec))
    except ModelLoadError as exc:
        raise ModelLoadError(f"{exc} (expected unet/ vae/ text_encoder/ tokenizer/ scheduler/ inside, as in "
                             "a diffusers Stable Diffusion checkout)") from exc
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or resolve_precision("auto", device)
    sdxl = is_sdxl_layout(source)

    def load(cls: Any, subfolder: str, **kwargs: Any) -> Any:
        try:
            return cls.from_pretrained(source, subfolder=subfolder, **kwargs)
        except (OSError, ValueError, EnvironmentError) as exc:
            raise ModelLoadError(f"cannot load {subfolder}/ of {source!r}: {exc}") from exc

    def ready(cls: Any, subfolder: str, module_dtype: torch.dtype = dtype) -> Any:
        module = load(cls, subfolder, torch_dtype=module_dtype)
        return module.to(device).eval().requires_grad_(False)

    try:
        vae_config = AutoencoderKL.load_config(source, subfolder="vae")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read vae/config.json of {source!r}: {exc}") from exc
    vae_dtype = torch.float32 if sdxl and vae_config.get("force_upcast", True) else dtype  # §3a: fp16 overflows
    return SDComponents(
        unet=ready(UNet2DConditionModel, "unet"),
        text_encoder=ready(CLIPTextModel, "text_encoder"),
        tokenizer=load(CLIPTokenizer, "tokenizer"),
        scheduler=load(DDPMScheduler, "scheduler"),
        vae=ready(AutoencoderKL, "vae", vae_dtype) if with_vae else None,
        source=source,
        text_encoder_2=ready(CLIPTextModelWithProjection, "text_encoder_2") if sdxl else None,
        tokenizer_2=load(CLIPTokenizer, "tokenizer_2") if sdxl else None,
        force_zeros_for_empty_prompt=sdxl and force_zeros_for_empty_prompt(source),
        vae_scale_factor=vae_scale_factor(vae_config),
    )
