"""Benchmark folders the user holds are read through their symlinks, like the image root (issue 22)."""
from __future__ import annotations

import pytest

from llava_eval.benchmarks.naturalbench import NaturalBench


@pytest.fixture
def naturalbench_linked(tmp_path):
    """A NaturalBench folder whose `data/` is a symlink to where the parquet files are kept."""
    NaturalBench().write_fixture(tmp_path / "kept")
    root = tmp_path / "eval" / "naturalbench"
    root.mkdir(parents=True)
    (root / "data").symlink_to(tmp_path / "kept" / "data", target_is_directory=True)
    return root


def test_a_naturalbench_folder_whose_data_is_a_symlink_is_read(naturalbench_linked):
    items = NaturalBench().load(naturalbench_linked)
    assert len(items) == 8  # two samples x two questions x two images
    assert [p.relative_to(naturalbench_linked).as_posix()
            for p in NaturalBench().source_files(naturalbench_linked)] == ["data/train-00000-of-00001.parquet"]
