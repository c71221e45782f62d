"""The two workloads of `just bench-gpu`, built as the project runs them.

Extraction: the `FeatureEncoder` of an extraction config, called through `stages.serving.compute_arrays`
exactly as the extraction worker calls it per mini-batch (uint8 images -> VAE latents -> noised latents ->
U-Net stopped after the deepest tap, hooks capturing the features -> pooled arrays in their stored dtypes).
At full size it is the real run's spec (`configs/extract/llava558k*.yaml`) on the full-size architecture
(`benchmarks.sd21` / `benchmarks.sdxl`) with the library's default random initialisation, built directly on
the device: nothing is downloaded. The tokenizers, scheduler and the VAE's dtype (SDXL's `force_upcast`
keeps it in float32) are those the loader gives the embedded pipeline of the same layout. At reduced size it
is the bundled sample's spec and tiny embedded model, loaded as `just extract` loads it.

LLM: one training step (forward with `inputs_embeds`, labels and the attention mask as `train.model`
calls the LLM, loss, backward; no optimizer step) of a causal LM: Llama-7B / Vicuna-7B v1.5 shapes with
`layers` decoder layers at full size, the embedded tiny LLM at reduced size.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch

from benchmarks.sd21 import sd21_base_modules
from benchmarks.sdxl import sdxl_base_modules
from benchmarks.throughput import counted_gflop
from stages.cache_spec import CacheSpec, cache_spec_from_yaml
from stages.encoders import SDFeatureEncoder
from stages.features import LATENTS, FeatureName
from stages.locations import REPO
from stages.serving import compute_arrays
from train.model import load_llm, position_ids

__all__ = ["Backbone", "BACKBONES", "load_encoder", "extraction_inputs", "extract", "extraction_gflop",
           "compile_regions", "LLAMA_7B", "llm_parameters", "build_llm", "LLMBatch", "llm_batch", "train_step"]

CAPTION = "a photo of {} things on a wooden table next to a window"


@dataclass(frozen=True)
class Backbone:
    """An extraction backbone: the real run's config, the bundled sample's (its tiny embedded model) and a
    builder of the full-size architecture (`{"unet", "vae", "text_encoder"[, "text_encoder_2"]}` on a device)."""

    config: str
    sample_config: str
    modules: Callable[[torch.device], dict[str, torch.nn.Module]]


BACKBONES = {
    "sd21": Backbone("configs/extract/llava558k.yaml", "configs/extract/sample.yaml", sd21_base_modules),
    "sdxl": Backbone("configs/extract/llava558k-sdxl.yaml", "configs/extract/sample-sdxl.yaml", sdxl_base_modules),
}


def load_encoder(backbone: Backbone, *, full: bool, device: torch.device, dtype: torch.dtype,
                 resolution: int | None = None) -> SDFeatureEncoder:
    """The encoder of `backbone`'s real (`full`) or sample spec, at `resolution` if given (module docstring)."""
    sample = cache_spec_from_yaml(REPO / backbone.sample_config)[0]
    spec = cache_spec_from_yaml(REPO / backbone.config)[0] if full else sample
    spec = replace(spec, resolution=resolution or spec.resolution)
    encoder = sample.kind.load(replace(sample, resolution=spec.resolution), device=device, dtype=dtype)
    if not full:
        return encoder
    loaded = encoder.components
    modules = {name: module.to(dtype=getattr(loaded, name).dtype).eval().requires_grad_(False)
               for name, module in backbone.modules(device).items()}  # built on `device`, default init
    return SDFeatureEncoder(spec, replace(loaded, **modules, source=f"{spec.model} (random weights)"))


def extraction_inputs(spec: CacheSpec, batch: int) -> tuple[np.ndarray, list[str], dict[str, list[str]]]:
    """A mini-batch as the worker passes it: uint8 `(B, R, R, 3)` images, their keys (the noise depends on
    them) and one caption per image for each prompt source of the spec."""
    images = np.random.default_rng(batch).integers(0, 256, (batch, spec.resolution, spec.resolution, 3), np.uint8)
    keys = [f"bench/{i:06d}.jpg" for i in range(batch)]
    return images, keys, {source: [CAPTION.format(i) for i in range(batch)] for source in spec.prompt_sources}


