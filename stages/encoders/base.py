"""What every backbone provides, as one registry entry (`EncoderKind`) and one loaded unit (`FeatureEncoder`).

An `EncoderKind` answers questions about a `CacheSpec` without loading weights (which arrays a store
holds, their shapes, the image preprocessing, the backbone's fingerprint fields, whether it stores
latents, what computing an image or a guided pass costs) and loads the
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
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch

from stages.extractor import ExtractionSpec
from stages.preprocess import ImageSpec
from stages.store.compact import held_dtype


__all__ = ["EncoderKind", "FeatureEncoder", "Prompts", "Spec"]

Prompts = Mapping[str, Sequence[str]]  # prompt source -> one text per sample


class Spec(Protocol):
    """What an entry reads of a `stages.cache_spec.CacheSpec` (a protocol: the module of `CacheSpec` imports
    the registry, and the registry does not import it back)."""

    model: str
    encoder: str
    resolution: int | None
    resize_mode: str
    pad_color: tuple[int, int, int]
    features: tuple[str, ...]
    timesteps: tuple[int, ...]
    grid: int | None
    trials: int
    seed: int
    feature_dtype: str
    latents_dtype: str
    prompt_sources: tuple[str, ...]

    @property
    def kind(self) -> "EncoderKind": ...

    def array_ids(self) -> list[str]: ...

    def stored_dtype(self, array_id: str) -> str: ...

    def extraction_spec(self, *, features: Sequence[str] | None = None,
                        timesteps: Sequence[int] | None = None) -> ExtractionSpec: ...


class FeatureEncoder(abc.ABC):
    """Loaded models computing the arrays of `spec` from preprocessed images.

    `seconds` accumulates the time spent per stage (`vae`, `unet`, `clip`) for run summaries.
    """

    def __init__(self, spec: Spec) -> None:
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
        """The same arrays as numpy in the dtypes a store takes them in: their stored dtypes, float16 for a
        compact one (the store quantises it, `stages.store.compact`)."""
        return {a: t.float().cpu().numpy().astype(held_dtype(self.spec.stored_dtype(a))) for a, t in arrays.items()}

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
    def validate(self, spec: Spec) -> None:
        """Raise `ValueError` for settings this backbone cannot honour (called by `CacheSpec`)."""

    def check_model(self, spec: Spec, model_dir: Path) -> None:
        """Raise a `UserError` for settings the model in `model_dir` cannot honour, from its config files
        alone (no weights): called before an extraction opens a store or starts a worker."""

    @abc.abstractmethod
    def image_spec(self, spec: Spec, model_dir: Path, **extra: Any) -> ImageSpec:
        """The CPU-side preprocessing of the images this backbone sees."""

    @abc.abstractmethod
    def array_ids(self, spec: Spec) -> list[str]:
        """Ids of every array a store for `spec` holds."""

    @abc.abstractmethod
    def sample_shapes(self, spec: Spec, model_dir: Path) -> dict[str, tuple[int, ...]]:
        """`{array_id: sample shape}` for `array_ids(spec)`, without loading weights."""

    @abc.abstractmethod
    def fingerprint_fields(self, spec: Spec, model_dir: Path, *, preprocess: Mapping[str, Any],
                           pooling: Mapping[str, Any], memo_path: str | Path | None) -> dict[str, Any]:
        """The DESIGN §4 fields of this backbone (weight hashes, scheduler, noise, dtypes, ...)."""

    @abc.abstractmethod
    def image_gflop(self, spec: Spec, model_dir: Path, *, array_ids: Sequence[str] | None = None,
                    encode: bool = True, early_exit: bool = True) -> dict[str, float]:
        """GFLOP per image, by part, of computing `array_ids` (default: every array of `spec`) with the model
        whose configs are in `model_dir` (`stages.flops`, meta device): `encode=False` starts from stored
        latents, `early_exit=False` runs whole forwards (what a pipeline without taps would)."""

    def guided_gflop(self, spec: Spec, model_dir: Path, array_id: str, *, source: str,
                     early_exit: bool = True) -> float:
        """GFLOP per image of the pass guidance adds: `array_id` conditioned on prompt source `source`, from
        stored latents. A backbone that takes no text has none to add."""
        raise ValueError(f"encoder {self.name} takes no text: no guided pass for {array_id!r}")

    @abc.abstractmethod
    def load(self, spec: Spec, *, device: torch.device | str | None = None,
             dtype: torch.dtype | None = None) -> FeatureEncoder:
        """Load the models and return the encoder computing `spec`'s arrays."""
