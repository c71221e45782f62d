"""What every benchmark provides: items read from its official local layout, prompts for the diffusion
pass, a scorer, and a tiny fixture of itself in that layout (the embedded default).

Image keys are relative to the *eval root*, the folder holding one sub-folder per benchmark named by the
registry (`<eval_root>/mmvp/MMVP Images/1.jpg` has key `mmvp/MMVP Images/1.jpg`), so the benchmarks'
images never collide with each other in a shared feature store. Benchmarks that ship their images inside
parquet files (NaturalBench, BLINK) write them out once under their own folder, as DESIGN §7 asks.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from stages.errors import UserError
from stages.llava import QUESTION  # the default SD prompt setting: the item's prompt conditions the U-Net

__all__ = ["EvalItem", "Benchmark", "BenchmarkLayoutError"]


class BenchmarkLayoutError(UserError, FileNotFoundError):
    """A benchmark folder that does not hold the official layout (the message names the missing file)."""


@dataclass(frozen=True)
class EvalItem:
    id: str  # unique and stable within the benchmark: the key of its prediction
    image: str | None  # image key relative to the eval root; None for a text-only question
    prompt: str  # the human turn the model sees (question, options, instruction), without "<image>"
    answer: Any  # JSON-serialisable ground truth (a letter, "yes", reference captions, ...)
    meta: Mapping[str, Any] = field(default_factory=dict)  # JSON-serialisable: category, pair, type, ...
    caption: str | None = None  # a reference caption: the SD prompt of COCO's ground-truth setting


class Benchmark(ABC):
    """One benchmark. `name` is its registry key and its folder under the eval root."""

    name: str
    max_new_tokens: int = 16
    sd_settings: tuple[str, ...] = (QUESTION,)  # which texts may condition the U-Net (`sd_prompts`)

    @abstractmethod
    def load(self, root: Path) -> list[EvalItem]:
        """Items from `root` (= `<eval_root>/<name>`) in the official layout; `BenchmarkLayoutError` if not."""

    @abstractmethod
    def source_files(self, root: Path) -> list[Path]:
        """The files besides its items' images that `load(root)` reads (question files, parquet files)."""

    @abstractmethod
    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> dict[str, Any]:
        """Metrics from raw generated texts by item id (the official scorer's definitions)."""

    @abstractmethod
    def write_fixture(self, root: Path) -> None:
        """A handful of items in the official layout under `root`, from the bundled photos, answers known."""

    def write_outputs(self, items: Sequence[EvalItem], predictions: Mapping[str, str], folder: Path, *,
                      model_id: str) -> list[Path]:
        """Files the benchmark's own tooling reads (e.g. an answer file for an external judge); none by default."""
        return []

    def options(self) -> dict[str, Any]:
        """The benchmark's settings that change its prompts, answers or scores (part of a result's identity)."""
        return {}

    def sd_prompts(self, items: Sequence[EvalItem], setting: str) -> list[str]:
        """The U-Net's prompt per item under `setting` (one of `sd_settings`)."""
        if setting != QUESTION or setting not in self.sd_settings:
            raise ValueError(f"{self.name}: unknown SD prompt setting {setting!r}; valid: {self.sd_settings}")
        return [item.prompt for item in items]
