"""`embedded:tiny-sd`: a Stable Diffusion 2.1-base-shaped pipeline with seeded random weights.

Same classes, block types, linear projections, cross-attention wiring, VAE down-sampling factor (8),
latent channels (4), scaling factor and scheduler config as SD 2.1-base. U-Net channels are 1/20 of
SD's (320, 640, 1280, 1280), so levels 1 and 2 differ in width as they do there; every attention head
is 16-dim and the head count grows with the channels, as SD's (5, 10, 20, 20) heads of 64 do.
Saved as a standard diffusers directory (`model_index.json`, `unet/ vae/ text_encoder/ tokenizer/
scheduler/`), so it is loaded through exactly the `from_pretrained(dir, subfolder=...)` calls used
for a real checkout. The scheduler is saved as a `DDPMScheduler` with SD 2.1-base's values (the real
checkout names `PNDMScheduler`; `DDPMScheduler.from_pretrained` reads either).

The building blocks (`write_clip_tokenizer`, `save_*`, `model_index`, `build_sd_pipeline`) also make the
tiny SD 1.5 / SD 2.1-768 variants (`sd_variants.py`) and the tiny SDXL (`sdxl.py`).

The tokenizer is CLIP's byte-level BPE format written by hand (vocab.json + merges.txt learned from a
small fixed corpus): nothing is downloaded. Padding uses `"!"` (id 0), as SD 2.1's tokenizer does
(OpenCLIP pads with zeros); SD 1.x pads with `<|endoftext|>` instead.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from stages.embedded import register_embedded
from stages.embedded.weights import save_model, seeded_model, write_json

__all__ = [
    "NAME",
    "VERSION",
    "UNET_CONFIG",
    "VAE_CONFIG",
    "TEXT_ENCODER_CONFIG",
    "SCHEDULER_CONFIG",
    "LATENT_GAIN",
    "MODEL_MAX_LENGTH",
    "PAD_TOKEN",
    "EOS_TOKEN",
    "SD_PIPELINE_COMPONENTS",
    "NO_SAFETY_CHECKER",
    "bytes_to_unicode",
    "learn_bpe_merges",
    "write_clip_tokenizer",
    "model_index",
    "save_text_encoder",
    "save_unet",
    "save_vae",
    "save_scheduler",
    "build_sd_pipeline",
    "build_tiny_sd",
]

NAME = "tiny-sd"
VERSION = 2  # 2: weights from stages.embedded.weights, configs without version stamps
MODEL_MAX_LENGTH = 77
PAD_TOKEN = "!"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
NUM_MERGES = 600

UNET_CONFIG = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (16, 32, 64, 64),  # SD 2.1-base: (320, 640, 1280, 1280)
    "layers_per_block": 2,
    "attention_head_dim": (1, 2, 4, 4),  # diffusers' name for the head *count*; SD: (5, 10, 20, 20)
    "cross_attention_dim": 64,  # = text hidden size; SD: 1024
    "use_linear_projection": True,
    "norm_num_groups": 8,  # SD: 32
}
VAE_CONFIG = {
    "sample_size": 512,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 16, 32, 32),  # SD: (128, 256, 512, 512)
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 4,  # SD: 32
    "scaling_factor": 0.18215,
}
TEXT_ENCODER_CONFIG = {  # vocab_size and special-token ids are filled in from the tokenizer
    "hidden_size": 64,  # SD: 1024
    "intermediate_size": 256,
    "num_hidden_layers": 2,  # SD: 23
    "num_attention_heads": 4,
    "max_position_embeddings": MODEL_MAX_LENGTH,
    "hidden_act": "gelu",
    "projection_dim": 64,
}
# The seeded VAE encodes the sample photos to posterior means of std ~0.28, i.e. ~0.05 after the 0.18215
# scaling, so at any timestep the noise would drown the image. A trained SD VAE gives scaled latents of
# std ~1; multiplying the mean half of `quant_conv` by this constant gives ~0.8 (the log-variance half
# is left alone). A power of two keeps the product exact, hence the bytes stable.
LATENT_GAIN = 16.0
SCHEDULER_CONFIG = {  # SD 2.1-base's scheduler_config.json values
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

# A little English in the register of captions, prompts and visual questions; the BPE merges are learned
# from it. ASCII only, so the simple pre-tokenizer below matches CLIP's regex exactly.
_CORPUS = """
a photo of a cat sitting on a wooden table next to a cup of coffee. a close up of a dog in the grass.
a smiling astronaut in an orange space suit stands beside a model of the space shuttle and a flag.
a man in a dark coat looks through a camera on a tripod in a field; buildings are in the background.
a red motorcycle is parked in a garage with shelves of boxes. a rocket on the launch pad at night.
rows of old silver coins on a black background. the surface of the moon with craters. a brick wall.
what is the color of the cup? how many coins are there? is there a person in the image? what is this?
describe the image in detail. answer the question using a single word or phrase. who wrote this book?
the quick brown fox jumps over the lazy dog. there are two people walking along the street in the rain.
an oil painting of a mountain landscape at sunset, highly detailed, trending on artstation, 4k, 8k.
a black and white photograph of a city skyline. the image shows a page of printed text and a title.
"""


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable character map, in vocabulary order.

    Printable Latin-1 bytes map to themselves; the other 68 go to chr(256 + n), in byte order.
    """
    order = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
             *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in order]
    chars = [chr(b) for b in order] + [chr(256 + n) for n in range(len(extra))]
    return dict(zip(order + extra, chars))


