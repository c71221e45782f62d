"""Vision adapters: cached feature arrays in, LLM-width image tokens out, one class per fusion mode.

Every adapter takes `features: {array_id: (N_img, T, C)}` (the batch's image samples in batch order)
and returns `(N_img, T_out, H)`. The mode and the array ids it reads come from `VisionConfig`:

- `sd`, `clip`: one array → projector.
- `sd+clip-concat`: SD and CLIP tokens concatenated along channels (equal T required) → projector.
- `sd+clip-xattn`: CLIP tokens attend to SD tokens (queries from CLIP, keys/values from SD, both mapped
  to a common width first), residual + LayerNorm → projector; T_out is CLIP's T.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from train.config import VisionConfig
from train.projector import build_projector, load_module, read_config, save_module

__all__ = ["ADAPTERS", "build_adapter", "save_adapter", "load_adapter", "adapter_config"]


def _take(features: Mapping[str, Tensor], array_id: str, like: nn.Module) -> Tensor:
    """`features[array_id]` cast to the adapter's parameter dtype (the store keeps float16)."""
    if array_id not in features:
        raise KeyError(f"vision adapter needs feature array {array_id!r}; batch has {sorted(features)}")
    x = features[array_id]
    if x.dim() != 3:
        raise ValueError(f"feature {array_id!r} must be (N_img, T, C), got shape {tuple(x.shape)}")
    return x.to(dtype=next(like.parameters()).dtype)


class SingleArrayAdapter(nn.Module):
    """One cached array (SD or CLIP tokens) → projector."""

    def __init__(self, *, array_id: str, in_dim: int, hidden_size: int, projector: str) -> None:
        super().__init__()
        self.array_id = array_id
        self.projector = build_projector(projector, in_dim=in_dim, out_dim=hidden_size)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        return self.projector(_take(features, self.array_id, self))  # (N, T, H)


class ConcatAdapter(nn.Module):
    """SD ‖ CLIP along channels, token by token → projector."""

    def __init__(self, *, sd_id: str, clip_id: str, sd_dim: int, clip_dim: int, hidden_size: int,
                 projector: str) -> None:
        super().__init__()
        self.sd_id, self.clip_id = sd_id, clip_id
        self.projector = build_projector(projector, in_dim=sd_dim + clip_dim, out_dim=hidden_size)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        sd, clip = _take(features, self.sd_id, self), _take(features, self.clip_id, self)
        if sd.shape[:2] != clip.shape[:2]:
            raise ValueError(f"sd+clip-concat needs equal (N_img, T): {self.sd_id} has {tuple(sd.shape[:2])}, "
                             f"{self.clip_id} has {tuple(clip.shape[:2])}; pool both to the same token grid "
                             "or use sd+clip-xattn")
        return self.projector(torch.cat([sd, clip], dim=-1))  # (N, T, C_sd + C_clip) -> (N, T, H)


class CrossAttnAdapter(nn.Module):
    """CLIP queries attend to SD keys/values; the output keeps CLIP's token count."""

    def __init__(self, *, sd_id: str, clip_id: str, sd_dim: int, clip_dim: int, width: int, heads: int,
                 hidden_size: int, projector: str) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"sd+clip-xattn width {width} is not divisible by xattn_heads={heads}")
        self.sd_id, self.clip_id = sd_id, clip_id
        self.query_in = nn.Linear(clip_dim, width)
        self.kv_in = nn.Linear(sd_dim, width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.projector = build_projector(projector, in_dim=width, out_dim=hidden_size)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        sd, clip = _take(features, self.sd_id, self), _take(features, self.clip_id, self)
        if sd.shape[0] != clip.shape[0]:
            raise ValueError(f"sd+clip-xattn: {self.sd_id} has {sd.shape[0]} images, {self.clip_id} {clip.shape[0]}")
        query = self.query_in(clip)  # (N, T_clip, D)
        memory = self.kv_in(sd)  # (N, T_sd, D)
        attended, _ = self.attn(query, memory, memory, need_weights=False)  # (N, T_clip, D)
        return self.projector(self.norm(query + attended))  # (N, T_clip, H)


def _dim(dims: Mapping[str, int], array_id: str) -> int:
    if array_id not in dims:
        raise KeyError(f"no channel count for feature array {array_id!r}; known: {sorted(dims)}")
    return int(dims[array_id])


def _single(which: str) -> Callable[[VisionConfig, Mapping[str, int], int], nn.Module]:
    def build(vision: VisionConfig, dims: Mapping[str, int], hidden: int) -> nn.Module:
        array_id = vision.sd_array if which == "sd" else vision.clip_array
        return SingleArrayAdapter(array_id=array_id, in_dim=_dim(dims, array_id), hidden_size=hidden,
                                  projector=vision.projector)
    return build


def _concat(vision: VisionConfig, dims: Mapping[str, int], hidden: int) -> nn.Module:
    return ConcatAdapter(sd_id=vision.sd_array, clip_id=vision.clip_array, sd_dim=_dim(dims, vision.sd_array),
                         clip_dim=_dim(dims, vision.clip_array), hidden_size=hidden, projector=vision.projector)


def _xattn(vision: VisionConfig, dims: Mapping[str, int], hidden: int) -> nn.Module:
    clip_dim = _dim(dims, vision.clip_array)
    return CrossAttnAdapter(sd_id=vision.sd_array, clip_id=vision.clip_array, sd_dim=_dim(dims, vision.sd_array),
                            clip_dim=clip_dim, width=vision.xattn_dim or clip_dim, heads=vision.xattn_heads,
                            hidden_size=hidden, projector=vision.projector)


ADAPTERS: Mapping[str, Callable[[VisionConfig, Mapping[str, int], int], nn.Module]] = {
    "sd": _single("sd"),
    "clip": _single("clip"),
    "sd+clip-concat": _concat,
    "sd+clip-xattn": _xattn,
}


def build_adapter(vision: VisionConfig, *, feature_dims: Mapping[str, int], hidden_size: int) -> nn.Module:
    """The adapter for `vision.mode`; `feature_dims` maps array id -> channel count C."""
    if vision.mode not in ADAPTERS:
        raise ValueError(f"unknown vision mode {vision.mode!r}; valid: {sorted(ADAPTERS)}")
    return ADAPTERS[vision.mode](vision, feature_dims, hidden_size)


def adapter_config(vision: VisionConfig, *, feature_dims: Mapping[str, int], hidden_size: int) -> dict:
    """The JSON that `load_adapter` rebuilds an adapter from."""
    return {"vision": dataclasses.asdict(vision), "feature_dims": dict(feature_dims), "hidden_size": hidden_size}


def save_adapter(adapter: nn.Module, path: str | Path, *, config: Mapping[str, object]) -> None:
    """Adapter weights as safetensors, with `adapter_config(...)` in the header."""
    save_module(adapter, path, config=config)


def load_adapter(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild an adapter from a `save_adapter` file; returns it with its config."""
    config = read_config(path)
    vision = VisionConfig(**config["vision"])  # type: ignore[arg-type]
    adapter = build_adapter(vision, feature_dims=config["feature_dims"],  # type: ignore[arg-type]
                            hidden_size=int(config["hidden_size"]))  # type: ignore[arg-type]
    return load_module(adapter, path), config
