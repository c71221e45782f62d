"""The sweep that test_sweep_run and test_sweep_cluster share, run once per session by the local runner:
one store, two runs sharing one pretraining (SFT with and without question guidance) and a third run made to
fail by a bad override, every stage a subprocess of its public command.

To stay within seconds per stage, the store the sweep reads already holds the training and benchmark images
(the session store copied, the benchmark images added in this process by the pipeline's own code): the
sweep finds its extractions done, as its second invocation does."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from llava_sweep.load import load_sweep
from stages.locations import REPO

RUNS = ("s0", "s4")  # the axis labels of guidance_scale 0 and 4


def sweep_file(folder: Path, store, cache_root: Path) -> Path:
    """The sweep: the sample configs on the session store's data subsets, sized to seconds per stage."""
    train = ["per_device_batch_size=2", "max_length=256", "report_to=none", "data.num_workers=0"]
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "root": str(folder / "root"), "stages": ["pretrain", "sft", "eval"],
        "base": {
            "extract": {"sd": str(store.extract_yaml)},
            "pretrain": "configs/train/sample-pretrain.yaml", "sft": "configs/train/sample-sft.yaml",
            "eval": "configs/eval/sample.yaml",
            "overrides": {"extract": ["runner=sequential", f"cache_root={cache_root}"],
                          "pretrain": [*train, "max_steps=2", f"data.data_path={store.pretrain_json}"],
                          "sft": [*train, "max_steps=3", "save_every=1", f"data.data_path={store.sft_json}"],
                          "eval": ["benchmarks=[blink]", "max_new_tokens=4", "batch_size=5"]}},
        "axes": {"guidance_scale": [0, 4]},
        "runs": [{"name": "bad", "guidance_scale": 2, "overrides": {"pretrain": ["lr=-1"]}}]}))
    return path


def start_sweep(*args: str) -> subprocess.Popen:
    """`python -m llava_sweep.cli sweep ...` in its own session (a terminal's foreground group), from the
    repository root as `just` runs it, without the rendezvous variables in-process training tests set."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                                            "LOCAL_RANK")}
    return subprocess.Popen([sys.executable, "-m", "llava_sweep.cli", "sweep", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**env, "OMP_NUM_THREADS": "1"})


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    """A started sweep's exit status, stdout and stderr."""
    try:
        out, err = proc.communicate(timeout=400)
    finally:
        proc.kill()
    return proc.returncode, out, err


def run_sweep(*args: str) -> tuple[int, str, str]:
    return finish(start_sweep(*args))


def blink_result(root: Path, run: str) -> dict:
    (path,) = (root / "sft" / run / "eval" / "blink").glob("*/result.json")
    return json.loads(path.read_text())


def _fill_store(sweep: Path, store, cache_root: Path, build) -> None:
    """The sweep's store with the training images (the session store, copied) and BLINK's images (added)."""
    from llava_eval.benchmarks import BENCHMARKS
    from llava_eval.embedded import ensure_eval_root
    from llava_eval.export import write_llava_json

    shutil.copytree(store.path, cache_root / store.path.name)
    (job,) = load_sweep(sweep).extractions.values()
    eval_root = ensure_eval_root()
    blink = write_llava_json(BENCHMARKS["blink"].load(eval_root / "blink"), cache_root.parent / "blink.json")
    images = cache_root.parent / "blink-extract.yaml"
    images.write_text(yaml.safe_dump({**job.values, "data": [str(blink)], "image_root": str(eval_root)}))
    assert build(images) == cache_root / store.path.name


class Swept(NamedTuple):
    sweep: Path
    root: Path
    code: int
    out: str
    err: str
    finished: Path  # a copy of the root's pretrain/ and sft/ as the sweep left them (tests change the root)


@pytest.fixture(scope="session")
def swept(train_store, store_builder, tmp_path_factory) -> Swept:
    """The sweep run once."""
    folder = tmp_path_factory.mktemp("sweep")
    sweep = sweep_file(folder, train_store, folder / "cache")
    _fill_store(sweep, train_store, folder / "cache", store_builder)
    code, out, err = run_sweep(str(sweep))
    for kind in ("pretrain", "sft"):
        shutil.copytree(folder / "root" / kind, folder / "finished" / kind,
                        ignore=shutil.ignore_patterns("checkpoints"))
    return Swept(sweep, folder / "root", code, out, err, folder / "finished")
