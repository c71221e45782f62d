"""The embedded eval root: every benchmark's tiny fixture in its official layout, built once from the
bundled photos under the embedded home (`stages.embedded`), so `just eval` runs with no data at hand.
The numbers it gives for random tiny models mean nothing; it exercises the code real runs use."""
from __future__ import annotations

from pathlib import Path

from llava_eval.benchmarks import BENCHMARKS
from stages.embedded import embedded_home, materialize

__all__ = ["VERSION", "ensure_eval_root"]

VERSION = 2  # bump whenever a fixture's bytes change


def _build(root: Path) -> None:
    for name, benchmark in BENCHMARKS.items():
        folder = root / name
        folder.mkdir()
        benchmark.write_fixture(folder)
        benchmark.load(folder)  # images a benchmark writes out of its parquet files are part of the build


def ensure_eval_root() -> Path:
    """`<embedded home>/eval-benchmarks-v<VERSION>`, built on first use (atomically)."""
    return materialize(embedded_home() / f"eval-benchmarks-v{VERSION}", _build)
