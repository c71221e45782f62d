"""What every benchmark provides: items read from any of its accepted local layouts, prompts for the
diffusion pass, a scorer, and a tiny fixture of itself in its official layout (the embedded default).

Image keys are relative to an *image root* holding one folder per benchmark named by the registry
(`<eval_root>/mmvp/MMVP Images/1.jpg` has key `mmvp/MMVP Images/1.jpg`), so the benchmarks' images never
collide with each other in a shared feature store. Images shipped inside data files (parquet, Arrow) are
written out once, named by their content, as DESIGN §7 asks (`llava_eval.benchmarks.layouts`).
"""
from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping, Sequence

from llava_eval.benchmarks.items import BenchmarkLayoutError, EvalItem
from llava_eval.benchmarks.layouts import ImageFiles, Layout, Located, locate
from stages.llava import QUESTION  # the default SD prompt setting: the item's prompt conditions the U-Net

__all__ = ["EvalItem", "Benchmark", "BenchmarkLayoutError"]


class Benchmark(ABC):
    """One benchmark. `name` is its registry key and its folder under the eval root."""

    name: str
    folder_names: tuple[str, ...] = ()  # other names its folder may have under an eval root (LLaVA's playground)
    max_new_tokens: int = 16
    sd_settings: tuple[str, ...] = (QUESTION,)  # which texts may condition the U-Net (`sd_prompts`)

    @abstractmethod
    def layouts(self) -> tuple[Layout, ...]:
        """The layouts it reads, most specific first (`llava_eval.benchmarks.layouts`)."""

    def locate(self, folder: Path) -> Located:
        """`folder` matched to the first accepted layout it holds; `BenchmarkLayoutError` naming every layout
        tried when it holds none."""
        return locate(self.name, Path(folder), self.layouts())

    def read(self, located: Located, *, out: Path | None = None) -> list[EvalItem]:
        """The items of a located folder, saying in one line (stderr) which layout was read; images embedded
        in its data files are written under `out` (default: the folder)."""
        items = located.read(ImageFiles(self.name, located.folder, Path(out or located.folder)))
        print(located.summary(len(items)), file=sys.stderr)
        return items

    def load(self, folder: Path, *, out: Path | None = None) -> list[EvalItem]:
        """`read(locate(folder))`."""
        return self.read(self.locate(folder), out=out)

    @abstractmethod
    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> dict[str, Any]:
        """Metrics from raw generated texts by item id (the official scorer's definitions)."""

    @abstractmethod
    def write_fixture(self, root: Path) -> None:
        """A handful of items in its official layout under `root`, from the bundled photos, answers known."""

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
