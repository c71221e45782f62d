"""Compact feature dtypes against float16, side by side in one run (part of `just bench-store`, `compact` in
`store.json`; `python -m benchmarks.bench_store --compact-only` runs just this):

1. the bundled sample extracted as `configs/extract/sample.yaml` does (embedded tiny SD, 256 px, the paper's
   six features, 16x16 tokens) in float16 and converted to int8 and float8_e4m3fn (`stages.store.convert`:
   byte for byte a direct extraction): store bytes, and the relative error ||x' - x|| / ||x|| of each array
   against the float16 store;
2. SD-shaped `[256, 1280]` samples (`bench_store.activations`) in each dtype: bytes per sample, samples/s
   written (quantising included), and `StoreReader` samples/s, interleaved: random batches of 32 from the
   page cache (as read, and as the float32 tensors the trainer's dataset makes of them) and from the disk
   (the shard files evicted from the page cache first, as a cache larger than memory is read), and whole
   shards in order;
3. pretraining on the sample (`configs/train/sample-pretrain.yaml`, same steps and seed) from each store:
   the loss curve and its difference from float16's;
4. the planned size of the paper's full cache (SD 2.1-base, 512 px, six features pooled to 16x16, the
   558k + 665k images) in each dtype, from the dry run's own byte count (`pipeline.plan.array_shard_bytes`).
"""
from __future__ import annotations

import collections
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from benchmarks.common import best_seconds_interleaved
from pipeline.config import load_extract_config
from pipeline.driver import run_extract
from pipeline.plan import array_shard_bytes
from stages.cache_spec import LATENTS, cache_spec_from_yaml, spec_summary
from stages.config import load_config
from stages.flops import architecture_dir
from stages.store import CacheStore, Fingerprint, StoreMeta, StoreReader
from stages.store.compact import COMPACT
from stages.store.convert import convert_store

__all__ = ["bench_compact"]

DTYPES = ("float16", *COMPACT)
SAMPLE_YAML, PAPER_YAML = "configs/extract/sample.yaml", "configs/extract/llava558k.yaml"
PAPER_IMAGES = {"llava558k": 558_128, "llava665k (images in mix665k, before deduplication)": 624_610}


def _sample_stores(work: Path) -> dict[str, Path]:
    root = work / "sample-cache"
    config = load_extract_config([f"config={SAMPLE_YAML}", f"cache_root={root}", "runner=sequential",
                                  "write_webdataset=false"])
    source = run_extract(config, show_progress=False).store
    features = [a for a in StoreMeta.load(source, expect=None).array_ids if a != LATENTS]
    return {"float16": source, **{d: convert_store(source, d, features=features) for d in COMPACT}}


def _store_bytes(path: Path) -> dict[str, int]:
    """Bytes of a store's shard files: its features (scales included), its latents, in all."""
    sizes = {d.name: sum(f.stat().st_size for f in (d / "c").rglob("*") if f.is_file())
             for d in (path / "zarr").iterdir() if (d / "c").is_dir()}
    latents = sizes.get(LATENTS, 0)
    return {"features": sum(sizes.values()) - latents, "latents": latents, "total": sum(sizes.values())}


def _relative_errors(stores: dict[str, Path]) -> dict[str, dict[str, float]]:
    reference = StoreReader(stores["float16"], expect=None)
    features = [a for a in reference.array_ids if a != LATENTS]
    x = {a: v.astype(np.float64) for a, v in reference.read(reference.keys, features).items()}
    return {d: {a: float(np.linalg.norm(y - x[a]) / np.linalg.norm(x[a]))
                for a, y in StoreReader(stores[d], expect=None).read(reference.keys, features).items()}
            for d in COMPACT}


