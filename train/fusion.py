"""Vision adapters: cached feature arrays in, LLM-width image tokens out, one builder per fusion.

Every adapter takes `features: {array_id: (N_img, T, C)}` (the batch's image samples in batch order)
and returns `(N_img, T_out, H)`. Which arrays a mode reads, in which order, and which fusion combines
them is its `train.vision_modes` entry; `FUSIONS` maps the fusion names to builders here:

- `single`: one array → projector.
- `concat`: the arrays concatenated along channels, token by token (equal T required) → projector.
- `xattn`: the first array's tokens attend to the second's (queries from the first, keys/values from the
  second, both mapped to a common width first), residual + LayerNorm → projector; T_out is the first's T.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from stages.config import ConfigError
from train.config import VisionConfig
from train.projector import build_projector, load_module, read_config, save_module

__all__ = ["FUSIONS", "build_adapter", "AdapterConfig", "save_adapter", "load_adapter"]


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
    """The arrays side by side along channels, token by token → projector."""

    def __init__(self, *, array_ids: Sequence[str], in_dim: int, hidden_size: int, projector: str) -> None:
        super().__init__()
        self.array_ids = tuple(array_ids)
        self.projector = build_projector(projector, in_dim=in_dim, out_dim=hidden_size)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        parts = [_take(features, a, self) for a in self.array_ids]  # (N, T, C_i) each
        shapes = {a: tuple(x.shape[:2]) for a, x in zip(self.array_ids, parts)}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"concat fusion needs equal (N_img, T), got {shapes}; extract the arrays on one "
                             "token grid or use a cross-attention mode")
        return self.projector(torch.cat(parts, dim=-1))  # (N, T, sum C_i) -> (N, T, H)


class CrossAttnAdapter(nn.Module):
    """Query tokens attend to memory tokens; the output keeps the query array's token count."""

    def __init__(self, *, query_id: str, memory_id: str, query_dim: int, memory_dim: int, width: int, heads: int,
                 hidden_size: int, projector: str) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"xattn width {width} (vision.xattn_dim, or the query array's channel count when 0) "
                              f"is not divisible by vision.xattn_heads={heads}")
        self.query_id, self.memory_id = query_id, memory_id
        self.query_in = nn.Linear(query_dim, width)
        self.kv_in = nn.Linear(memory_dim, width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.projector = build_projector(projector, in_dim=width, out_dim=hidden_size)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        source, context = _take(features, self.query_id, self), _take(features, self.memory_id, self)
        if source.shape[0] != context.shape[0]:
            raise ValueError(f"xattn fusion: {self.query_id} has {source.shape[0]} images, "
                             f"{self.memory_id} {context.shape[0]}")
        query = self.query_in(source)  # (N, T_q, D)
        memory = self.kv_in(context)  # (N, T_m, D)
        attended, _ = self.attn(query, memory, memory, need_weights=False)  # (N, T_q, D)
        return self.projector(self.norm(query + attended))  # (N, T_q, H)


def _dims(dims: Mapping[str, int], array_ids: Sequence[str]) -> list[int]:
    unknown = [a for a in array_ids if a not in dims]
    if unknown:
        raise KeyError(f"no channel count for feature array(s) {unknown}; known: {sorted(dims)}")
    return [int(dims[a]) for a in array_ids]


Builder = Callable[[VisionConfig, Sequence[str], Sequence[int], int], nn.Module]


def _single(vision: VisionConfig, ids: Sequence[str], dims: Sequence[int], hidden: int) -> nn.Module:
    (array_id,), (dim,) = ids, dims
    return SingleArrayAdapter(array_id=array_id, in_dim=dim, hidden_size=hidden, projector=vision.projector)


def _concat(vision: VisionConfig, ids: Sequence[str], dims: Sequence[int], hidden: int) -> nn.Module:
    return ConcatAdapter(array_ids=ids, in_dim=sum(dims), hidden_size=hidden, projector=vision.projector)


def _xattn(vision: VisionConfig, ids: Sequence[str], dims: Sequence[int], hidden: int) -> nn.Module:
    (query_id, memory_id), (query_dim, memory_dim) = ids, dims
    return CrossAttnAdapter(query_id=query_id, memory_id=memory_id, query_dim=query_dim, memory_dim=memory_dim,
                            width=vision.xattn_dim or query_dim, heads=vision.xattn_heads, hidden_size=hidden,
                            projector=vision.projector)


# fusion name (`VisionMode.fusion`) -> builder(vision, array ids in the mode's order, their channel counts, H)
FUSIONS: Mapping[str, Builder] = {"single": _single, "concat": _concat, "xattn": _xattn}


def build_adapter(vision: VisionConfig, *, feature_dims: Mapping[str, int], hidden_size: int) -> nn.Module:
    """The adapter for `vision.mode`; `feature_dims` maps array id -> channel count C."""
    ids = vision.array_ids
    return FUSIONS[vision.mode_spec.fusion](vision, ids, _dims(feature_dims, ids), hidden_size)


@dataclass(frozen=True)
class AdapterConfig:
    """What an adapter is built from: the vision settings, each array's channel count (`feature_dims`), the
    LLM width, and the LLM a trained adapter was trained with (None: none recorded)."""

    vision: VisionConfig
    feature_dims: Mapping[str, int]
    hidden_size: int
    llm: str | None = None

    def build(self) -> nn.Module:
        """A fresh adapter of this config."""
        return build_adapter(self.vision, feature_dims=self.feature_dims, hidden_size=self.hidden_size)

    def to_metadata(self) -> dict[str, Any]:
        """The JSON object an adapter file's header holds (`save_adapter`)."""
        out = {"vision": asdict(self.vision), "feature_dims": dict(self.feature_dims), "hidden_size": self.hidden_size}
        return out if self.llm is None else {**out, "llm": self.llm}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> AdapterConfig:
        """The config of an adapter file's header JSON (`to_metadata`)."""
        return cls(vision=VisionConfig(**metadata["vision"]),
                   feature_dims={a: int(c) for a, c in metadata["feature_dims"].items()},
                   hidden_size=int(metadata["hidden_size"]), llm=metadata.get("llm"))


def save_adapter(adapter: nn.Module, path: str | Path, *, config: AdapterConfig) -> None:
    """Adapter weights as safetensors, with `config` in the header."""
    save_module(adapter, path, config=config.to_metadata())


def load_adapter(path: str | Path) -> tuple[nn.Module, AdapterConfig]:
    """Rebuild an adapter from a `save_adapter` file; returns it with its config."""
    config = AdapterConfig.from_metadata(read_config(path))
    return load_module(config.build(), path), config
