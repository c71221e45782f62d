"""`just bench-store`'s object-store section: the same store on local disk and on an S3-compatible server
(moto on loopback, started here), read the way training reads it, in one run and one sample order.

Training serves features through `CachedFeatures` (`cache=` the local `ShardCache`), one key per
`LlavaDataset` item, in `SeededRandomSampler`'s order, after `StoreReader.prefetch` has started
downloading shards ahead of the reads (`train.cli.prepare`). Here: epoch 1 over each store right after the
prefetch starts (for the object store: downloads, by the prefetch in shard order or by a read that gets
to a shard first), then later epochs (the object store's from local copies), timed in turn. Loopback has
neither S3's latency nor its bandwidth limits.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.common import best_seconds_interleaved
from benchmarks.loopback_s3 import loopback_s3
from stages.serving import CachedFeatures, LocatedStore
from stages.store import CacheStore, Fingerprint
from stages.store.shard_cache import ShardCache
from train.sampler import SeededRandomSampler

__all__ = ["bench_object_store"]


def _filled(root: str | Path, data: np.ndarray, array: str, *, shard_size: int) -> LocatedStore:
    fp = Fingerprint.from_fields({"bench": "objects"})
    store = CacheStore.open_or_create(root, fingerprint=fp, shard_size=shard_size)
    store.add_keys([f"bench/{i:06d}.jpg" for i in range(len(data))])
    store.ensure_array(array, sample_shape=data.shape[1:])
    for plan in store.shards():
        store.write_shard(plan.index, {array: data[plan.rows.start:plan.rows.stop]})
    return LocatedStore(store.path, fp)


def _epoch(source: CachedFeatures, keys: list[str], array: str) -> None:
    """One pass reading one key at a time, as `LlavaDataset.__getitem__` does."""
    for key in keys:
        source.read([key], [array])


def bench_object_store(work: Path, data: np.ndarray, array: str, *, shard_size: int = 64) -> dict:
    """Samples/s of epoch 1 and of later epochs over the local store and over the object store through a
    fresh `ShardCache` (no limit), with the upload and first-epoch download rates. Shards of 64 rows (not
    the default 256) so that a small run still has several shards for the prefetch to fetch ahead."""
    order = list(SeededRandomSampler(len(data), seed=0))
    with loopback_s3() as bucket:
        local = _filled(work / "objects-local", data, array, shard_size=shard_size)
        start = time.perf_counter()
        remote = _filled(f"{bucket}/bench", data, array, shard_size=shard_size)
        upload_s = time.perf_counter() - start
        cache = ShardCache(work / "shard-cache")
        sources = {"local disk": CachedFeatures([local], array_ids=[array]),
                   "S3 (moto, loopback) via local cache": CachedFeatures([remote], array_ids=[array], cache=cache)}
        keys = [f"bench/{i:06d}.jpg" for i in order]
        first = {}
        for name, source in sources.items():
            start = time.perf_counter()
            for reader in source.readers:
                reader.prefetch()
            _epoch(source, keys, array)
            first[name] = time.perf_counter() - start
        later = best_seconds_interleaved({name: lambda s=source: _epoch(s, keys, array)
                                          for name, source in sources.items()}, repeats=3)
        for source in sources.values():
            assert np.array_equal(source.read(keys[:4], [array])[array], data[order[:4]])
        cache.wait()
    rows = [{"store": name, "epoch1_samples_per_s": round(len(keys) / first[name], 1),
             "later_epoch_samples_per_s": round(len(keys) / later[name], 1)} for name in sources]
    remote_first = first["S3 (moto, loopback) via local cache"]
    out = {"shard_size": shard_size, "order": "SeededRandomSampler(seed=0), one key per read", "epochs": rows,
           "upload_MBps": round(data.nbytes / 1e6 / upload_s, 1), "downloaded_MB": round(cache.downloaded / 1e6, 1),
           "epoch1_download_MBps": round(cache.downloaded / 1e6 / remote_first, 1)}
    print(out, flush=True)
    return out
