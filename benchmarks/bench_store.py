"""Store benchmark: write MB/s and read samples/s of our zarr store and webdataset export against
per-sample .npy / torch.save files and the raw page-cache bandwidth (`np.fromfile`), the compression
table that picks the default codec, the cost of checking every sample (crc32c and identity digest)
on read: checked against unchecked reads and against `np.fromfile`, side by side in one run, the
compact feature dtypes against float16 (`benchmarks.compact`), and the same store on an S3-compatible
server read through the local shard cache (`benchmarks.store_objects`).

Data: synthetic but activation-like float16 `[256, 1280]` samples (16x16 token grid): a low-rank
(r=32) spatially smooth field (bicubic-upsampled 4x4 noise) mixed into 1280 channels, plus token
noise, times a heavy-tailed per-channel scale (log-normal, sigma 0.8) with 4 outlier channels x30.
All reads are warm (files just written, in the page cache): the comparison is per-format overhead.

    python -m benchmarks.bench_store [--n 768] [--workdir DIR] [--integrity-only | --compact-only]
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the compact comparison extracts and trains with embedded models
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Iterator  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import zarr  # noqa: E402

from benchmarks.common import RESULTS, best_seconds, best_seconds_interleaved, markdown_table, write_results  # noqa: E402
from benchmarks.compact import bench_compact  # noqa: E402
from benchmarks.store_objects import bench_object_store  # noqa: E402
from stages.store import COMPRESSIONS, CacheStore, CompletionRecord, Fingerprint, StoreReader  # noqa: E402

T, C, SHARD, BATCH = 256, 1280, 256, 32
ARRAY = "U-L1-R1-B0-Cross-Q@t50"
SAMPLE_MB = T * C * 2 / 1e6


def activations(n: int, *, seed: int = 0) -> np.ndarray:
    """`(n, T, C)` float16 activation-like samples (see module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(32, C, generator=gen) / 32 ** 0.5
    scale = torch.exp(0.8 * torch.randn(C, generator=gen))
    scale[torch.randperm(C, generator=gen)[:4]] *= 30
    out = np.empty((n, T, C), np.float16)
    for start in range(0, n, 64):
        b = min(64, n - start)
        coarse = torch.randn(b, 32, 4, 4, generator=gen)
        field = F.interpolate(coarse, size=(16, 16), mode="bicubic", align_corners=False)  # (b, 32, 16, 16)
        x = 3 * field.flatten(2).transpose(1, 2) @ mix + 0.35 * torch.randn(b, T, C, generator=gen)
        out[start:start + b] = (x * scale).to(torch.float16).numpy()
    return out


def _mbps(nbytes: float, seconds: float) -> float:
    return round(nbytes / 1e6 / seconds, 1)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- datasets for torch.utils.data.DataLoader ------------------------------------------------
class _Batched(torch.utils.data.Dataset):
    """Map-style dataset indexed by a list of indices (a BatchSampler's batch): one `load` per batch."""

    def __init__(self, n: int, load: Callable[[list[int]], np.ndarray]) -> None:
        self.n, self.load = n, load

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, indices: list[int]) -> torch.Tensor:
        return torch.from_numpy(self.load(indices))


class _ShardStream(torch.utils.data.IterableDataset):
    """Shard-order streaming through `StoreReader.iter_shards`, shards split across workers."""

    def __init__(self, reader: StoreReader) -> None:
        self.reader = reader

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = torch.utils.data.get_worker_info()
        shards = self.reader.complete_shards()
        if info is not None:
            shards = shards[info.id::info.num_workers]
        for _, arrays in self.reader.iter_shards([ARRAY], shards=shards):
            data = arrays[ARRAY]
            for start in range(0, len(data), BATCH):
                yield torch.from_numpy(data[start:start + BATCH])


