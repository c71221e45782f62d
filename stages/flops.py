"""What a model costs, counted rather than guessed: `FlopCounterMode` over meta-device forwards.

Models are built from their config files on the meta device (no weights, no memory, no compute), so a
plan can be made before anything is downloaded: `architecture_dir(model)` is the model's own directory
when it resolves (`stages.models.resolve_model_dir`), else, for a known hub id (`REFERENCE_MODELS`), a
config-only copy of its architecture built once under the embedded home. Counts are GFLOP (1e9
floating-point operations; a multiply-add is 2) for one image or one prompt; every cost here is linear
in the batch, so per-image numbers multiply.

The U-Net is counted through the extractor's own forward (`SDExtractor`, early exit after the deepest
tap), so a plan costs exactly the pass the pipeline and the trainer run. These are the parts; which
passes a backbone runs for an image is its registry entry's answer (`EncoderKind.image_gflop`,
`guided_gflop`). `GPUS` holds dense peak rates for turning GFLOP into GPU-hours at a stated utilisation
(`ComputeBudget`).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch.utils.flop_counter import FlopCounterMode

from stages.config import ConfigError
from stages.models import ModelLoadError, SDComponents, resolve_model_dir, vae_scale_factor
from stages.text_conditioning import N_TIME_IDS, TextEmbedding

__all__ = ["SD21_BASE_UNET", "SD21_BASE_VAE", "SD21_BASE_TEXT", "SD21_BASE_SCHEDULER", "REFERENCE_MODELS",
           "architecture_dir", "count_gflop", "meta_unet", "meta_text", "vae_encode_gflop", "unet_gflop",
           "text_encoder_gflop", "clip_vision_gflop", "GPU", "GPUS", "DEFAULT_GPU", "DEFAULT_UTILIZATION",
           "ComputeBudget", "add_budget_arguments", "budget_from_arguments"]

# Stable Diffusion 2.1-base (DESIGN §6): the configs of stabilityai/stable-diffusion-2-1-base
SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, attention_head_dim=[5, 10, 20, 20],
    cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32, upcast_attention=False,
)
SD21_BASE_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, sample_size=768, scaling_factor=0.18215,
)
SD21_BASE_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
)
SD21_BASE_SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                           beta_end=0.012, prediction_type="epsilon")
_REFERENCE_VERSION = 1  # bump when a reference architecture's files change


def _write_sd21_base(out: Path) -> None:
    """A diffusers SD pipeline layout holding only the config files (no weights, empty tokenizer)."""
    files = {"unet/config.json": {"_class_name": "UNet2DConditionModel", **SD21_BASE_UNET},
             "vae/config.json": {"_class_name": "AutoencoderKL", **SD21_BASE_VAE},
             "text_encoder/config.json": {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
                                          **SD21_BASE_TEXT},
             "scheduler/scheduler_config.json": {"_class_name": "DDPMScheduler", **SD21_BASE_SCHEDULER}}
    for name, config in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(config, indent=1, sort_keys=True))
    (out / "tokenizer").mkdir()


# hub id -> writer of its config-only architecture directory
REFERENCE_MODELS: dict[str, Callable[[Path], None]] = {"stabilityai/stable-diffusion-2-1-base": _write_sd21_base}


def architecture_dir(model: str) -> tuple[Path, bool]:
    """(directory with the model's config files, whether it is a config-only reference copy).

    The model's own directory when it resolves; for a hub id of `REFERENCE_MODELS` not in the local
    cache, its architecture under the embedded home; otherwise the `ModelLoadError` of resolving it."""
    try:
        return resolve_model_dir(model), False
    except ModelLoadError:
        if model not in REFERENCE_MODELS:
            raise
    from stages.embedded import embedded_home, materialize

    name = "arch-" + model.replace("/", "--")
    return materialize(embedded_home() / f"{name}-v{_REFERENCE_VERSION}", REFERENCE_MODELS[model]), True


def count_gflop(fn: Callable[[], Any]) -> float:
    """GFLOP of the torch operations `fn` runs (meta tensors: counted, not computed)."""
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            fn()
    return counter.get_total_flops() / 1e9


def _config(model_dir: str | Path, name: str) -> dict[str, Any]:
    """The JSON config file `name` (e.g. `unet/config.json`) of a model directory."""
    path = Path(model_dir) / name
    if not path.is_file():
        raise ModelLoadError(f"{model_dir} has no {name}")
    return json.loads(path.read_text(encoding="utf-8"))


def meta_unet(model_dir: str | Path) -> Any:
    """The U-Net of `model_dir` built from its config on the meta device (no weights, no memory)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(_config(model_dir, "unet/config.json")).eval()


def meta_text(unet_config: Mapping[str, Any]) -> TextEmbedding:
    """Placeholder text conditioning of one sample for a meta forward: cross-attention states and, for
    a U-Net with SDXL's `text_time` added embedding, the pooled text the rest of its input holds."""
    text = torch.empty(1, 77, unet_config["cross_attention_dim"], device="meta")
    if unet_config.get("addition_embed_type") != "text_time":
        return TextEmbedding(text)
    pooled = unet_config["projection_class_embeddings_input_dim"] - N_TIME_IDS * unet_config["addition_time_embed_dim"]
    return TextEmbedding(text, torch.empty(1, pooled, device="meta"))


@functools.lru_cache(maxsize=None)
def vae_encode_gflop(model_dir: str, resolution: int) -> float:
    """One image through the VAE encoder (`vae.encode`) at `resolution` x `resolution`."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(_config(model_dir, "vae/config.json")).eval()
        pixels = torch.empty(1, 3, resolution, resolution)
    return count_gflop(lambda: vae.encode(pixels))


@functools.lru_cache(maxsize=None)
def unet_gflop(model_dir: str, resolution: int, names: tuple[str, ...] | None) -> float:
    """One U-Net forward of one image, stopped after the deepest of the feature `names` as the extractor
    stops it (None: the full forward)."""
    from stages.extractor import ExtractionSpec, SDExtractor

    unet = meta_unet(model_dir)
    factor = vae_scale_factor(_config(model_dir, "vae/config.json"))
    side = resolution // factor
    text = meta_text(unet.config)
    with torch.device("meta"):
        latents, t = torch.empty(1, unet.config.in_channels, side, side), torch.full((1,), 1)
    if names is None:
        kwargs = text.unet_kwargs(image_size=(resolution, resolution))
        return count_gflop(lambda: unet(latents, t, **kwargs))
    components = SDComponents(unet=unet, text_encoder=None, tokenizer=None, scheduler=None, vae_scale_factor=factor)
    extractor = SDExtractor(components, ExtractionSpec(features=tuple(names)))
    return count_gflop(lambda: extractor._forward(latents, t, text.hidden_states, text.pooled))


@functools.lru_cache(maxsize=None)
def text_encoder_gflop(model_dir: str, encoders: tuple[tuple[str, str], ...]) -> float:
    """One prompt (padded to the encoder's 77 positions) through each of `encoders`, (component directory,
    transformers class name) pairs: the registry entry's `text_encoders` (SDXL runs two)."""
    import transformers

    total = 0.0
    for part, class_name in encoders:
        config = transformers.CLIPTextConfig.from_dict(_config(model_dir, f"{part}/config.json"))
        with torch.device("meta"):
            encoder = getattr(transformers, class_name)(config).eval()
            ids = torch.zeros(1, config.max_position_embeddings, dtype=torch.long)
        total += count_gflop(lambda: encoder(ids))
    return total


@functools.lru_cache(maxsize=None)
def clip_vision_gflop(model_dir: str, resolution: int) -> float:
    """One image through a `CLIPVisionModel` at its input `resolution`."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig.from_dict(_config(model_dir, "config.json"))
    with torch.device("meta"):
        model = CLIPVisionModel(config).eval()
        pixels = torch.empty(1, 3, resolution, resolution)
    return count_gflop(lambda: model(pixels, output_hidden_states=True))


@dataclass(frozen=True)
class GPU:
    name: str
    peak_tflops: float  # dense bf16 tensor-core peak (no sparsity), TFLOP/s


GPUS: dict[str, GPU] = {g.name: g for g in (
    GPU("h100-sxm", 989.4), GPU("h100-pcie", 756.0), GPU("h200", 989.4), GPU("a100", 312.0),
    GPU("l40s", 362.1), GPU("a10g", 125.0), GPU("rtx4090", 165.2))}
DEFAULT_GPU = "h100-sxm"
DEFAULT_UTILIZATION = 0.4  # of the dense peak; DESIGN/docs: the VAE's large-map convolutions are memory-bound


@dataclass(frozen=True)
class ComputeBudget:
    """The GPU a plan is priced on: a dense peak rate and the fraction of it a run reaches."""

    gpu: str = DEFAULT_GPU
    peak_tflops: float = GPUS[DEFAULT_GPU].peak_tflops
    utilization: float = DEFAULT_UTILIZATION

    def __post_init__(self) -> None:
        if not (math.isfinite(self.peak_tflops) and self.peak_tflops > 0) or not 0 < self.utilization <= 1:
            raise ConfigError(f"peak TFLOP/s must be > 0 and utilisation in (0, 1], got {self.peak_tflops} "
                              f"and {self.utilization}")

    @property
    def gflop_per_s(self) -> float:
        """What one GPU delivers at this utilisation."""
        return self.peak_tflops * 1e3 * self.utilization

    def gpu_hours(self, gflop: float) -> float:
        return gflop / self.gflop_per_s / 3600

    def as_dict(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "peak_tflops": self.peak_tflops, "utilization": self.utilization}


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """`--gpu NAME`, `--gpu-tflops X` (overrides the table's peak) and `--utilization U`."""
    parser.add_argument("--gpu", default=DEFAULT_GPU, choices=sorted(GPUS),
                        help=f"GPU the plan is priced on (dense bf16 peak; default {DEFAULT_GPU})")
    parser.add_argument("--gpu-tflops", type=float, default=None, help="peak TFLOP/s of another GPU")
    parser.add_argument("--utilization", type=float, default=DEFAULT_UTILIZATION,
                        help=f"fraction of the peak a run reaches (default {DEFAULT_UTILIZATION})")


def budget_from_arguments(args: argparse.Namespace) -> ComputeBudget:
    peak = args.gpu_tflops if args.gpu_tflops is not None else GPUS[args.gpu].peak_tflops
    name = args.gpu if args.gpu_tflops is None else f"{args.gpu_tflops:g} TFLOP/s"
    return ComputeBudget(gpu=name, peak_tflops=peak, utilization=args.utilization)

