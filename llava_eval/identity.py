"""What an evaluation result is keyed by (DESIGN §8): the checkpoint's weights, the benchmark and its
options, the bytes of every file its loader reads (its data files and its items' images), the SD prompt
setting, and the generation and feature settings. A different identity is a different result
(`llava_eval.results` keeps each in a folder named by its key); paths (the run's, the benchmark's folder, the
image root) are recorded, never keyed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from llava_eval.benchmarks.base import EvalItem
from llava_eval.benchmarks.layouts import Located
from stages.store.fingerprint import Fingerprint
from stages.store.layout import file_sha256

__all__ = ["file_digests", "benchmark_digests", "data_hash", "Generation", "ResultIdentity"]


def file_digests(root: Path, paths: Iterable[str]) -> dict[str, str]:
    """`{path: sha256 of the file's bytes}` for paths relative to `root` (image keys are such paths)."""
    return {path: file_sha256(Path(root) / path)[1] for path in sorted(set(paths))}


def benchmark_digests(located: Located, image_root: Path, items: Sequence[EvalItem]) -> dict[str, str]:
    """`file_digests` of every file a benchmark's loader read to give `items`: the data files of its located
    folder, by `<benchmark>/<path under the folder>`, and its items' images, by key under the image root."""
    sources = {f"{located.benchmark}/{path.relative_to(located.folder).as_posix()}": file_sha256(path)[1]
               for path in located.found.files}
    return {**sources, **file_digests(image_root, [item.image for item in items if item.image is not None])}


def data_hash(digests: Mapping[str, str]) -> str:
    """sha256 of the canonical JSON of `{relative path: sha256}`: the content hash of a benchmark's files."""
    return Fingerprint.from_fields(digests).full


@dataclass(frozen=True)
class Generation:
    """How answers are generated: greedy decoding (`llava_eval.generate`), up to `max_new_tokens`, from
    prompts in the run's `template`, with the LLM in `dtype`."""

    max_new_tokens: int
    template: str
    dtype: str
    decoding: str = "greedy"


@dataclass(frozen=True)
class ResultIdentity:
    """The key of one evaluation result; `fingerprint.short` names its folder."""

    checkpoint: str  # sha256 of the weights loaded (`llava_eval.run.Checkpoint.sha256`)
    benchmark: str
    options: Mapping[str, Any]  # `Benchmark.options()`: MMVP's answer corrections, COCO's derangement seed
    data: str  # `data_hash` of the benchmark's files under the eval root
    sd_setting: str | None  # the SD prompt setting; None for an unguided run (every setting reads X_u)
    generation: Generation
    features: Mapping[str, Any]  # `EvalFeatures.settings`: vision arrays, guidance scale, stores read

    @property
    def fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint.from_fields(self.fields)
