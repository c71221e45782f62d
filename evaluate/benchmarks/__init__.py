"""The benchmark registry: `BENCHMARKS[name]` loads a benchmark from its official layout under
`<eval_root>/<name>`, prompts for it, scores it and writes its tiny fixture. A new benchmark is a new entry."""
from __future__ import annotations

from typing import Mapping

from evaluate.benchmarks.base import Benchmark, BenchmarkLayoutError, EvalItem
from evaluate.benchmarks.blink import Blink
from evaluate.benchmarks.coco import CocoCaptions
from evaluate.benchmarks.gqa import GQA
from evaluate.benchmarks.llava_bench import LlavaBench
from evaluate.benchmarks.mmvp import MMVP
from evaluate.benchmarks.naturalbench import NaturalBench

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkLayoutError", "EvalItem", "MMVP"]

BENCHMARKS: Mapping[str, Benchmark] = {b.name: b for b in (MMVP(), NaturalBench(), Blink(), GQA(), CocoCaptions(),
                                                           LlavaBench())}