def _loader_rate(dataset: torch.utils.data.Dataset, *, workers: int, shuffle: bool, batched: bool) -> float:
    """Samples/s of the second epoch (workers persist, so start-up is not counted)."""
    kwargs = dict(num_workers=workers, persistent_workers=workers > 0, collate_fn=lambda x: x)
    if batched:
        sampler = torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(dataset) if shuffle else torch.utils.data.SequentialSampler(dataset),
            batch_size=BATCH, drop_last=False)
        loader = torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None, **kwargs)
    else:
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, **kwargs)

    def epoch() -> int:
        return sum(len(batch) for batch in loader)

    count = epoch()
    seconds = min(_timed(epoch) for _ in range(2))
    return count / seconds


def _read_rates(name: str, write_s: float, nbytes: int, n: int, datasets: dict[str, tuple]) -> list[dict]:
    rows = []
    for label, (dataset, shuffle, batched) in datasets.items():
        for workers in (0, 2):
            rate = _loader_rate(dataset, workers=workers, shuffle=shuffle, batched=batched)
            rows.append({"format": name, "access": label, "workers": workers, "write_MBps": _mbps(nbytes, write_s),
                         "samples_per_s": round(rate, 1), "read_MBps": round(rate * SAMPLE_MB, 1)})
            print(rows[-1], flush=True)
    return rows


# ---- formats ---------------------------------------------------------------------------------
def bench_raw(work: Path, data: np.ndarray) -> dict:
    path = work / "raw.bin"
    write_s = _timed(lambda: data.tofile(path))
    read_s = best_seconds(lambda: np.fromfile(path, dtype=np.float16), repeats=3)
    return {"format": "raw np.fromfile (one big file)", "access": "sequential", "workers": 0,
            "write_MBps": _mbps(data.nbytes, write_s), "samples_per_s": round(len(data) / read_s, 1),
            "read_MBps": _mbps(data.nbytes, read_s)}


def bench_zarr(work: Path, data: np.ndarray) -> tuple[list[dict], StoreReader]:
    fp = Fingerprint.from_fields({"bench": "store"})
    store = CacheStore.open_or_create(work / "cache", fingerprint=fp, shard_size=SHARD)
    keys = [f"bench/{i:06d}.jpg" for i in range(len(data))]
    store.add_keys(keys)
    store.ensure_array(ARRAY, sample_shape=(T, C))
    write_s = _timed(lambda: [store.write_shard(p.index, {ARRAY: data[p.rows.start:p.rows.stop]})
                              for p in store.shards()])
    reader = StoreReader(store.path, expect=fp)
    assert np.array_equal(reader.read(keys[:5])[ARRAY], data[:5])
    datasets = {"random": (_Batched(len(keys), lambda idx: reader.read([keys[i] for i in idx])[ARRAY]), True, True),
                "shard-order stream": (_ShardStream(reader), False, False)}
    rows = _read_rates("zarr store (StoreReader)", write_s, data.nbytes, len(data), datasets)
    stock = zarr.open_group(str(store.path / "zarr"), mode="r")[ARRAY]
    stock_ds = _Batched(len(keys), lambda idx: np.stack([stock[i] for i in idx]))
    rows += _read_rates("zarr store (stock zarr, per sample)", write_s, data.nbytes, len(data),
                        {"random": (stock_ds, True, True)})
    return rows, reader


def bench_webdataset(work: Path, data: np.ndarray, reader: StoreReader) -> list[dict]:
    import webdataset as wds

    store = CacheStore.open(reader.paths.root, fingerprint=reader.fingerprint)
    write_s = _timed(lambda: [store.write_webdataset_shard(p.index, {ARRAY: data[p.rows.start:p.rows.stop]})
                              for p in store.shards()])
    urls = sorted(str(p) for p in reader.paths.wds.glob("*.tar"))
    field = f"{ARRAY}.npy".lower()
    dataset = (wds.WebDataset(urls, shardshuffle=False, workersplitter=wds.split_by_worker).decode()
               .to_tuple(field).map(lambda s: torch.from_numpy(s[0])).batched(BATCH, collation_fn=torch.stack))
    return _read_rates("webdataset tars (.decode())", write_s, data.nbytes, len(data),
                       {"shard-order stream": (dataset, False, False)})


