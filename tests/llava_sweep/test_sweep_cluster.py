"""`just sweep SWEEP --ray-address ADDR` on a two-node Ray cluster on this machine (`ray start --head` and a
second `ray start --address`, each with 1 CPU and one `sweep_slot`, as in tests/pipeline/test_multinode.py).

The sweep is conftest's (`swept`, which the local runner ran), without its failing run: one pretraining, then
the two runs' SFTs and evaluations. Each stage reserves a `sweep_slot` (the stand-in for a run's GPUs), so the
two SFTs, ready together once the pretraining is done, run at once, one per node: checked from the process tree
(each trainer's ancestors hold one node's `ray start`). Every weight file and result equals the local runner's.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llava_sweep.runner import SUMMARY_FILE
from tests.llava_sweep.conftest import RUNS, blink_result, finish, start_sweep
from tests.pipeline.test_multinode import CLUSTER_ENV, ancestors, cmdline, two_nodes

pytestmark = pytest.mark.slow

SLOT = '--resources={"sweep_slot": 1}'
RESULT_FIELDS = ("identity", "key", "metrics", "predictions")  # not the paths and seconds


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        for key, value in CLUSTER_ENV.items():
            patch.setenv(key, value)  # the nodes, this process and the sweep: no token authentication
        with two_nodes(tmp_path_factory.mktemp("ray-cluster"), head=["--num-cpus=1", SLOT],
                       worker=["--num-cpus=1", SLOT]) as nodes:
            yield nodes


def _trainers(cluster, root: Path) -> dict[str, str]:
    """The SFT trainers of `root`'s runs alive now: run -> the node whose `ray start` it runs under."""
    found = {}
    for entry in Path("/proc").iterdir():
        line = cmdline(int(entry.name)) if entry.name.isdigit() else b""
        run = next((r for r in RUNS if b"train.cli" in line and f"output_dir={root}/sft/{r}\0".encode() in line), None)
        if run is not None:
            chain = ancestors(int(entry.name))
            found[run] = next((node for node in ("head", "worker") if cluster[node].pid in chain), "elsewhere")
    return found


def test_two_runs_at_once_one_per_node_with_the_local_sweeps_results(swept, cluster, tmp_path):
    root = tmp_path / "root"
    start = time.time()
    proc = start_sweep(str(swept.sweep), f"root={root}", "runs=[]", "--ray-address", cluster["address"],
                       "cluster.gpus_per_run=0", "cluster.resources_per_run={sweep_slot: 1}")
    placed: dict[str, set[str]] = {run: set() for run in RUNS}
    together = False
    while proc.poll() is None:
        alive = _trainers(cluster, root)
        for run, node in alive.items():
            placed[run].add(node)
        together |= len(alive) == len(RUNS)
        time.sleep(0.1)
    code, out, err = finish(proc)
    print(f"cluster sweep: {time.time() - start:.1f} s\n{out}")
    assert code == 0, out + err
    assert placed["s0"] | placed["s4"] == {"head", "worker"} and placed["s0"] != placed["s4"], placed
    assert together  # both SFTs ran at once
    summary = json.loads((root / SUMMARY_FILE).read_text())
    assert {name: s["status"] for name, s in summary["stages"].items()} == {
        "extract/sd-0": "done", "pretrain/base": "ran", "sft/s0": "ran", "sft/s4": "ran", "eval/s0": "ran",
        "eval/s4": "ran"}
    assert summary["stages"]["sft/s0"]["node"] != summary["stages"]["sft/s4"]["node"]
    assert swept.code == 1  # the local sweep: its failing run apart, done (test_sweep_run)
    parts = ("adapter.safetensors", "llm/model.safetensors")
    weights = ["pretrain/base/final/adapter.safetensors", *(f"sft/{run}/final/{p}" for run in RUNS for p in parts)]
    for path in weights:
        assert (root / path).read_bytes() == (swept.finished / path).read_bytes(), path
    for run in RUNS:
        here, local = blink_result(root, run), blink_result(swept.finished, run)
        assert {k: here[k] for k in RESULT_FIELDS} == {k: local[k] for k in RESULT_FIELDS}
