"""Every benchmark's fixture written once, by the benchmarks themselves, and loaded."""
from __future__ import annotations

import pytest

from llava_eval.benchmarks import BENCHMARKS


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


@pytest.fixture(scope="session")
def make_identity():
    """`make_identity(name, weights="a", data="d")`: a result identity with made-up hashes (one hex digit
    repeated), for tests of result files and tables that need no evaluation."""
    from llava_eval.identity import Generation, ResultIdentity

    def make(name: str, *, weights: str = "a", data: str = "d") -> ResultIdentity:
        return ResultIdentity(checkpoint=weights * 64, benchmark=name.split("-")[0], options={}, data=data * 64,
                              sd_setting=None, features={},
                              generation=Generation(max_new_tokens=4, template="v1", dtype="float32"))

    return make