def bench_per_sample(work: Path, data: np.ndarray, kind: str) -> list[dict]:
    folder = work / kind
    folder.mkdir()
    if kind == "npy":
        write = lambda i: np.save(folder / f"{i:06d}.npy", data[i])  # noqa: E731
        load = lambda i: np.load(folder / f"{i:06d}.npy")  # noqa: E731
    else:
        write = lambda i: torch.save(torch.from_numpy(data[i].copy()), folder / f"{i:06d}.pt")  # noqa: E731
        load = lambda i: torch.load(folder / f"{i:06d}.pt", weights_only=True).numpy()  # noqa: E731
    write_s = _timed(lambda: [write(i) for i in range(len(data))])
    dataset = _Batched(len(data), lambda idx: np.stack([load(i) for i in idx]))
    return _read_rates(f"per-sample .{kind} files", write_s, data.nbytes, len(data),
                       {"random": (dataset, True, True)})


def bench_compression(work: Path, data: np.ndarray) -> list[dict]:
    """Ratio, write MB/s and whole-shard read MB/s per codec on one shard of the same data."""
    rows = []
    shard = data[:SHARD]
    for name in COMPRESSIONS:
        fp = Fingerprint.from_fields({"c": name})
        store = CacheStore.open_or_create(work / f"comp-{name}", fingerprint=fp, shard_size=SHARD)
        store.add_keys([f"k{i}" for i in range(SHARD)])
        store.ensure_array(ARRAY, sample_shape=(T, C), compression=name)
        write_s = min(_timed(lambda: store.write_shard(0, {ARRAY: shard})) for _ in range(2))
        reader = StoreReader(store.path, expect=fp)
        arr = zarr.open_group(str(store.path / "zarr"), mode="r")[ARRAY]
        stored = sum(p.stat().st_size for p in (store.path / "zarr" / ARRAY / "c").rglob("*") if p.is_file())
        rows.append({"compression": name, "ratio": round(shard.nbytes / stored, 3),
                     "write_MBps": _mbps(shard.nbytes, write_s),
                     "read_MBps_zarr": _mbps(shard.nbytes, best_seconds(lambda: arr[:SHARD], repeats=2)),
                     "read_MBps_StoreReader": _mbps(shard.nbytes, best_seconds(lambda: reader.read_shard(ARRAY, 0),
                                                                               repeats=2))})
        print(rows[-1], flush=True)
    return rows


def _unchecked_array(store: CacheStore, data: np.ndarray) -> None:
    """Array "unchecked": the same rows as an array of layout 1 (no per-sample crc32c) whose records carry
    no identity digests, i.e. what `StoreReader` reads without any per-sample check (it hashes each shard
    file against its record once per process, in the warm-up)."""
    zarr.open_group(str(store.path / "zarr"), mode="r+").create_array(  # an array as layout 1 created it
        "unchecked", shape=(store.n_rows, T, C), chunks=(1, T, C), shards=(SHARD, T, C), dtype="float16",
        fill_value=0, compressors=None, config={"write_empty_chunks": True})
    for plan in store.shards():
        store.write_shard(plan.index, {"unchecked": data[plan.rows.start:plan.rows.stop]})
        path = store.meta.paths.record("unchecked", plan.index)
        record = CompletionRecord.from_json(json.loads(path.read_text()))
        path.write_text(json.dumps(dataclasses.replace(record, identity=()).to_json()))


