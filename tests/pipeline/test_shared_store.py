"""Two extraction jobs writing one store at the same time, as two nodes sharing a cache directory do.

Each job is a separate process running the pipeline's Ray-free path (`tests.conftest.build_store`:
`run_extract` with the sequential runner, the work units each actor runs) with its own feature name on the same images, so both plan
the same keys (under the store lock), both compute the same latents shards and write them (each shard
write under that shard's lock) and each adds its own array. They start computing together (a file
barrier after their imports). Then a third job adds a name alone: its tars keep the arrays the others
added.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.locations import REPO
from stages.store import StoreReader, verify_store
from tests.conftest import pretrain_subset

pytestmark = pytest.mark.slow

NAMES = {"a": "U-L1-R1-B0-Cross-Q", "b": "U-L2-R2-Res-Out", "c": "D-L2-R0-B0-Cross-Q"}
JOB = """
import sys, time
from pathlib import Path
from tests.conftest import build_store
Path(sys.argv[2]).touch()
while not Path(sys.argv[3]).exists():
    time.sleep(0.01)
build_store(Path(sys.argv[1]))
"""


def write_yaml(folder: Path, data: dict, cache_root: Path, names: list[str]) -> Path:
    path = folder / f"{'+'.join(names)}.yaml"
    path.write_text(yaml.safe_dump({
        "data": [data["json"]], "image_root": data["root"], "cache_root": str(cache_root), "resolution": 64,
        "grid": 4, "features": names, "timesteps": [50], "shard_size": 2, "batch_size": 2, "device": "cpu",
        "precision": "fp32", "write_webdataset": True}))
    return path


@pytest.fixture(scope="module")
def data(sample, tmp_path_factory):
    return pretrain_subset(sample, tmp_path_factory.mktemp("data"), 8)


def tar_members(store: Path) -> set[str]:
    """The array ids held by every tar of the store (the same set in each)."""
    import tarfile

    held = []
    for tar_path in sorted(store.glob("wds/*.tar")):
        with tarfile.open(tar_path) as tar:
            held.append({name.split(".", 1)[1].rsplit(".", 1)[0] for name in tar.getnames()
                         if name.endswith(".npy")})
    assert held and all(h == held[0] for h in held), held
    return held[0]


def test_two_jobs_adding_different_arrays_at_once_lose_nothing_and_a_later_job_keeps_them_in_the_tars(
        data, tmp_path, store_builder):
    shared = tmp_path / "shared"
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    jobs = [subprocess.Popen([sys.executable, "-c", JOB, str(write_yaml(tmp_path, data, shared, [NAMES[j]])),
                              str(tmp_path / f"ready-{j}"), str(go)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for j in ("a", "b")]
    deadline = time.time() + 240
    while not all((tmp_path / f"ready-{j}").exists() for j in ("a", "b")) and time.time() < deadline:
        assert all(job.poll() is None for job in jobs), [job.communicate()[0][-3000:] for job in jobs]
        time.sleep(0.05)
    go.touch()
    outputs = [job.communicate(timeout=300)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], [out[-3000:] for out in outputs]

    reference = store_builder(write_yaml(tmp_path, data, tmp_path / "one-job", [NAMES["a"], NAMES["b"]]))
    store = shared / reference.name
    assert verify_store(store) == []
    ids = ["latents", f"{NAMES['a']}@t50", f"{NAMES['b']}@t50"]
    got, want = StoreReader(store, expect=None), StoreReader(reference, expect=None)
    assert got.keys == want.keys and len(got.keys) == 8
    assert got.complete_shards(ids) == [0, 1, 2, 3]
    for array_id in ids:  # every array whole and equal to the one-job store's, byte for byte
        assert np.array_equal(got.read(got.keys, [array_id])[array_id], want.read(want.keys, [array_id])[array_id])

    store_builder(write_yaml(tmp_path, data, shared, [NAMES["c"]]))  # a third job, its name alone
    assert verify_store(store) == []
    assert tar_members(store) == {*ids, f"{NAMES['c']}@t50"}
