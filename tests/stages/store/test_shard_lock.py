"""Two jobs adding different arrays to one shard at once, each exporting the webdataset tar: the shard lock
is held from the tar through the zarr records, so the second job's tar holds the first job's array too."""
from __future__ import annotations

import io
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

import stages.store.shard_files as shard_files
import stages.store.writer as writer
from stages.store import CacheStore, StoreReader, verify_store
from stages.store.keys import encode_key
from tests.stages.store.test_store import FP, SHAPE, shard_data

A, B = "a", "b"  # the array each job adds; also the name of the job's thread
KEYS = [f"img/{i}.jpg" for i in range(3)]  # shard 0 of size 4: three keys and a padding row
DATA = {array_id: shard_data(array_id, 0, 4) for array_id in (A, B)}


def tar_arrays(path: Path) -> dict[str, np.ndarray]:
    """array id -> its samples in the tar, in key order."""
    with tarfile.open(path) as tar:
        return {a: np.stack([np.load(io.BytesIO(tar.extractfile(f"{encode_key(k)}.{a}.npy").read())) for k in KEYS])
                for a in (A, B) if f"{encode_key(KEYS[0])}.{a}.npy" in tar.getnames()}


def test_a_second_job_exports_the_shard_only_after_the_first_jobs_records(tmp_path: Path, monkeypatch) -> None:
    store = CacheStore.open_or_create(tmp_path / "cache", fingerprint=FP, shard_size=4)
    store.add_keys(KEYS)
    for array_id in (A, B):
        store.ensure_array(array_id, sample_shape=SHAPE)
    job = threading.local()
    events: list[tuple] = []  # ("tar", job, arrays in it) and ("records", job), in the order they happen
    a_stalled, release, b_locking = threading.Event(), threading.Event(), threading.Event()

    def stall_a_once() -> None:
        if job.name == A and not a_stalled.is_set():
            a_stalled.set()
            assert release.wait(10)

    # Job A stalls after writing its tar and before writing its zarr shard: at its next request for the
    # shard lock (a writer that lets the lock go in between) or else inside its zarr write.
    real_tar, real_locked, real_write_zarr = shard_files.stage_tar_shard, writer.shard_lock, writer.write_zarr_shard

    def stage_tar_shard(*args, **kwargs):
        path = real_tar(*args, **kwargs)
        events.append(("tar", job.name, tuple(sorted(kwargs["arrays"]))))
        return path

    def shard_lock(paths, shard):
        if job.name == B:
            b_locking.set()
        if ("tar", A, (A,)) in events:
            stall_a_once()
        return real_locked(paths, shard)

    def write_zarr_shard(*args, **kwargs):
        stall_a_once()
        real_write_zarr(*args, **kwargs)
        events.append(("records", job.name))

    monkeypatch.setattr(shard_files, "stage_tar_shard", stage_tar_shard)
    monkeypatch.setattr(writer, "shard_lock", shard_lock)
    monkeypatch.setattr(writer, "write_zarr_shard", write_zarr_shard)

    def add(array_id: str) -> None:
        job.name = array_id
        own = CacheStore.open(store.path, fingerprint=FP)  # each job its own handle, as on another node
        own.write_shard(0, {array_id: DATA[array_id]}, export={array_id: DATA[array_id]})

    with ThreadPoolExecutor(2) as pool:
        try:
            first = pool.submit(add, A)
            assert a_stalled.wait(10), first.result()
            second = pool.submit(add, B)
            assert b_locking.wait(10), second.result()
            wait([second], timeout=0.5)  # time for B to write, were the shard not held
            while_a_stalled = list(events)
        finally:
            release.set()
        for future in (first, second):
            future.result()  # raises what the job raised

    assert while_a_stalled == [("tar", A, (A,))], "B wrote between A's tar and A's records"
    assert events == [("tar", A, (A,)), ("records", A), ("tar", B, (A, B)), ("records", B)]
    exported = tar_arrays(store.path / "wds" / "000000.tar")
    assert sorted(exported) == [A, B], "the tar lost an array"
    reader = StoreReader(store.path, expect=FP)
    for array_id in (A, B):
        np.testing.assert_array_equal(exported[array_id], DATA[array_id][:len(KEYS)])
        np.testing.assert_array_equal(reader.read_shard(array_id, 0)[:len(KEYS)], DATA[array_id][:len(KEYS)])
    assert verify_store(store.path) == []
