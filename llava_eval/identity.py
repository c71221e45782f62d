"""What an evaluation result is keyed by (DESIGN §8): the checkpoint's weights, the benchmark and its
options, the bytes of every file its loader reads under the eval root, the SD prompt setting, and the
generation and feature settings. A different identity is a different result (`llava_eval.results` keeps
each in a folder named by its key); paths (the run's, the eval root's) are recorded, never keyed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from llava_eval.benchmarks.base import Benchmark, EvalItem
from stages.store.fingerprint import Fingerprint
from stages.store.layout import file_sha256

__all__ = ["file_digests", "benchmark_digests", "data_hash", "Generation", "ResultIdentity"]


def file_digests(root: Path, paths: Iterable[str]) -> dict[str, str]:
    """`{path: sha256 of the file's bytes}` for paths relative to `root` (image keys are such paths)."""
    return {path: file_sha256(Path(root) / path)[1] for path in sorted(set(paths))}


def benchmark_digests(benchmark: Benchmark, eval_root: Path, items: Sequence[EvalItem]) -> dict[str, str]:
    """`file_digests` of every file `benchmark.load(eval_root / benchmark.name)` read to give `items`: its
    source files and its items' images, by path relative to the eval root."""
    folder = Path(eval_root) / benchmark.name
    sources = [f"{benchmark.name}/{path.relative_to(folder).as_posix()}" for path in benchmark.source_files(folder)]
    return file_digests(eval_root, [*sources, *(item.image for item in items if item.image is not None)])


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
