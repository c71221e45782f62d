"""Cross-attention capture: the pre-softmax scores `scale·QKᵀ` and/or the softmax maps of chosen `attn2`
layers, per head, through diffusers' attention-processor mechanism, with early exit after the last one.

Layers are named in the paper's grammar with kind `Cross-Attn` (`U-L1-R1-B0-Cross-Attn` is
`up_blocks[1].attentions[1].transformer_blocks[0].attn2`); the name shares everything but its kind with the
layer's `Cross-Q` feature, so `stages.features` parses and validates it. `Cross-Attn` is not a store array
(a `FeatureName` kind would let an extraction config ask for it), hence its own small type here.

`CrossAttentionCapture` wraps each chosen layer's own processor: it computes Q and K with the layer's
`to_q`/`to_k`, records what was asked, then lets the original processor produce the layer's output, so
capturing changes no value the U-Net computes. Once every chosen layer has recorded, the wrapper raises
before the attention of the last one runs and the forward stops (the extractor's early exit, for processors).
`CrossAttentionRunner` runs the U-Net on cached latents with the DESIGN §3 noise for each timestep and trial.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from stages.features import FeatureName, FeatureNameError, valid_feature_names
from stages.models import SDComponents
from stages.noise import batch_noise
from stages.text_conditioning import TextEmbedding, text_conditioning_for

__all__ = ["CROSS_ATTN", "RECORDS", "CrossAttentionLayer", "cross_attention_layers", "layer_stride",
           "CrossAttentionCapture", "CrossAttentionRunner"]

CROSS_ATTN = "Cross-Attn"
RECORDS = ("scores", "probs")  # pre-softmax scale·QKᵀ, softmax over the text tokens; both (B, heads, HW, L)
_QUERY_KIND = "Cross-Q"

@dataclass(frozen=True, order=True)
class CrossAttentionLayer:
    """One `attn2` layer, e.g. `U-L1-R1-B0-Cross-Attn`."""

    query: FeatureName  # the `Cross-Q` feature of the same transformer block

    @classmethod
    def parse(cls, text: str) -> "CrossAttentionLayer":
        stem, _, kind = text.strip().rpartition("-Cross-")
        if f"Cross-{kind}" != CROSS_ATTN or not stem:
            raise FeatureNameError(f"{text!r} is not a cross-attention layer name: expected "
                                   f"<D|U>-L<level>-R<repeat>-B<block>-{CROSS_ATTN} or M-R<repeat>-B<block>-"
                                   f"{CROSS_ATTN} (e.g. U-L1-R1-B0-{CROSS_ATTN})")
        return cls(FeatureName.parse(f"{stem}-{_QUERY_KIND}"))

    def __str__(self) -> str:
        return str(self.query).removesuffix(_QUERY_KIND) + CROSS_ATTN

    @property
    def module_path(self) -> str:
        """`…transformer_blocks.0.attn2`."""
        return self.query.module_path.removesuffix(".to_q")

    def resolve(self, unet: torch.nn.Module) -> torch.nn.Module:
        """The layer's `Attention` module; an error listing the valid names if `unet` has none."""
        try:
            self.query.resolve(unet)
        except FeatureNameError:
            valid = ", ".join(map(str, cross_attention_layers(unet)))
            raise FeatureNameError(f"{self} does not exist in this U-Net; valid names: {valid}") from None
        return unet.get_submodule(self.module_path)


def cross_attention_layers(unet: torch.nn.Module, *, min_stride: int = 1) -> list[CrossAttentionLayer]:
    """Every `attn2` layer of `unet` in forward order, keeping those whose map is at least `min_stride`
    times coarser than the latents (`min_stride=4`: 16x16 and coarser at 512 px, the paper's ITM layers)."""
    layers = [CrossAttentionLayer(FeatureName.parse(n)) for n in valid_feature_names(unet)
              if n.endswith(f"-{_QUERY_KIND}")]
    return [layer for layer in layers if layer_stride(unet, layer) >= min_stride]


def layer_stride(unet: Any, layer: CrossAttentionLayer) -> int:
    """How many times smaller than the latents this layer's map is on each side (1, 2, 4, 8 for SD)."""
    levels = len(unet.config.block_out_channels)
    name = layer.query
    if name.stage == "D":
        return 2 ** name.level
    if name.stage == "M":
        return 2 ** (levels - 1)
    return 2 ** (levels - 1 - name.level)


class _StopForward(Exception):
    """Raised once every chosen layer has recorded, so the U-Net does no work after it."""


