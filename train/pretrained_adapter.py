"""The adapter weights a run starts from (`pretrained_adapter`): our stage-1 `adapter.safetensors`, or the
`mm_projector.bin` that LLaVA-1.5's own pretraining writes.

- Ours carries its config in the safetensors header; it must be the run's setup (vision mode, feature
  widths, LLM width).
- LLaVA's is a torch pickle of a state dict, `model.mm_projector.0.weight`, `.0.bias`, `.2.weight`,
  `.2.bias` for mlp2x_gelu (`model.mm_projector.weight`, `.bias` for linear). It is read with
  `torch.load(weights_only=True)`, which rebuilds tensors and plain containers and refuses anything else
  (a pickle that would run code is refused, not run). It projects CLIP patch tokens, so it fits
  `vision.mode=clip` only, and only with the shapes of the run's projector (CLIP width x LLM width).

Either way a file that does not fit is one line naming what was expected and what was found (`ConfigError`,
exit status 2).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from stages.config import ConfigError
from train.fusion import AdapterConfig
from train.projector import load_module, read_config

__all__ = ["load_pretrained_adapter", "LLAVA_PROJECTOR_KEY", "LLAVA_MODE"]

LLAVA_PROJECTOR_KEY = "mm_projector."  # LLaVA's state-dict names: model.mm_projector.<index>.<weight|bias>
LLAVA_MODE = "clip"  # the vision mode whose adapter is LLaVA's projector over CLIP patch tokens


def _is_safetensors(path: Path) -> bool:
    """A safetensors file opens with its header's length (8 bytes, little-endian) and the header's `{`."""
    with path.open("rb") as fh:
        start = fh.read(9)
    return len(start) == 9 and start[8:] == b"{"


def _check_compatible(path: Path, expected: AdapterConfig) -> None:
    found, expected_metadata = read_config(path), expected.to_metadata()
    keys = ("vision", "feature_dims", "hidden_size")
    diff = {k: (found.get(k), expected_metadata[k]) for k in keys if found.get(k) != expected_metadata[k]}
    if diff:
        raise ConfigError(f"adapter {path} was trained for a different setup: {json.dumps(diff)} (file, config)")


def _read_llava_state(path: Path) -> dict[str, Tensor]:
    """The tensors of a LLaVA projector file, by name; refuses anything `weights_only` cannot rebuild."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any failure to read the user's file is this one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"pretrained_adapter {path} is neither an adapter.safetensors of this project nor a "
                          f"LLaVA mm_projector.bin that torch.load(weights_only=True) accepts: {reason}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"pretrained_adapter {path} holds a {type(state).__name__}, not a state dict of tensors "
                          "(LLaVA's mm_projector.bin is one)")
    return dict(state)


def _shapes(state: Mapping[str, Tensor]) -> str:
    return ", ".join(f"{name} {tuple(value.shape)}" for name, value in sorted(state.items()))


def _load_llava_projector(adapter: nn.Module, path: Path, expected: AdapterConfig) -> None:
    """LLaVA's `model.mm_projector.*` tensors into the adapter's `projector.*` (vision.mode=clip)."""
    state = _read_llava_state(path)
    if expected.vision.mode != LLAVA_MODE:
        raise ConfigError(f"pretrained_adapter {path} is a LLaVA projector, trained on CLIP patch tokens: it fits "
                          f"vision.mode={LLAVA_MODE} only (this run: vision.mode={expected.vision.mode})")
    found = {f"projector.{name.partition(LLAVA_PROJECTOR_KEY)[2]}": value for name, value in state.items()
             if LLAVA_PROJECTOR_KEY in name}
    own = adapter.state_dict()
    if set(found) != set(own) or any(found[k].shape != own[k].shape for k in own):
        vision, widths = expected.vision, (expected.feature_dims[expected.vision.clip_array], expected.hidden_size)
        raise ConfigError(f"pretrained_adapter {path} (LLaVA format) does not fit this run's {vision.projector} "
                          f"projector ({widths[0]} CLIP channels to LLM width {widths[1]}): expected {_shapes(own)}; "
                          f"found {_shapes(state) or 'no tensors'}")
    with torch.no_grad():
        for name, value in found.items():
            own[name].copy_(value)


def load_pretrained_adapter(adapter: nn.Module, path: str | Path, *, expected: AdapterConfig) -> None:
    """Load `path` into `adapter` (built from `expected`, the run's adapter config), in either format."""
    path = Path(path)
    if _is_safetensors(path):
        _check_compatible(path, expected)
        load_module(adapter, path)
    else:
        _load_llava_projector(adapter, path, expected)
