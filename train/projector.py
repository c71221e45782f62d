"""Projectors from vision-token width to the LLM's hidden width, and safetensors I/O for small modules.

LLaVA-1.5 uses `mlp2x_gelu` (Linear → GELU → Linear); `linear` is the LLaVA-1 projector. Builders are
looked up by name so configs name a projector instead of code branching on it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from stages.config import ConfigError

__all__ = ["PROJECTORS", "build_projector", "save_module", "load_module", "read_config"]


def _mlp2x_gelu(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


def _linear(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Linear(in_dim, out_dim)


PROJECTORS: Mapping[str, Callable[[int, int], nn.Module]] = {
    "mlp2x_gelu": _mlp2x_gelu,
    "linear": _linear,
}


def build_projector(name: str, *, in_dim: int, out_dim: int) -> nn.Module:
    """A projector mapping `(..., in_dim)` to `(..., out_dim)`."""
    if name not in PROJECTORS:
        raise ConfigError(f"unknown projector {name!r}; valid: {sorted(PROJECTORS)}")
    if in_dim <= 0 or out_dim <= 0:
        raise ValueError(f"projector dims must be positive, got in_dim={in_dim}, out_dim={out_dim}")
    return PROJECTORS[name](in_dim, out_dim)


def save_module(module: nn.Module, path: str | Path, *, config: Mapping[str, object]) -> None:
    """Write `module`'s weights as safetensors with `config` (JSON) in the header metadata.

    The config travels with the weights, so a loader can rebuild the module before loading into it.
    """
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(path), metadata={"config": json.dumps(dict(config), sort_keys=True)})


def read_config(path: str | Path) -> dict[str, object]:
    """The config stored by `save_module` in a safetensors header."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if "config" not in meta:
        raise ConfigError(f"{path} has no 'config' metadata; was it written by train.projector.save_module?")
    return json.loads(meta["config"])


def load_module(module: nn.Module, path: str | Path) -> nn.Module:
    """Load weights written by `save_module` into `module` (strict: every key must match)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    state = load_file(str(path))
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the module: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for name, value in state.items():
            if own[name].shape != value.shape:
                raise ValueError(f"{path}: {name} has shape {tuple(value.shape)}, "
                                 f"module expects {tuple(own[name].shape)}")
            own[name].copy_(value)
    return module
