"""Seeded weights and version-free files for the embedded models: bytes no library release can change.

A library's initialiser is not part of its API: transformers 5.25 changed `CLIPTextModel`'s, and with it
every embedded store's fingerprint. So the embedded models never keep the values a constructor drew.
`seeded_model` builds the library class (for its parameter names, shapes and buffers only) and then
fills every parameter from its own stream: NumPy's PCG64 seeded with `sha256("<namespace>/<name>")`,
whose raw 64-bit output is NumPy's one stream-compatibility promise, turned into uniform doubles
(top 53 bits) and cast to float32. The scale rule is ours too, PyTorch's default scale:

- normalisation layers (`*Norm*` modules): weight 1, bias 0;
- weights of other layers: U(±1/√fan_in), fan_in = elements per output row; their biases: U(±1/√fan_in)
  of the same layer;
- everything else (embedding tables, learned tokens, 1-D parameters of no layer): U(±0.02·√3), std 0.02.

`save_model` writes the state dict with `safetensors` and the model's complete config without the
library's version stamp (`transformers_version`, `_diffusers_version`): every value, defaults included,
is spelled out, so a library that changes a default cannot change what loads.

Names are the library's parameter names at the locked version. A release that renames parameters (as
5.25 flattened `CLIPTextModel`) still changes the bytes: `tests/test_embedded_artefacts.py` pins every
artefact's sha256 and names the one that moved.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["seeded_uniform", "seeded_model", "save_model", "config_dict", "write_json"]

_EMBEDDING_STD = 0.02
# Keys a library writes about itself rather than about the model.
_STAMPS = ("transformers_version", "_diffusers_version", "_name_or_path", "_commit_hash", "_use_default_values")


def seeded_uniform(key: str, shape: tuple[int, ...], bound: float) -> torch.Tensor:
    """float32 `shape` uniform in [-bound, bound), from the stream of `key` alone."""
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    n = math.prod(shape)
    raw = np.random.PCG64(seed).random_raw(n) if n else np.zeros(0, np.uint64)
    unit = (raw >> np.uint64(11)).astype(np.float64) * 2.0 ** -53  # [0, 1), exact
    return torch.from_numpy(((2.0 * unit - 1.0) * bound).astype(np.float32).reshape(shape))


def _bound(module: torch.nn.Module, local: str, param: torch.Tensor) -> float | None:
    """The uniform bound of `module.<local>`; None for a normalisation layer's constant."""
    if "Norm" in type(module).__name__:
        return None
    weight = getattr(module, "weight", None)
    is_layer = isinstance(weight, torch.Tensor) and weight.dim() >= 2 and not isinstance(module, torch.nn.Embedding)
    if is_layer and local in ("weight", "bias"):
        return 1.0 / math.sqrt(weight[0].numel())
    return _EMBEDDING_STD * math.sqrt(3.0)


def seeded_model(build: Callable[[], torch.nn.Module], *, namespace: str) -> torch.nn.Module:
    """`build()` (a library constructor), with every parameter replaced by its seeded value.

    The constructor runs under a forked RNG, so the caller's random state is untouched; its draws are
    all overwritten (buffers, which hold constants such as position ids, are kept)."""
    with torch.random.fork_rng(devices=[]):
        model = build()
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            owner, _, local = name.rpartition(".")
            bound = _bound(modules[owner], local, param)
            if bound is None:
                param.fill_(1.0 if local == "weight" else 0.0)
            else:
                param.copy_(seeded_uniform(f"{namespace}/{name}", tuple(param.shape), bound))
    return model.eval()


def config_dict(model: torch.nn.Module) -> dict[str, Any]:
    """The complete config a `from_pretrained` reads back, without version stamps."""
    config = model.config
    if hasattr(config, "to_dict"):  # transformers; the two fields `save_pretrained` fills in
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        values = {**config.to_dict(), "architectures": [type(model).__name__], "dtype": dtype}
    else:  # diffusers: the FrozenDict of every constructor argument
        values = {"_class_name": type(model).__name__, **dict(config)}
    return {k: v for k, v in values.items() if k not in _STAMPS}


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_model(model: torch.nn.Module, out: Path, *, weights_name: str) -> None:
    """`out/<weights_name>` (safetensors, tensors by name) and `out/config.json` (sorted keys)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.contiguous() for name, tensor in sorted(model.state_dict().items())}
    save_file(state, str(out / weights_name), metadata={"format": "pt"})
    (out / weights_name).chmod(0o644)  # safetensors writes 0600; the embedded home is shared
    write_json(out / "config.json", config_dict(model))
