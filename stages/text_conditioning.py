"""What the U-Net is conditioned on for a batch of prompts (DESIGN §3 text, §3a SDXL).

- `ClipTextConditioning` (SD 1.x / 2.x): one CLIP text encoder; `encoder_hidden_states` is its
  `last_hidden_state`; the unconditional prompt is the encoded empty prompt.
- `SDXLTextConditioning`: two text encoders; `encoder_hidden_states` is their penultimate hidden states
  concatenated on the channel axis, `text_embeds` the pooled projection of the second; the empty
  prompt is zeros when the pipeline says `force_zeros_for_empty_prompt`, else encoded.

Both return a `TextEmbedding`, which turns into the U-Net's keyword arguments for images of a given
size (SDXL's `time_ids = [H, W, 0, 0, H, W]`: original size, crop top-left, target size). An empty
prompt always gets the unconditional embedding, also inside a conditioned batch, so that a sample
with no prompt text has `X_c == X_u`.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

if TYPE_CHECKING:
    from stages.models import SDComponents

__all__ = ["TextEmbedding", "ClipTextConditioning", "SDXLTextConditioning", "TextConditioning",
           "text_conditioning_for", "time_ids", "N_TIME_IDS", "SDXL_TEXT_LAYER"]

SDXL_TEXT_LAYER = -2  # hidden_states index: the penultimate layer of each encoder (diffusers' SDXL, no clip skip)
N_TIME_IDS = 6


def time_ids(height: int, width: int) -> list[int]:
    """SDXL's size conditioning for an uncropped `height x width` image: original size, crop top-left,
    target size."""
    return [height, width, 0, 0, height, width]


@dataclass(frozen=True)
class TextEmbedding:
    """Text conditioning of a batch: `hidden_states` (B, L, D) for cross-attention and, for SDXL,
    `pooled` (B, P), the U-Net's `text_embeds`."""

    hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None

    def expand(self, batch: int) -> "TextEmbedding":
        """A one-row embedding broadcast to `batch` rows (a view, no copy)."""
        pooled = None if self.pooled is None else self.pooled.expand(batch, -1)
        return TextEmbedding(self.hidden_states.expand(batch, -1, -1), pooled)

    def to(self, dtype: torch.dtype) -> "TextEmbedding":
        return TextEmbedding(self.hidden_states.to(dtype), None if self.pooled is None else self.pooled.to(dtype))

    def repeat(self, times: int) -> "TextEmbedding":
        """The whole batch `times` times over, batch-major like `Tensor.repeat`: (times * B, ...)."""
        pooled = None if self.pooled is None else self.pooled.repeat(times, 1)
        return TextEmbedding(self.hidden_states.repeat(times, 1, 1), pooled)

    @staticmethod
    def cat(parts: Sequence["TextEmbedding"]) -> "TextEmbedding":
        pooled = [p.pooled for p in parts]
        if any(p is None for p in pooled) and not all(p is None for p in pooled):
            raise ValueError("cannot concatenate text embeddings with and without pooled embeddings")
        return TextEmbedding(torch.cat([p.hidden_states for p in parts]),
                             None if pooled[0] is None else torch.cat(pooled))

    def unet_kwargs(self, *, image_size: tuple[int, int]) -> dict[str, Any]:
        """Keyword arguments of `UNet2DConditionModel.forward` for images of `image_size` (H, W) pixels."""
        if self.pooled is None:
            return {"encoder_hidden_states": self.hidden_states}
        ids = torch.tensor(time_ids(*image_size), dtype=self.pooled.dtype, device=self.pooled.device)
        return {"encoder_hidden_states": self.hidden_states,
                "added_cond_kwargs": {"text_embeds": self.pooled, "time_ids": ids.expand(len(self.pooled), -1)}}


def _token_ids(tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """DESIGN §3: padded to the tokenizer's `model_max_length`, truncated. (B, L) int64."""
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


class TextConditioning(abc.ABC):
    """Prompts -> `TextEmbedding`; an all-empty batch is answered from one cached unconditional row."""

    def __init__(self) -> None:
        self._unconditional: TextEmbedding | None = None

    @abc.abstractmethod
    def encode(self, prompts: list[str]) -> TextEmbedding:
        """Every prompt through the text encoder(s), as DESIGN §3 / §3a say."""

    def unconditional(self) -> TextEmbedding:
        """The embedding of the empty prompt, one row."""
        if self._unconditional is None:
            self._unconditional = self.encode([""])
        return self._unconditional

    @torch.inference_mode()
    def __call__(self, prompts: Sequence[str]) -> TextEmbedding:
        if all(p == "" for p in prompts):
            return self.unconditional().expand(len(prompts))
        return self.encode(list(prompts))


class ClipTextConditioning(TextConditioning):
    """SD 1.x / 2.x: `text_encoder(ids).last_hidden_state`, (B, 77, D)."""

    def __init__(self, tokenizer: Any, text_encoder: Any) -> None:
        super().__init__()
        self.tokenizer, self.text_encoder = tokenizer, text_encoder

    def encode(self, prompts: list[str]) -> TextEmbedding:
        ids = _token_ids(self.tokenizer, prompts)
        return TextEmbedding(self.text_encoder(ids.to(self.text_encoder.device))[0])


class SDXLTextConditioning(TextConditioning):
    """SDXL (DESIGN §3a): penultimate hidden states of both encoders concatenated, (B, 77, D1 + D2), and
    the second encoder's pooled projection, (B, P); zeros for the empty prompt under `force_zeros`."""

    def __init__(self, tokenizers: Sequence[Any], text_encoders: Sequence[Any], *,
                 force_zeros_for_empty_prompt: bool) -> None:
        super().__init__()
        if len(tokenizers) != len(text_encoders):
            raise ValueError("one tokenizer per text encoder")
        self.pairs = list(zip(tokenizers, text_encoders))
        self.force_zeros = force_zeros_for_empty_prompt

    def _encode_all(self, prompts: list[str]) -> TextEmbedding:
        states, pooled = [], None
        for tokenizer, encoder in self.pairs:
            out = encoder(_token_ids(tokenizer, prompts).to(encoder.device), output_hidden_states=True)
            states.append(out.hidden_states[SDXL_TEXT_LAYER])  # (B, 77, D_i)
            pooled = out[0]  # the last encoder's: CLIPTextModelWithProjection's text_embeds, (B, P)
        return TextEmbedding(torch.cat(states, dim=-1), pooled)

    def encode(self, prompts: list[str]) -> TextEmbedding:
        encoded = self._encode_all(prompts)
        if not self.force_zeros or "" not in prompts:
            return encoded
        empty = torch.tensor([p == "" for p in prompts], device=encoded.pooled.device)  # (B,)
        return TextEmbedding(encoded.hidden_states.masked_fill(empty[:, None, None], 0),
                             encoded.pooled.masked_fill(empty[:, None], 0))


def text_conditioning_for(components: "SDComponents") -> TextConditioning:
    """SDXL's two-encoder conditioning when the components have a second text encoder, else SD's."""
    if components.text_encoder_2 is None:
        return ClipTextConditioning(components.tokenizer, components.text_encoder)
    return SDXLTextConditioning((components.tokenizer, components.tokenizer_2),
                                (components.text_encoder, components.text_encoder_2),
                                force_zeros_for_empty_prompt=components.force_zeros_for_empty_prompt)