_PRETOKEN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")


def _words(text: str, byte_map: dict[int, str]) -> Counter[tuple[str, ...]]:
    """Pre-tokenise like CLIP (lower-case, regex split), byte-map, mark each word's end with `</w>`."""
    if not text.isascii():
        raise ValueError("the merge corpus must be ASCII (the simplified pre-tokenizer assumes it)")
    words: Counter[tuple[str, ...]] = Counter()
    for token in _PRETOKEN.findall(" ".join(text.lower().split())):
        chars = [byte_map[b] for b in token.encode("utf-8")]
        words[(*chars[:-1], chars[-1] + "</w>")] += 1
    return words


def _merge_word(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def learn_bpe_merges(text: str, *, num_merges: int, base_vocab: set[str]) -> list[tuple[str, str]]:
    """Classic BPE: repeatedly merge the most frequent adjacent pair (ties broken lexicographically).

    Pairs whose merged string is already a vocabulary entry are skipped so that every merge adds
    exactly one new id. Stops early once every corpus word is a single symbol.
    """
    words = _words(text, bytes_to_unicode())
    known = set(base_vocab)
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        candidates = [(-c, p) for p, c in pairs.items() if p[0] + p[1] not in known]
        if not candidates:
            break
        _, best = min(candidates)
        merges.append(best)
        known.add(best[0] + best[1])
        words = Counter({_merge_word(w, best): c for w, c in words.items()})
    return merges


def write_clip_tokenizer(out_dir: Path, *, corpus: str = _CORPUS, num_merges: int = NUM_MERGES,
                         pad_token: str = PAD_TOKEN) -> dict[str, int]:
    """Write vocab.json, merges.txt and the configs a `CLIPTokenizer` loads; return the special-token ids.

    Vocabulary order is CLIP's: 256 byte characters, their `</w>` forms, one entry per merge, then
    `<|startoftext|>` and `<|endoftext|>`. `pad_token`: `"!"` (OpenCLIP: SD 2.x, SDXL's second
    tokenizer) or `<|endoftext|>` (OpenAI CLIP: SD 1.x, SDXL's first tokenizer).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    base = chars + [c + "</w>" for c in chars]
    merges = learn_bpe_merges(corpus, num_merges=num_merges, base_vocab=set(base))
    tokens = base + [a + b for a, b in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise AssertionError("duplicate vocabulary entries")
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": pad_token}
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": MODEL_MAX_LENGTH,
              "do_lower_case": True, "errors": "replace", "add_prefix_space": False}
    write_json(out_dir / "special_tokens_map.json", special)
    write_json(out_dir / "tokenizer_config.json", config)
    return {"vocab_size": len(vocab), "bos_token_id": vocab[BOS_TOKEN], "eos_token_id": vocab[EOS_TOKEN],
            "pad_token_id": vocab[pad_token]}


def model_index(pipeline_class: str, components: dict[str, str], **extra: object) -> dict:
    """A diffusers `model_index.json`: `components` maps a subfolder to its class name (the library
    follows from the name); `extra` holds pipeline config values and absent optional components."""
    library = {name: "transformers" if name.startswith("CLIP") else "diffusers" for name in components.values()}
    return {"_class_name": pipeline_class, **extra,
            **{folder: [library[name], name] for folder, name in components.items()}}


SD_PIPELINE_COMPONENTS = {"scheduler": "DDPMScheduler", "text_encoder": "CLIPTextModel", "tokenizer": "CLIPTokenizer",
                          "unet": "UNet2DConditionModel", "vae": "AutoencoderKL"}
# SD 2.1-base's model_index.json has no safety checker / feature extractor either
NO_SAFETY_CHECKER = {"feature_extractor": [None, None], "requires_safety_checker": False,
                     "safety_checker": [None, None]}


def save_text_encoder(path: Path, config: dict, token_ids: dict[str, int], *, namespace: str,
                      with_projection: bool = False) -> None:
    """A seeded `CLIPTextModel` (or `CLIPTextModelWithProjection`, SDXL's second encoder)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    model = seeded_model(lambda: cls(CLIPTextConfig(**config, **token_ids)), namespace=namespace)
    save_model(model, path, weights_name="model.safetensors")


def save_unet(path: Path, config: dict, *, namespace: str) -> None:
    from diffusers import UNet2DConditionModel

    model = seeded_model(lambda: UNet2DConditionModel(**config), namespace=namespace)
    save_model(model, path, weights_name="diffusion_pytorch_model.safetensors")


def save_vae(path: Path, config: dict, *, namespace: str) -> None:
    """A seeded `AutoencoderKL` whose scaled latents have unit scale (see LATENT_GAIN)."""
    import torch
    from diffusers import AutoencoderKL

    vae = seeded_model(lambda: AutoencoderKL(**config), namespace=namespace)
    with torch.no_grad():
        vae.quant_conv.weight[: vae.config.latent_channels] *= LATENT_GAIN
        vae.quant_conv.bias[: vae.config.latent_channels] *= LATENT_GAIN
    save_model(vae, path, weights_name="diffusion_pytorch_model.safetensors")


def save_scheduler(path: Path, class_name: str, config: dict) -> None:
    """The scheduler config as the real checkout's class reads it (read back as a `DDPMScheduler`)."""
    import diffusers

    scheduler = getattr(diffusers, class_name).from_config(config)
    values = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}  # every value, no stamps
    write_json(path / "scheduler_config.json", {"_class_name": class_name, **values})


def build_sd_pipeline(out: Path, *, name: str, unet: dict, vae: dict, text_encoder: dict, scheduler: tuple[str, dict],
                      pad_token: str = PAD_TOKEN) -> None:
    """Write an SD 1.x / 2.x-layout pipeline directory; every parameter seeded by `<name>/<component>/<param>`."""
    out = Path(out)
    ids = write_clip_tokenizer(out / "tokenizer", pad_token=pad_token)
    save_text_encoder(out / "text_encoder", text_encoder, ids, namespace=f"{name}/text_encoder")
    save_unet(out / "unet", unet, namespace=f"{name}/unet")
    save_vae(out / "vae", vae, namespace=f"{name}/vae")
    save_scheduler(out / "scheduler", *scheduler)
    components = {**SD_PIPELINE_COMPONENTS, "scheduler": scheduler[0]}
    write_json(out / "model_index.json", model_index("StableDiffusionPipeline", components, **NO_SAFETY_CHECKER))


def build_tiny_sd(out: Path) -> None:
    """Write the whole pipeline directory (bytes: `stages.embedded.weights`)."""
    build_sd_pipeline(out, name=NAME, unet=UNET_CONFIG, vae=VAE_CONFIG, text_encoder=TEXT_ENCODER_CONFIG,
                      scheduler=("DDPMScheduler", SCHEDULER_CONFIG))


register_embedded(NAME, version=VERSION, build_fn=build_tiny_sd)
