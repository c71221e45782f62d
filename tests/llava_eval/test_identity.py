"""What a result is keyed by: the data hash covers every file a benchmark's loader reads, and a
predictions log or result is used only under the identity it records."""
from __future__ import annotations

import shutil

import pytest

from llava_eval.benchmarks import BENCHMARKS
from llava_eval.identity import benchmark_digests
from llava_eval.results import ResultConflict, ResultFiles


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_the_data_hash_covers_every_file_of_each_benchmark_fixture(name, eval_root, loaded):
    """Each fixture holds exactly what its loader reads (question files, parquet files, images, and the
    images a loader writes out of parquet files)."""
    files = {path.relative_to(eval_root).as_posix() for path in (eval_root / name).rglob("*") if path.is_file()}
    located = BENCHMARKS[name].locate(eval_root / name)
    assert set(benchmark_digests(located, eval_root, loaded[name])) == files


def test_a_log_or_result_copied_under_another_identity_is_refused_not_used(tmp_path, make_identity):
    a, b = (ResultFiles(tmp_path, "mmvp", make_identity("mmvp", weights=w)) for w in "ab")
    a.append([("1", "an answer of checkpoint a")])
    a.write({"metrics": {}})
    assert a.answered() == {"1": "an answer of checkpoint a"} and a.done()
    b.dir.mkdir(parents=True)
    shutil.copy(a.log, b.log)
    with pytest.raises(ResultConflict, match="another result identity"):
        b.answered()
    shutil.copy(a.result, b.result)
    with pytest.raises(ResultConflict, match="another result identity"):
        b.done()
