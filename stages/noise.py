"""The noise contract (DESIGN §3): per-sample, per-trial Gaussian noise that depends only on the key.

Noise is drawn on the CPU from a generator seeded by a hash of `(global seed, sample key, trial)`, so
it is identical whatever the batch composition, worker count, device or resume point.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch

__all__ = ["noise_seed", "sample_noise", "batch_noise"]


def noise_seed(global_seed: int, key: str, trial: int) -> int:
    """63-bit seed: first 8 bytes (little endian) of sha256(f"{g}/{k}/{i}")."""
    digest = hashlib.sha256(f"{global_seed}/{key}/{trial}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def sample_noise(shape: Sequence[int], *, key: str, trial: int, global_seed: int) -> torch.Tensor:
    """`eps` for one sample, float32 on the CPU, shape `shape` (the latent shape without batch)."""
    generator = torch.Generator("cpu").manual_seed(noise_seed(global_seed, key, trial))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def batch_noise(shape: Sequence[int], *, keys: Sequence[str], trial: int, global_seed: int) -> torch.Tensor:
    """Stack of `sample_noise` for each key: (B, *shape), float32, CPU."""
    return torch.stack([sample_noise(shape, key=k, trial=trial, global_seed=global_seed) for k in keys])
