"""What every backbone provides, as one registry entry (`EncoderKind`) and one loaded unit (`FeatureEncoder`).

An `EncoderKind` answers questions about a `CacheSpec` without loading weights (which arrays a store
holds, their shapes, the image preprocessing, the backbone's fingerprint fields) and loads the
`FeatureEncoder` that computes those arrays. The Ray actor, the trainer's on-the-fly source, SFT
question conditioning and the tests all compute features through a `FeatureEncoder`, so there is one
implementation of "preprocessed images -> arrays in their stored dtypes".
"""
from __future__ import annotations

import abc
import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from stages.preprocess import ImageSpec

if TYPE_CHECKING:
    from stages.cache_spec import CacheSpec

__all__ = ["EncoderKind", "FeatureEncoder", "Prompts"]

Prompts = Mapping[str, Sequence[str]]  # prompt source -> one text per sample


class FeatureEncoder(abc.ABC):
    """Loaded models computing the arrays of `spec` from preprocessed images.

    `seconds` accumulates the time spent per stage (`vae`, `unet`, `clip`) for run summaries.
    """

    def __init__(self, spec: "CacheSpec") -> None:
        self.spec = spec
        self.seconds: Counter[str] = Counter()

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """Where the models run."""

    @abc.abstractmethod
    def encode(self, images: np.ndarray, keys: Sequence[str], prompts: Prompts) -> dict[str, torch.Tensor]:
        """uint8 `(B, R, R, 3)` images -> `{array_id: (B, ...) float32}` for every array of the spec."""

    def stored(self, arrays: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """The same arrays as numpy in their stored dtypes (the values a store holds)."""
        return {a: t.float().cpu().numpy().astype(self.spec.stored_dtype(a)) for a, t in arrays.items()}

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the wall time of the block to `seconds[stage]` (CUDA work is waited for)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[stage] += time.perf_counter() - start


class EncoderKind(abc.ABC):
    """A registry entry (`stages.encoders.ENCODERS[name]`): everything the cache needs to know about one
    kind of backbone."""

    name: str
    time_stages: tuple[str, ...]  # the `FeatureEncoder.seconds` keys it reports
    has_latents: bool  # stores VAE latents (`LATENTS`), from which its feature arrays are computed

    @abc.abstractmethod
    def validate(self, spec: "CacheSpec") -> None:
        """Raise `ValueError` for settings this backbone cannot honour (called by `CacheSpec`)."""

    def check_model(self, spec: "CacheSpec", model_dir: Path) -> None:
        """Raise a `UserError` for settings the model in `model_dir` cannot honour, from its config files
        alone (no weights): called before an extraction opens a store or starts a worker."""

    @abc.abstractmethod
    def image_spec(self, spec: "CacheSpec", model_dir: Path, **extra: Any) -> ImageSpec:
        """The CPU-side preprocessing of the images this backbone sees."""

    @abc.abstractmethod
    def array_ids(self, spec: "CacheSpec") -> list[str]:
        """Ids of every array a store for `spec` holds."""

    @abc.abstractmethod
    def sample_shapes(self, spec: "CacheSpec", model_dir: Path) -> dict[str, tuple[int, ...]]:
        """`{array_id: sample shape}` for `array_ids(spec)`, without loading weights."""

    @abc.abstractmethod
    def fingerprint_fields(self, spec: "CacheSpec", model_dir: Path, *, preprocess: Mapping[str, Any],
                           pooling: Mapping[str, Any], memo_path: str | Path | None) -> dict[str, Any]:
        """The DESIGN §4 fields of this backbone (weight hashes, scheduler, noise, dtypes, ...)."""

    @abc.abstractmethod
    def load(self, spec: "CacheSpec", *, device: torch.device | str | None = None,
             dtype: torch.dtype | None = None) -> FeatureEncoder:
        """Load the models and return the encoder computing `spec`'s arrays."""