class _CaptureProcessor:
    """Records one layer's scores/probs, then delegates to the layer's own processor for its output."""

    def __init__(self, capture: "CrossAttentionCapture", layer: CrossAttentionLayer, inner: Any) -> None:
        self.capture, self.layer, self.inner = capture, layer, inner

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        self.capture.record(self.layer, self._scores(attn, hidden_states, encoder_hidden_states, attention_mask))
        return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                          attention_mask=attention_mask, temb=temb, **kwargs)

    def _scores(self, attn: Any, hidden_states: torch.Tensor, context: torch.Tensor | None,
                attention_mask: torch.Tensor | None) -> torch.Tensor:
        """`attn.scale · Q Kᵀ` per head, float32: (B, heads, HW, L)."""
        if context is None or attention_mask is not None or hidden_states.ndim != 3 or any(
                getattr(attn, part, None) is not None for part in ("spatial_norm", "group_norm", "norm_q", "norm_k")):
            raise ValueError(f"{self.layer}: only SD-style cross-attention (token input, text context, no mask "
                             "or extra norms) can be captured")
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        batch, heads = hidden_states.shape[0], attn.heads
        query = attn.to_q(hidden_states).float()  # (B, HW, heads*d)
        key = attn.to_k(context).float()  # (B, L, heads*d)
        query = query.view(batch, -1, heads, query.shape[-1] // heads).transpose(1, 2)  # (B, heads, HW, d)
        key = key.view(batch, -1, heads, key.shape[-1] // heads).transpose(1, 2)  # (B, heads, L, d)
        return attn.scale * query @ key.transpose(-1, -2)


class CrossAttentionCapture:
    """Capture `record` (a subset of `RECORDS`) of `layers` during U-Net forwards run inside `attached()`.

    `outputs[layer][kind]` holds the last forward's tensors, `(B, heads, HW, L)` float32. With
    `early_exit`, the forward stops as soon as every layer has recorded.
    """

    def __init__(self, unet: torch.nn.Module, layers: Sequence[CrossAttentionLayer], *,
                 record: Sequence[str] = ("scores",), early_exit: bool = True) -> None:
        unknown = sorted(set(record) - set(RECORDS))
        if unknown or not record:
            raise ValueError(f"record must be a non-empty subset of {RECORDS}, got {list(record)}")
        if not layers:
            raise ValueError("no cross-attention layers to capture")
        self.unet, self.record_kinds, self.early_exit = unet, tuple(record), early_exit
        self.modules = {layer: layer.resolve(unet) for layer in dict.fromkeys(layers)}
        self.outputs: dict[CrossAttentionLayer, dict[str, torch.Tensor]] = {}

    def record(self, layer: CrossAttentionLayer, scores: torch.Tensor) -> None:
        values = {"scores": scores}
        if "probs" in self.record_kinds:
            values["probs"] = scores.softmax(dim=-1)
        self.outputs[layer] = {kind: values[kind] for kind in self.record_kinds}
        if self.early_exit and len(self.outputs) == len(self.modules):
            raise _StopForward

    @contextlib.contextmanager
    def attached(self) -> Iterator["CrossAttentionCapture"]:
        """Install the capturing processors; the originals are back afterwards, whatever happens."""
        originals = {layer: module.processor for layer, module in self.modules.items()}
        self.outputs = {}
        for layer, module in self.modules.items():
            module.set_processor(_CaptureProcessor(self, layer, originals[layer]))
        try:
            yield self
        except _StopForward:
            pass
        finally:
            for layer, module in self.modules.items():
                module.set_processor(originals[layer])
        missing = [str(layer) for layer in self.modules if layer not in self.outputs]
        if missing:
            raise FeatureNameError(f"cross-attention layers {missing} were not reached by the U-Net forward")


class CrossAttentionRunner:
    """U-Net passes on cached latents (DESIGN §3 noise keyed by each sample's image key) capturing
    cross-attention; each sample pairs a latent with its own text embedding."""

    def __init__(self, components: SDComponents, layers: Sequence[CrossAttentionLayer], *,
                 record: Sequence[str] = ("scores",), early_exit: bool = True) -> None:
        self.components = components
        self.device, self.dtype = components.unet.device, components.unet.dtype  # each lookup walks the parameters
        self.capture = CrossAttentionCapture(components.unet, layers, record=record, early_exit=early_exit)
        self._text = text_conditioning_for(components)

    @property
    def layers(self) -> list[CrossAttentionLayer]:
        return list(self.capture.modules)

    def condition(self, texts: Sequence[str]) -> TextEmbedding:
        """What the U-Net is conditioned on for `texts`, exactly as the extraction conditions it."""
        return self._text(texts)

    @torch.inference_mode()
    def run(self, latents: torch.Tensor, keys: Sequence[str], text: TextEmbedding, *, timestep: int, trial: int,
            seed: int) -> dict[CrossAttentionLayer, dict[str, torch.Tensor]]:
        """One forward of `B` samples at `timestep`: `{layer: {kind: tensor with leading B}}` on the CPU.

        `latents` (B, 4, h, w) z0, `keys` the image keys (noise), `text` the conditioning of each sample
        (`condition(texts)`; SDXL's pooled text and size ids included).
        """
        if not len(keys) == latents.shape[0] == text.hidden_states.shape[0]:
            raise ValueError(f"{len(keys)} keys, {latents.shape[0]} latents and {text.hidden_states.shape[0]} texts")
        unet, scheduler = self.components.unet, self.components.scheduler
        z0 = latents.to(device=self.device, dtype=torch.float32)
        eps = batch_noise(z0.shape[1:], keys=keys, trial=trial, global_seed=seed).to(self.device)
        steps = torch.full((len(keys),), timestep, device=self.device)
        x_t = scheduler.add_noise(z0, eps, steps).to(self.dtype)
        factor = self.components.vae_scale_factor
        kwargs = text.to(self.dtype).unet_kwargs(image_size=(z0.shape[-2] * factor, z0.shape[-1] * factor))
        with self.capture.attached():
            unet(x_t, steps, **kwargs, return_dict=False)
        return {layer: {kind: value.cpu() for kind, value in kinds.items()}
                for layer, kinds in self.capture.outputs.items()}
