"""Two-image, two-text matching benchmarks (MMVP-VLM, Winoground) as one shape: groups of 2 images x 2 texts
whose ground truth is the diagonal (text j describes image j), scored into `S[group, text, image]`."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from stages.errors import UserError

__all__ = ["MatchGroup", "MatchBenchmark", "BenchmarkLayoutError", "score_matrix", "fixture_image"]


class BenchmarkLayoutError(UserError, FileNotFoundError):
    """A benchmark folder that does not hold the official layout; the message names what is missing."""


@dataclass(frozen=True)
class MatchGroup:
    id: str
    category: str
    images: tuple[str, str]  # image keys relative to the benchmark root
    texts: tuple[str, str]  # texts[j] describes images[j]


class MatchBenchmark(abc.ABC):
    """A registry entry: read the official layout, compute the official metrics, write a tiny fixture."""

    name: str
    columns: tuple[str, ...]  # metric names in the order of the paper's table

    @abc.abstractmethod
    def load(self, root: Path) -> list[MatchGroup]:
        """The groups in file order; `BenchmarkLayoutError` naming the missing file otherwise."""

    @abc.abstractmethod
    def metrics(self, groups: Sequence[MatchGroup], scores: np.ndarray) -> dict[str, float]:
        """Percentages by column from `scores[group, text, image]`."""

    @abc.abstractmethod
    def write_fixture(self, root: Path) -> None:
        """A handful of groups in the official layout under `root`, from the bundled photos."""


def score_matrix(groups: Sequence[MatchGroup], score: Any) -> np.ndarray:
    """`S[g, j, k] = score(image k of group g, text j)` with one call of `score(image_keys, texts)`."""
    keys = [g.images[k] for g in groups for _ in range(2) for k in range(2)]
    texts = [g.texts[j] for g in groups for j in range(2) for _ in range(2)]
    return np.asarray(score(keys, texts), dtype=np.float64).reshape(len(groups), 2, 2)


def fixture_image(source: str, *, box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
                  size: tuple[int, int] = (160, 120), flip: bool = False, grey: bool = False) -> Any:
    """A bundled photo cropped to the fractional `box`, resized, optionally mirrored or made grey (RGB)."""
    from PIL import Image, ImageOps

    from stages.embedded.sample import photo

    image = photo(source).convert("RGB")
    w, h = image.size
    image = image.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    image = ImageOps.mirror(image) if flip else image
    return ImageOps.grayscale(image).convert("RGB") if grey else image


def require(path: Path, what: str, layout: Mapping[str, str]) -> Path:
    """`path` if it exists, else a `BenchmarkLayoutError` describing the expected layout."""
    if not path.exists():
        expected = "; ".join(f"{k}: {v}" for k, v in layout.items())
        raise BenchmarkLayoutError(f"{path} does not exist: not {what} in its official layout ({expected})")
    return path
