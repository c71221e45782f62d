"""The benchmark registry: `BENCHMARKS[name]` loads a benchmark from its official layout under
`<eval_root>/<name>`, prompts for it, scores it and writes its tiny fixture. A new benchmark is a new entry."""
from __future__ import annotations

from typing import Mapping

from llava_eval.benchmarks.base import Benchmark, BenchmarkLayoutError, EvalItem
from llava_eval.benchmarks.blink import Blink
from llava_eval.benchmarks.coco import CocoCaptions
from llava_eval.benchmarks.gqa import GQA
from llava_eval.benchmarks.llava_bench import LlavaBench
from llava_eval.benchmarks.mmvp import MMVP
from llava_eval.benchmarks.naturalbench import NaturalBench

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkLayoutError", "EvalItem", "MMVP"]

BENCHMARKS: Mapping[str, Benchmark] = {b.name: b for b in (MMVP(), NaturalBench(), Blink(), GQA(), CocoCaptions(),
                                                           LlavaBench())}
