"""Extraction on a two-node Ray cluster on this machine: `ray start --head` (3 CPUs) and a second
`ray start --address=...` (2 CPUs), separate processes with their own raylets and object stores, as on
two machines sharing a file system. Each node offers one `extractor` resource and each actor asks for
one (`actor_resources`), so the 2 actors are forced one per node (checked from the process tree).
Every run is `python -m pipeline.cli extract ... ray_address=...` (what `just extract` runs) in its own
process. Tiny SD at 64 px, 24 images in 24 shards.

Both stores are bit-identical to the same extraction run in one process without Ray (`store_builder`:
the sequential runner, the work units every actor runs): the plain two-node run, and a run whose second node is killed while
shards are left (the driver runs them again on the head). Errors: an address nothing listens on fails
in seconds (Ray itself retries for minutes), a request no node can place fails instead of waiting.
"""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from pipeline.cli import main
from stages.locations import REPO
from stages.store import verify_store
from tests.conftest import pretrain_subset

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
# loopback only: no token authentication; node death noticed within ~2 s instead of ~15 s
CLUSTER_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_health_check_period_ms": "500",
               "RAY_health_check_failure_threshold": "3", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
# Ray Data deals shards once both actors have loaded the model, else the first up may take them all
DRIVER_ENV = {**CLUSTER_ENV, "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "600"}
N_IMAGES = 24  # the whole pretrain sample

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_node(args, log: Path) -> subprocess.Popen:
    """`ray start --block ...` in its own session: SIGTERM to it stops the node's processes."""
    return subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", *args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env={**os.environ, **CLUSTER_ENV}, start_new_session=True)


def wait_for_nodes(address: str, count: int, *, started: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    import ray

    deadline = time.time() + timeout
    while time.time() < deadline:
        if started.poll() is not None:
            raise RuntimeError(f"ray start exited with {started.returncode}:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=1).close()
        except OSError:  # the head's GCS is not listening yet (ray.init would retry for minutes)
            time.sleep(0.5)
            continue
        try:
            ray.init(address=address, logging_level="ERROR")
            alive = sum(node["Alive"] for node in ray.nodes())
        except ConnectionError:
            alive = 0
        finally:
            ray.shutdown()
        if alive >= count:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the Ray cluster at {address} did not reach {count} nodes")


def stop_node(proc: subprocess.Popen) -> None:
    """SIGTERM (`ray start --block` stops its processes), then SIGKILL to its process group; the node's
    workers exit when their raylet is gone."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@contextlib.contextmanager
def two_nodes(root: Path, *, head: list[str], worker: list[str]) -> Iterator[dict]:
    """A head and a second node on loopback (`head` / `worker`: their CPUs and resources), stopped on exit;
    the caller sets `CLUSTER_ENV` first."""
    session = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay under 108 bytes
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = [start_node(["--head", f"--port={port}", *head, "--include-dashboard=false", f"--temp-dir={session}"],
                        root / "head.log")]
    try:
        wait_for_nodes(address, 1, started=nodes[0], log=root / "head.log")
        nodes.append(start_node([f"--address={address}", *worker], root / "worker.log"))
        wait_for_nodes(address, 2, started=nodes[1], log=root / "worker.log")
        yield {"address": address, "head": nodes[0], "worker": nodes[1]}
    finally:
        for node in reversed(nodes):
            stop_node(node)
        shutil.rmtree(session, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, monkeypatch_module):
    """The two nodes; a test that kills the worker node runs last (`worker_killed`)."""
    for key, value in CLUSTER_ENV.items():
        monkeypatch_module.setenv(key, value)  # wait_for_nodes connects without a token too
    slot = '--resources={"extractor": 1}'
    with two_nodes(tmp_path_factory.mktemp("ray-cluster"), head=["--num-cpus=3", slot],
                   worker=["--num-cpus=2", slot]) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def data(sample, tmp_path_factory):
    return pretrain_subset(sample, tmp_path_factory.mktemp("data"), N_IMAGES)


def fields(data, cache_root, **extra):
    return {"data": [data["json"]], "image_root": data["root"], "cache_root": str(cache_root), "resolution": 64,
            "grid": 4, "features": ["U-L1-R1-B0-Cross-Q"], "prompt_sources": ["caption"], "shard_size": 1,
            "batch_size": 1, "device": "cpu", "precision": "fp32", **extra}


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory, store_builder):
    folder = tmp_path_factory.mktemp("reference")
    path = folder / "reference.yaml"
    path.write_text(yaml.safe_dump(fields(data, folder)))
    return store_builder(path)


def start_extract(cluster, data, cache_root: Path, **extra) -> subprocess.Popen:
    """`python -m pipeline.cli extract` (the `just extract` recipe) against the cluster, 2 actors, one
    `extractor` resource each; the summary goes to `<cache_root>.json`."""
    values = fields(data, cache_root, **{"num_actors": 2, "cpus_per_actor": 1, "actor_resources": {"extractor": 1},
                                         "ray_address": cluster["address"], **extra})
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "extract", "--no-progress",
                             f"--summary-json={cache_root}.json", *(f"{k}={json.dumps(v)}" for k, v in values.items())],
                            cwd=REPO, env={**os.environ, **DRIVER_ENV, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(job: subprocess.Popen, cache_root: Path) -> dict:
    output = job.communicate(timeout=300)[0]
    assert job.returncode == 0, output[-4000:]
    print(output)
    return json.loads(Path(f"{cache_root}.json").read_text()) | {"output": output}


def ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
        chain.append(pid)
    return chain


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def actors_on(cluster, node: str) -> set[int]:
    """The extractor actor processes running under `node`'s `ray start`."""
    pids = {int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and b"ShardWorker" in cmdline(int(e.name))}
    return {pid for pid in pids if cluster[node].pid in ancestors(pid)}


def watch(job: subprocess.Popen, cluster, *, until=lambda seen: False) -> dict[str, set[int]]:
    """Actor pids seen on each node while `job` runs, until it exits or `until(seen)` holds."""
    seen: dict[str, set[int]] = {"head": set(), "worker": set()}
    while job.poll() is None and not until(seen):
        for node in seen:
            seen[node] |= actors_on(cluster, node)
        time.sleep(0.05)
    return seen


def digests(store: Path) -> dict[str, str]:
    """sha256 of every zarr shard file and tar, from their records, by record path."""
    records = [*store.glob("done/*/*.json"), *store.glob("wds/*.json")]
    return {str(r.relative_to(store)): json.loads(r.read_text())["sha256"] for r in records}


def test_a_request_no_node_can_place_is_refused_instead_of_waiting(cluster, data, tmp_path, capsys):
    """2 `extractor` per actor: the cluster has 2 in all, but no node has 2."""
    start = time.time()
    values = fields(data, tmp_path, num_actors=1, actor_resources={"extractor": 2}, ray_address=cluster["address"])
    code = main(["extract", "--no-progress", *(f"{k}={json.dumps(v)}" for k, v in values.items())])
    assert code == 2 and time.time() - start < 60
    assert ("1 extractor actors need 1 CPU, 2 extractor each on one node, but the Ray cluster's nodes fit 0"
            in capsys.readouterr().err)


def test_a_two_node_run_whose_second_node_dies_mid_run_finishes_on_the_head_bit_identical_to_one_process(
        cluster, data, tmp_path, reference):
    """One actor per node; once both compute, the second node is killed (SIGKILL to its raylet and
    workers). The shards it had in flight, and any left, run again on the head, where one actor fits
    now; both nodes' shards are in the store, bit-identical to the one-process run. Kills the worker
    node: the module's last cluster test."""
    store = tmp_path / "cache" / reference.name
    arrays = ("latents", "U-L1-R1-B0-Cross-Q@t50", "U-L1-R1-B0-Cross-Q@t50:caption")

    def done():  # shards complete for all three arrays
        return len(set.intersection(*({p.stem for p in (store / "done" / a).glob("*.json")} for a in arrays)))

    def worker_computing(seen):  # its actor has loaded the model and 5 more shards are done since
        if seen["worker"] and not any(b"__init__" in cmdline(pid) for pid in seen["worker"]):
            ready.setdefault("done", done())
            return done() >= ready["done"] + 5
        return False

    ready: dict[str, int] = {}
    start = time.time()
    job = start_extract(cluster, data, tmp_path / "cache")
    seen = watch(job, cluster, until=worker_computing)
    os.killpg(cluster["worker"].pid, signal.SIGKILL)
    done_at_kill = done()
    summary = finish(job, tmp_path / "cache")
    print(f"two-node run with a node lost: {time.time() - start:.1f} s; killed at {done_at_kill} shards")
    assert len(seen["head"]) == 1 and len(seen["worker"]) == 1, seen  # forced one per node
    assert 0 < done_at_kill < N_IMAGES
    assert "retry 1: ActorDiedError" in summary["output"], summary["output"][-3000:]
    assert len(summary["shards_by_node"]) == 2 and min(summary["shards_by_node"].values()) >= 1, summary
    assert summary["done"] == N_IMAGES and summary["failed"] == 0
    assert verify_store(store) == []
    assert digests(store) == digests(reference)


def test_an_address_nothing_listens_on_fails_in_seconds_naming_it(data, tmp_path, capsys):
    port = free_port()  # closed again: nothing listens there
    start = time.time()
    code = main(["extract", "--no-progress", *(f"{k}={json.dumps(v)}" for k, v in fields(data, tmp_path).items()),
                 f"ray_address=127.0.0.1:{port}"])
    assert code == 2 and time.time() - start < 60
    assert f"cannot connect to the Ray cluster at ray_address='127.0.0.1:{port}'" in capsys.readouterr().err
