"""Image–text matching scores (DESIGN §7): the paper's cross-attention LogSumExp, and a CLIP baseline.

`S(I, c) = mean_{t, trial} mean_{layer} mean_{head, pixel} logsumexp_{token}(scale · q·k)` over the
pre-softmax scores of the chosen `attn2` layers, on the image's cached latents noised per DESIGN §3 (keyed
by the image key, so every text sees the same noisy image). Every scorer maps `(image keys, texts)` pairs to
one score each, so a benchmark's metrics run the same way over both rows of a table.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch

from analysis.text import TOKEN_SETS, token_ids, token_mask
from stages.attention import CrossAttentionLayer, CrossAttentionRunner, cross_attention_layers
from stages.config import ConfigError
from stages.models import ModelLoadError, SDComponents, default_device, resolve_model_dir
from stages.preprocess import load_image

__all__ = ["DEFAULT_TIMESTEPS", "ITM_MIN_STRIDE", "ITMOptions", "PairScorer", "lse_score", "itm_score",
           "DiffusionITM", "ClipITM"]

DEFAULT_TIMESTEPS = (189, 389, 589, 789, 989)
ITM_MIN_STRIDE = 4  # default layers: maps 1/4 of the latent side and coarser (16x16 and below at 512 px)


@dataclass(frozen=True)
class ITMOptions:
    """Every choice of the score; recorded with the results."""

    layers: tuple[str, ...] = ()  # Cross-Attn names; () = every attn2 layer at ITM_MIN_STRIDE and coarser
    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS
    trials: int = 3
    seed: int = 0  # the global noise seed `g`
    tokens: str = "all"  # LogSumExp over all 77 positions, or `content` (the prompt's own tokens)
    batch_size: int = 8  # (image, text) pairs per U-Net forward

    def __post_init__(self) -> None:
        if self.tokens not in TOKEN_SETS:
            raise ConfigError(f"tokens must be one of {TOKEN_SETS}, got {self.tokens!r}")
        if not self.timesteps or self.trials <= 0 or self.batch_size <= 0:
            raise ConfigError("ITM needs at least one timestep, and positive trials and batch size")
        for name in self.layers:
            CrossAttentionLayer.parse(name)

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class PairScorer(Protocol):
    name: str

    def score(self, image_keys: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """One float per (image key, text) pair."""


def lse_score(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`(B, heads, HW, L)` pre-softmax scores, `(B, L)` token mask -> `(B,)`: LogSumExp over the masked
    tokens, then the mean over heads and pixels."""
    masked = scores.float().masked_fill(~mask[:, None, None, :], float("-inf"))
    return masked.logsumexp(dim=-1).mean(dim=(1, 2))


def itm_score(passes: Sequence[Mapping[Any, torch.Tensor]], mask: torch.Tensor) -> torch.Tensor:
    """Mean over passes (timesteps x trials) of the mean over layers of `lse_score`: `(B,)`."""
    per_pass = [torch.stack([lse_score(s, mask) for s in layers.values()]).mean(0) for layers in passes]
    return torch.stack(per_pass).mean(0)


class DiffusionITM:
    """The paper's score on SD components; `latents(keys)` supplies each image's z0 (cached or encoded)."""

    name = "SD cross-attention"

    def __init__(self, components: SDComponents, options: ITMOptions,
                 latents: Callable[[Sequence[str]], torch.Tensor]) -> None:
        self.components, self.options, self._latents = components, options, latents
        unet = components.unet
        self.layers = ([CrossAttentionLayer.parse(n) for n in options.layers] if options.layers
                       else cross_attention_layers(unet, min_stride=ITM_MIN_STRIDE))
        self.runner = CrossAttentionRunner(components, self.layers)

    def score(self, image_keys: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        if len(image_keys) != len(texts):
            raise ValueError(f"{len(image_keys)} images for {len(texts)} texts")
        unique = list(dict.fromkeys(image_keys))
        z0 = self._latents(unique)  # each image's latents read (or encoded) once
        row = {k: i for i, k in enumerate(unique)}
        out = []
        size = self.options.batch_size
        for start in range(0, len(texts), size):
            keys, batch_texts = list(image_keys[start:start + size]), list(texts[start:start + size])
            out.append(self._score_batch(z0[[row[k] for k in keys]], keys, batch_texts))
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def _score_batch(self, z0: torch.Tensor, keys: list[str], texts: list[str]) -> torch.Tensor:
        tokenizer = self.components.tokenizer
        mask = token_mask(token_ids(tokenizer, texts), eos_token_id=tokenizer.eos_token_id,
                          tokens=self.options.tokens)
        text = self.runner.condition(texts)
        passes = [{layer: kinds["scores"] for layer, kinds in
                   self.runner.run(z0, keys, text, timestep=t, trial=trial, seed=self.options.seed).items()}
                  for trial in range(self.options.trials) for t in self.options.timesteps]
        return itm_score(passes, mask)


class ClipITM:
    """Cosine similarity of CLIP image and text embeddings from a local `CLIPModel` directory (with its
    tokenizer and image-processor files); images are read from `image_root` and preprocessed by CLIP."""

    name = "CLIP"

    def __init__(self, model: str, *, image_root: str | Path, device: str | None = None,
                 text_template: str = "{}") -> None:
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        model_dir = resolve_model_dir(model)
        try:
            self.model = CLIPModel.from_pretrained(model_dir).eval().requires_grad_(False)
            self.tokenizer = CLIPTokenizer.from_pretrained(model_dir)
            self.processor = CLIPImageProcessor.from_pretrained(model_dir)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load a CLIP model (vision + text towers, tokenizer and image processor) "
                                 f"from {str(model_dir)!r}: {exc}") from exc
        self.model.to(torch.device(device) if device else default_device())
        self.image_root, self.text_template = Path(image_root), text_template

    @torch.inference_mode()
    def score(self, image_keys: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        unique = list(dict.fromkeys(image_keys))
        device = self.model.device
        pixels = self.processor(images=[load_image(self.image_root, k) for k in unique],
                                return_tensors="pt")["pixel_values"].to(device)
        images = _unit(_embedding(self.model.get_image_features(pixel_values=pixels)))
        ids = token_ids(self.tokenizer, [self.text_template.format(t) for t in texts]).to(device)
        text = _unit(_embedding(self.model.get_text_features(input_ids=ids)))
        row = torch.tensor([unique.index(k) for k in image_keys], device=device)
        return (images[row] * text).sum(-1).float().cpu().numpy()


def _embedding(output: Any) -> torch.Tensor:
    """`get_*_features` returns the projected embedding (a tensor, or an output object holding it)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)
