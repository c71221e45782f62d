"""The LLaVA-style model: a vision adapter whose tokens are spliced into a Hugging Face causal LM.

Each `IMAGE_TOKEN_INDEX` in `input_ids` is replaced by the adapter's `T` image tokens for that image
(labels `IGNORE_INDEX` there); every text token moves right by `(T - 1)` × (images before it). The
splice is one scatter for text and one for image tokens, for any number of images per row.
Right padding is assumed (the collate's convention); position ids come from the attention mask.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch
from torch import Tensor, nn

from stages.models import ModelLoadError, default_device, resolve_model_dir, resolve_precision
from train.config import TrainConfig, VisionConfig
from train.conversation import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from train.fusion import AdapterConfig, save_adapter
from train.pretrained_adapter import load_pretrained_adapter

__all__ = ["LlavaOutput", "LlavaModel", "splice_image_tokens", "load_llm", "build_model", "ADAPTER_FILE",
           "LLM_DIR", "load_tokenizer", "position_ids"]

ADAPTER_FILE = "adapter.safetensors"
LLM_DIR = "llm"


class LlavaOutput(NamedTuple):
    loss: Tensor  # scalar, mean over supervised tokens
    tokens: Tensor  # scalar, attended positions after the splice (for tokens/s)


def splice_image_tokens(
    *, embeds: Tensor, input_ids: Tensor, labels: Tensor, attention_mask: Tensor, image_tokens: Tensor | None,
    max_length: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Replace each image placeholder by its tokens; returns (embeds, labels, attention_mask) cut to max_length.

    embeds (B, L, D) text embeddings (anything at placeholder positions); image_tokens (N_img, T, D) in
    row-major placeholder order. Rows with fewer images get extra masked, ignored padding at the end.
    """
    batch, length, width = embeds.shape
    is_image = input_ids == IMAGE_TOKEN_INDEX  # (B, L)
    n_image = int(is_image.sum())
    if n_image != (0 if image_tokens is None else image_tokens.shape[0]):
        got = 0 if image_tokens is None else image_tokens.shape[0]
        raise ValueError(f"batch has {n_image} image placeholders but {got} images' features")
    if n_image == 0:
        return embeds[:, :max_length], labels[:, :max_length], attention_mask[:, :max_length]
    extra = image_tokens.shape[1] - 1
    before = torch.cumsum(is_image, dim=1) - is_image.long()  # images strictly before each position (B, L)
    dest = torch.arange(length, device=embeds.device) + extra * before  # (B, L)
    out_len = length + extra * int(is_image.sum(dim=1).max())
    rows = torch.arange(batch, device=embeds.device)[:, None].expand(batch, length)  # (B, L)
    text = ~is_image
    out_embeds = embeds.new_zeros(batch, out_len, width)
    out_labels = labels.new_full((batch, out_len), IGNORE_INDEX)
    out_mask = attention_mask.new_zeros(batch, out_len)
    out_embeds[rows[text], dest[text]] = embeds[text]
    out_labels[rows[text], dest[text]] = labels[text]
    out_mask[rows[text], dest[text]] = attention_mask[text]
    img_rows, img_cols = is_image.nonzero(as_tuple=True)  # (N,) each, row-major = feature order
    slots = dest[img_rows, img_cols][:, None] + torch.arange(extra + 1, device=embeds.device)  # (N, T)
    out_embeds[img_rows[:, None], slots] = image_tokens.to(embeds.dtype)
    out_mask[img_rows[:, None], slots] = attention_mask[img_rows, img_cols][:, None]
    return out_embeds[:, :max_length], out_labels[:, :max_length], out_mask[:, :max_length]


