"""Every benchmark's fixture written once, by the benchmarks themselves, and loaded."""
from __future__ import annotations

import pytest

from evaluate.benchmarks import BENCHMARKS


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    """An eval root holding every benchmark's tiny fixture in its official layout."""
    root = tmp_path_factory.mktemp("eval_root")
    for benchmark in BENCHMARKS.values():
        benchmark.write_fixture(root / benchmark.name)
    return root


@pytest.fixture(scope="module")
def loaded(eval_root):
    return {name: benchmark.load(eval_root / name) for name, benchmark in BENCHMARKS.items()}