def _feature_array_ids(spec: CacheSpec) -> list[str]:
    """The arrays of `spec` the U-Net pass computes (all but the latents)."""
    return [a for a in spec.array_ids() if a != LATENTS]


def extract(encoder: SDFeatureEncoder, images: np.ndarray, keys: Sequence[str],
            prompts: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Every array of the encoder's spec for one mini-batch, as the extraction worker computes them."""
    return compute_arrays(encoder, keys, array_ids=encoder.spec.array_ids(), images=images, prompts=prompts)


def extraction_gflop(encoder: SDFeatureEncoder) -> dict[str, float]:
    """GFLOP per image of the VAE (`vae`) and of the U-Net pass with its prompts' text encoders (`unet`),
    each counted in a call on one image after an uncounted one (which encodes the empty prompt once, as a
    worker's first batch does)."""
    images, keys, prompts = extraction_inputs(encoder.spec, 1)
    features = _feature_array_ids(encoder.spec)
    latents = encoder.latents(images)
    encoder.features(latents, keys, prompts=prompts, array_ids=features)
    return {"vae": counted_gflop(lambda: encoder.latents(images)),
            "unet": counted_gflop(lambda: encoder.features(latents, keys, prompts=prompts, array_ids=features))}


def compile_regions(encoder: SDFeatureEncoder) -> None:
    """`torch.compile` in place the VAE encoder and every U-Net ResNet and transformer block that neither is
    nor holds a tap. The U-Net's own forward stays eager: the extractor attaches its tap hooks per call and
    the last one raises to stop the forward, which a compiled graph must not capture."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    # every compiled block shares `Module._call_impl`'s compile cache: one entry per block shape and batch
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4096)
    unet = encoder.components.unet
    taps = {id(FeatureName.parse(name).resolve(unet)) for name in encoder.spec.features}
    encoder.components.vae.encoder.compile()
    for module in unet.modules():
        if isinstance(module, (ResnetBlock2D, BasicTransformerBlock)) and not any(
                id(inner) in taps for inner in module.modules()):
            module.compile()


# Vicuna-7B v1.5 (Llama 2 7B): the LLM of the paper's LLaVA-1.5 runs
LLAMA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)


def llm_parameters(layers: int) -> int:
    """Parameters of `LLAMA_7B` with `layers` decoder layers (embeddings and LM head untied, RMSNorm weights)."""
    hidden, inner, vocab = LLAMA_7B["hidden_size"], LLAMA_7B["intermediate_size"], LLAMA_7B["vocab_size"]
    return layers * (4 * hidden * hidden + 3 * hidden * inner + 2 * hidden) + 2 * vocab * hidden + hidden


def build_llm(*, full: bool, layers: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """`LLAMA_7B` with `layers` layers, SDPA attention, default random init on `device` (`full`); else the
    embedded tiny LLM as the trainer loads it."""
    if not full:
        return load_llm("embedded:tiny-llm", dtype=dtype).to(device).train()
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**LLAMA_7B, num_hidden_layers=layers)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype).train()


@dataclass(frozen=True)
class LLMBatch:
    embeds: torch.Tensor  # (B, L, D) in the LLM's dtype, as the image-token splice hands them over
    mask: torch.Tensor  # (B, L) all attended
    labels: torch.Tensor  # (B, L) token ids, every position supervised


def llm_batch(llm: torch.nn.Module, *, batch: int, length: int) -> LLMBatch:
    config, device, dtype = llm.config, llm.device, llm.dtype
    generator = torch.Generator(device="cpu").manual_seed(batch)
    embeds = torch.randn(batch, length, config.hidden_size, generator=generator).to(device, dtype)
    labels = torch.randint(0, config.vocab_size, (batch, length), generator=generator).to(device)
    return LLMBatch(embeds, torch.ones(batch, length, dtype=torch.long, device=device), labels)


def train_step(llm: torch.nn.Module, batch: LLMBatch) -> None:
    """Forward and backward of one micro-batch, as `train.model.LlavaModel` calls the LLM."""
    llm.zero_grad(set_to_none=True)
    out = llm(inputs_embeds=batch.embeds, attention_mask=batch.mask, position_ids=position_ids(batch.mask),
              labels=batch.labels)
    out.loss.backward()