def _evict(store: Path) -> None:
    """Drop a store's shard files from the page cache (`posix_fadvise` DONTNEED: they are written and
    fsynced, so clean): the next read comes from the disk."""
    for path in (p for p in store.glob("zarr/*/c/**/*") if p.is_file()):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _read_rates(work: Path, data: np.ndarray, *, shard: int, batch: int) -> dict[str, dict[str, float]]:
    """`data` `(n, T, C)` float16 written once per dtype; samples/s written and read per dtype and access."""
    readers, written, keys = {}, {}, [f"bench/{i:06d}.jpg" for i in range(len(data))]
    for dtype in DTYPES:
        fp = Fingerprint.from_fields({"bench": "compact", "dtypes": {"features": dtype}})
        store = CacheStore.open_or_create(work / "compact", fingerprint=fp, shard_size=shard)
        store.add_keys(keys)
        store.ensure_array("x", sample_shape=data.shape[1:], dtype=dtype)
        started = time.perf_counter()
        for plan in store.shards():
            store.write_shard(plan.index, {"x": data[plan.rows.start:plan.rows.stop]})
        written[dtype] = len(keys) / (time.perf_counter() - started)
        readers[dtype] = StoreReader(store.path, expect=fp)
    batches = [[keys[i] for i in idx] for idx in np.array_split(np.random.default_rng(0).permutation(len(keys)),
                                                                  len(keys) // batch)]
    tensor: Callable[[np.ndarray], torch.Tensor] = lambda a: torch.from_numpy(a).float()  # noqa: E731 (train.data)

    def each(read: Callable[[list[str]], object], *, cold: StoreReader | None = None) -> Callable[[], None]:
        """One pass over the batches, each result dropped as a training step would (none is kept)."""
        def run() -> None:
            if cold is not None:
                _evict(cold.paths.root)
            for keys_ in batches:
                read(keys_)
        return run

    timed = {}
    for dtype, reader in readers.items():
        timed[f"random {dtype}"] = each(reader.read)
        timed[f"random as float32 tensors {dtype}"] = each(lambda b, r=reader: tensor(r.read(b)["x"]))
        timed[f"random from disk {dtype}"] = each(reader.read, cold=reader)
        timed[f"shards {dtype}"] = lambda r=reader: collections.deque(r.iter_shards(), maxlen=0)
    seconds = best_seconds_interleaved(timed)
    out = {}
    for dtype, reader in readers.items():
        x32 = data.astype(np.float32)
        served = reader.read(keys)["x"].astype(np.float32)
        out[dtype] = {"bytes_per_sample": _store_bytes(reader.paths.root)["total"] / len(keys),
                      "relative_error": float(np.linalg.norm(served - x32) / np.linalg.norm(x32)),
                      "write_samples_per_s": round(written[dtype], 1),
                      **{f"{access}_samples_per_s": round(len(keys) / seconds[f"{access} {dtype}"], 1)
                         for access in ("random", "random as float32 tensors", "random from disk", "shards")}}
    return out


def _losses(work: Path, stores: dict[str, Path], steps: int) -> dict[str, list[float]]:
    from train.cli import prepare, run
    from train.config import load_stage_config

    losses = {}
    for dtype, path in stores.items():
        spec, _ = cache_spec_from_yaml(SAMPLE_YAML)
        extract_yaml = work / f"sample-{dtype}.yaml"
        extract_yaml.write_text(yaml.safe_dump({**load_config(SAMPLE_YAML), **spec_summary(replace(
            spec, feature_dtype=dtype)), "cache_root": str(path.parent)}))
        config = load_stage_config("pretrain", [f"data.extract_configs=[{extract_yaml}]", f"max_steps={steps}",
                                                "save_every=0", f"output_dir={work / f'run-{dtype}'}"])
        losses[dtype] = [m.loss for m in run(prepare(config)).history]
    return losses


def _planned_full_cache() -> dict[str, dict[str, int]]:
    spec, _ = cache_spec_from_yaml(PAPER_YAML)
    model_dir, _ = architecture_dir(spec.model)
    shapes, shard_size = spec.kind.sample_shapes(spec, model_dir), 256
    shards = sum(math.ceil(n / shard_size) for n in PAPER_IMAGES.values())
    out = {}
    for dtype in DTYPES:
        per_shard = array_shard_bytes(replace(spec, feature_dtype=dtype), shapes, shard_size)
        out[dtype] = {"features": shards * sum(v for a, v in per_shard.items() if a != LATENTS),
                      "latents": shards * per_shard[LATENTS], "total": shards * sum(per_shard.values())}
    return {"images": PAPER_IMAGES, "shards": shards, "bytes": out}


def bench_compact(work: Path, data: np.ndarray, *, shard: int, batch: int, steps: int) -> dict:
    """Every measurement of the module docstring, each dtype next to float16."""
    stores = _sample_stores(work)
    sizes = {d: _store_bytes(p) for d, p in stores.items()}
    losses = _losses(work, stores, steps)
    delta = {d: np.abs(np.subtract(losses[d], losses["float16"])) for d in COMPACT}
    out = {"sample_store": {"bytes": sizes,
                            "vs_float16": {d: {k: round(v / sizes["float16"][k], 4) for k, v in sizes[d].items()}
                                           for d in COMPACT},
                            "relative_error": _relative_errors(stores)},
           "sd_shaped": {"sample_shape": list(data.shape[1:]), "n": len(data),
                         **_read_rates(work, data, shard=shard, batch=batch)},
           "pretrain": {"steps": steps, "losses": losses,
                        "abs_diff_vs_float16": {d: {"max": float(v.max()), "mean": float(v.mean())}
                                                for d, v in delta.items()}},
           "planned_full_cache": _planned_full_cache()}
    print(out, flush=True)
    return out