def bench_integrity(work: Path, data: np.ndarray) -> dict:
    """Checked reads against unchecked ones and against `np.fromfile`, interleaved in one run: `StoreReader`
    on an array as extraction writes it (each sample's crc32c and identity digest checked on every read)
    and on the same rows with no per-sample check (`_unchecked_array`), random batches of 32 and whole
    shards, and `np.fromfile` of the same bytes as one file."""
    fp = Fingerprint.from_fields({"bench": "integrity"})
    store = CacheStore.open_or_create(work / "integrity", fingerprint=fp, shard_size=SHARD)
    keys = [f"bench/{i:06d}.jpg" for i in range(len(data))]
    store.add_keys(keys)
    store.ensure_array("checked", sample_shape=(T, C))
    for plan in store.shards():
        store.write_shard(plan.index, {"checked": data[plan.rows.start:plan.rows.stop]})
    _unchecked_array(store, data)
    raw = work / "integrity.bin"
    data.tofile(raw)
    reader = StoreReader(store.path, expect=fp)
    assert reader.infos["checked"].checksummed and not reader.infos["unchecked"].checksummed
    batches = [[keys[i] for i in idx] for idx in np.array_split(np.random.default_rng(0).permutation(len(keys)),
                                                                  len(keys) // BATCH)]
    seconds = best_seconds_interleaved({
        "np.fromfile": lambda: np.fromfile(raw, dtype=np.float16),
        **{f"random {a}": lambda a=a: [reader.read(b, [a]) for b in batches] for a in ("checked", "unchecked")},
        **{f"shards {a}": lambda a=a: [reader.read_shard(a, s) for s in reader.complete_shards()]
           for a in ("checked", "unchecked")}})
    out = {"samples_per_s": {name: round(len(keys) / t, 1) for name, t in seconds.items()},
           "random_checked_vs_fromfile": round(seconds["np.fromfile"] / seconds["random checked"], 3),
           "random_checked_vs_unchecked": round(seconds["random unchecked"] / seconds["random checked"], 3),
           "shards_checked_vs_fromfile": round(seconds["np.fromfile"] / seconds["shards checked"], 3),
           "shards_checked_vs_unchecked": round(seconds["shards unchecked"] / seconds["shards checked"], 3)}
    print(out, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=768, help="samples (multiple of 256 keeps shards full)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch dir (default: a temp dir)")
    parser.add_argument("--integrity-only", action="store_true",
                        help="only the checked / unchecked / np.fromfile comparison (printed; store.json untouched)")
    parser.add_argument("--compact-only", action="store_true",
                        help="only the compact dtypes against float16 (its entry of store.json is replaced)")
    parser.add_argument("--steps", type=int, default=18, help="pretraining steps per dtype (compact comparison)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.workdir))
    try:
        data = activations(args.n)
        if args.integrity_only:
            bench_integrity(work, data)
            return 0
        if args.compact_only:
            previous = json.loads((RESULTS / "store.json").read_text()) if (RESULTS / "store.json").is_file() else {}
            previous.pop("machine", None)
            write_results("store", {**previous, "compact": bench_compact(work, data, shard=SHARD, batch=BATCH,
                                                                          steps=args.steps)})
            return 0
        rows = [bench_raw(work, data)]
        print(rows[-1], flush=True)
        zarr_rows, reader = bench_zarr(work, data)
        rows += zarr_rows + bench_webdataset(work, data, reader)
        rows += bench_per_sample(work, data, "npy") + bench_per_sample(work, data, "pt")
        compression = bench_compression(work, data)
        integrity = bench_integrity(work, data)
        objects = bench_object_store(work, data, ARRAY)
        compact = bench_compact(work, data, shard=SHARD, batch=BATCH, steps=args.steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_results("store", {"n_samples": args.n, "sample_shape": [T, C], "dtype": "float16",
                                   "batch": BATCH, "shard_size": SHARD, "reads": rows, "compression": compression,
                                   "integrity": integrity, "compact": compact, "object_store": objects})
    keys = ["format", "access", "workers", "write_MBps", "samples_per_s", "read_MBps"]
    print(markdown_table(keys, [[r[k] for k in keys] for r in rows]))
    ckeys = list(compression[0])
    print()
    print(markdown_table(ckeys, [[r[k] for k in ckeys] for r in compression]))
    okeys = list(objects["epochs"][0])
    print()
    print(markdown_table(okeys, [[r[k] for k in okeys] for r in objects["epochs"]]))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