def position_ids(attention_mask: Tensor) -> Tensor:
    """(B, L) positions counting attended tokens only: 0 at each row's first one, for any padding side."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


class LlavaModel(nn.Module):
    """`adapter` (features → image tokens) + `llm` (any `AutoModelForCausalLM`)."""

    def __init__(self, *, llm: nn.Module, adapter: nn.Module, adapter_config: AdapterConfig,
                 max_length: int) -> None:
        super().__init__()
        self.llm = llm
        self.adapter = adapter
        self.adapter_config = adapter_config
        self.max_length = max_length

    def freeze_llm(self) -> None:
        """Stage 1: only the adapter trains."""
        self.llm.requires_grad_(False)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute LLM activations in backward (transformers 5 renamed it activation checkpointing)."""
        self.llm.config.use_cache = False
        kwargs = {"use_reentrant": False}
        if hasattr(self.llm, "activation_checkpointing_enable"):
            self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def embed_inputs(self, *, input_ids: Tensor, labels: Tensor, attention_mask: Tensor,
                     features: Mapping[str, Tensor], max_length: int) -> tuple[Tensor, Tensor, Tensor]:
        """Text embeddings with each image placeholder replaced by the adapter's tokens: (embeds, labels,
        attention_mask) as `splice_image_tokens` returns them."""
        is_image = input_ids == IMAGE_TOKEN_INDEX  # (B, L)
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_image, 0))  # (B, L, D)
        image_tokens = self.adapter(features) if bool(is_image.any()) else None  # (N_img, T, D)
        if image_tokens is None and torch.is_grad_enabled():
            # Text only: the adapter still runs (on zeros, its output times 0 joining the embeddings), so its
            # gradients arrive after the LLM's on every rank, as with images: ZeRO-2 reduces gradients in
            # arrival order, and ranks mixing image and text-only micro-batches must agree on it.
            dummy = {a: embeds.new_zeros(1, 1, int(c)) for a, c in self.adapter_config.feature_dims.items()}
            embeds = embeds + self.adapter(dummy).sum() * 0.0
        return splice_image_tokens(embeds=embeds, input_ids=input_ids, labels=labels,
                                   attention_mask=attention_mask.bool(), image_tokens=image_tokens,
                                   max_length=max_length)

    def forward(self, *, input_ids: Tensor, labels: Tensor, attention_mask: Tensor,
                features: Mapping[str, Tensor], has_image: Tensor | None = None) -> LlavaOutput:
        is_image = input_ids == IMAGE_TOKEN_INDEX  # (B, L)
        if has_image is not None and not torch.equal(is_image.any(dim=1), has_image.to(is_image.device)):
            raise ValueError("has_image disagrees with the image placeholders in input_ids")
        embeds, labels, mask = self.embed_inputs(input_ids=input_ids, labels=labels,
                                                            attention_mask=attention_mask, features=features,
                                                            max_length=self.max_length)
        loss = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids(mask), labels=labels).loss
        return LlavaOutput(loss=loss, tokens=mask.sum())

    def save_pretrained(self, out_dir: str | Path, *, with_llm: bool) -> None:
        """`adapter.safetensors` (config in its header) and, with `with_llm`, the LLM in HF format under `llm/`."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_adapter(self.adapter, out_dir / ADAPTER_FILE, config=self.adapter_config)
        if with_llm:
            self.llm.save_pretrained(out_dir / LLM_DIR, safe_serialization=True)


def load_llm(spec: str, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A causal LM from `embedded:<name>`, a local directory or a hub id, in `dtype` (DeepSpeed casts for bf16)."""
    from transformers import AutoModelForCausalLM

    from stages.embedded import resolve_model

    source = resolve_model(spec)  # embedded:<name> -> its built directory; anything else unchanged
    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load causal LM {spec!r} (from {source!r}): {exc}") from exc


def load_tokenizer(model: str) -> Any:
    """The LLM's tokenizer (`embedded:<name>`, a directory or a hub id), padding with unk as LLaVA does."""
    from transformers import AutoTokenizer

    source = resolve_model_dir(model)  # a clear error for a missing directory or an uncached hub id
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {model!r} from {str(source)!r}: {exc}") from exc
    if tokenizer.pad_token_id is None:  # Vicuna has none; LLaVA pads with unk (the mask comes from lengths)
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer


def build_model(config: TrainConfig, *, feature_dims: Mapping[str, int]) -> LlavaModel:
    """LLM + fresh adapter (or the one `config.pretrained_adapter` names: `train.pretrained_adapter`), frozen
    for pretrain.

    The LLM loads in the training precision (bf16 halves host memory for a 7B model on every rank);
    DeepSpeed keeps fp32 master weights of whatever trains.
    """
    llm = load_llm(config.model, dtype=resolve_precision(config.precision, default_device()))
    hidden = int(llm.config.hidden_size)
    vision: VisionConfig = config.vision
    dims = {a: int(feature_dims[a]) for a in vision.array_ids if a in feature_dims}
    adapter_config = AdapterConfig(vision=vision, feature_dims=dims, hidden_size=hidden, llm=config.model)
    adapter = adapter_config.build()
    if config.pretrained_adapter:
        load_pretrained_adapter(adapter, config.pretrained_adapter, expected=adapter_config)
    adapter.to(dtype=llm.dtype)
    model = LlavaModel(llm=llm, adapter=adapter, adapter_config=adapter_config, max_length=config.max_length)
    if config.freeze_llm:
        model.freeze_llm()
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model
