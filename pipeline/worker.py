"""The two units of work of an extraction run, as plain callables: the Ray Data job schedules them, the
sequential runner (`pipeline.sequential`, `runner: sequential`) calls them in one process. Rows: `pipeline.rows`.

- `decode_shard(task)`: CPU. Loads and preprocesses the images of one shard into uint8 arrays, timing
  itself; failures are returned with their reasons, never raised.
- `ShardWorker(builder)(batch)`: the extractor actor, wrapping one `ShardProcessor`. Built once from a
  `WorkerBuilder` (a picklable description, not a live model); per shard (`ShardProcessor.process`)
  it computes through the spec's `FeatureEncoder` (`stages.serving.compute_arrays`: from the images, or
  from the stored latents only the missing names x timesteps), in deterministic mini-batches of
  `batch_size` in row order, in the stored dtypes, writes the shard whole (webdataset tar, then zarr
  with its completion records)
  and returns its `ShardStats` (images decoded and encoded from pixels are counted, so a run that
  reuses stored latents can be seen to touch no image; the seconds of each stage are reported).

An exception in either leaves as a `pipeline.errors.WorkerError` naming its shard (and the keys of the
mini-batch being encoded) with its traceback text, which the driver logs (see `pipeline.job`).
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pipeline.errors import reported
from pipeline.rows import DecodedShard, ShardStats, ShardTask
from stages.cache_spec import LATENTS, CacheSpec
from stages.models import default_device, resolve_precision
from stages.image_files import ImageError
from stages.preprocess import ImageSpec, preprocess, read_image
from stages.serving import compute_arrays
from stages.store import CacheStore, Fingerprint, StoreReader
from stages.store.compact import held_dtype, sample_nbytes

__all__ = ["decode_shard", "decode_row", "WorkerBuilder", "ShardProcessor", "ShardWorker"]


def decode_shard(task: ShardTask, *, image_root: str, image_spec: ImageSpec) -> DecodedShard:
    """The images of `task`'s keys and their files' stamps (nothing is read when latents are reused)."""
    start = time.perf_counter()
    side = image_spec.resolution
    images, ok_rows, failed, stamps = [], [], {}, {}
    if not task.reuse_latents:
        for row, key in enumerate(task.keys):
            if key is None:
                continue
            try:
                image, stamps[key] = read_image(image_root, key, max_pixels=image_spec.max_pixels)
            except ImageError as exc:
                failed[key] = str(exc)
                if exc.stamp is not None:  # a file that does not decode: replacing it is a change
                    stamps[key] = exc.stamp
                continue
            images.append(np.asarray(preprocess(image, image_spec), dtype=np.uint8))  # (R, R, 3)
            ok_rows.append(row)
    stacked = np.stack(images) if images else np.zeros((0, side, side, 3), np.uint8)
    return DecodedShard(task=task, images=stacked, ok_rows=np.asarray(ok_rows, np.int64), failed=failed,
                        seconds=time.perf_counter() - start, stamps=stamps)


def decode_row(row: Mapping[str, Any], *, image_root: str, image_spec: ImageSpec) -> dict[str, Any]:
    """`decode_shard` on rows: the Ray Data `map` UDF."""
    task = ShardTask.from_row(row)
    with reported(shard=task.shard):
        return decode_shard(task, image_root=image_root, image_spec=image_spec).to_row()


@dataclass(frozen=True)
class WorkerBuilder:
    """Everything an actor needs to build its encoder and open the store (sent instead of a model)."""

    spec: CacheSpec
    store_path: str
    fingerprint: Fingerprint  # the store's, checked when the actor opens it
    shapes: Mapping[str, tuple[tuple[int, ...], str]]  # array_id -> (sample shape, stored dtype)
    batch_size: int
    device: str = "auto"
    precision: str = "auto"
    write_webdataset: bool = True
    decode_limits: Mapping[str, int] = field(default_factory=dict)  # recorded: they decide which images fail
    threads: int = 0  # torch CPU threads (0: leave torch's default)

    def build(self) -> "ShardProcessor":
        return ShardProcessor(self)


class ShardProcessor:
    """Computes and writes whole shards; one per actor, models loaded once."""

    def __init__(self, builder: WorkerBuilder) -> None:
        if builder.threads > 0:
            torch.set_num_threads(builder.threads)
        self.builder, spec = builder, builder.spec
        device = default_device() if builder.device == "auto" else torch.device(builder.device)
        self.encoder = spec.kind.load(spec, device=device, dtype=resolve_precision(builder.precision, device))
        self.store = CacheStore.open(builder.store_path, fingerprint=builder.fingerprint)
        self._reader: Any = None  # StoreReader, opened on first use (see `_stored`)
        self.array_ids = spec.array_ids()
        self.batches = 0  # encoder calls made (the cache-hit test checks no call happens)
        self.encoded = 0  # images encoded from pixels (VAE or CLIP vision); 0 when latents are reused

    def _empty(self, array_ids: Sequence[str], n_rows: int) -> dict[str, np.ndarray]:
        return {a: np.zeros((n_rows, *self.builder.shapes[a][0]), held_dtype(self.builder.shapes[a][1]))
                for a in array_ids}

    def _stored(self, shard: int, array_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Every row of shard `shard` of arrays complete before the run was planned. One reader per
        actor (it knows every array: the driver creates them before the job starts)."""
        if array_ids and self._reader is None:
            self._reader = StoreReader(self.store.path, array_ids=[], expect=self.store.fingerprint)
        return {a: self._reader.read_shard(a, shard) for a in array_ids}

    def compute(self, decoded: DecodedShard) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
        """Arrays to write `(shard_size, *sample_shape)` as the store takes them (`FeatureEncoder.stored`;
        failed/padding rows zero), the
        stored arrays read to compute them (the reused latents) and the failures."""
        task = decoded.task
        if task.reuse_latents:  # only specs whose arrays include LATENTS get such tasks (see driver._task)
            reused = self._stored(task.shard, [LATENTS])
            failed = self.store.failed(task.shard, [LATENTS])
            ok_rows = np.asarray([r for r, k in enumerate(task.keys) if k is not None and k not in failed], np.int64)
            todo = [a for a in self.array_ids if a != LATENTS and not self.store.is_complete(a, task.shard)]
        else:
            reused, ok_rows, failed, todo = {}, decoded.ok_rows, dict(decoded.failed), list(self.array_ids)
        arrays = self._empty(todo, len(task.keys))
        size = self.builder.batch_size
        for start in range(0, len(ok_rows), size):
            rows = ok_rows[start:start + size]
            keys = [task.keys[r] for r in rows]
            prompts = {source: [texts[r] for r in rows] for source, texts in task.prompts.items()}
            with reported(shard=task.shard, keys=keys):
                if task.reuse_latents:
                    latents = torch.from_numpy(reused[LATENTS][rows]).float()
                    out = compute_arrays(self.encoder, keys, array_ids=todo, latents=latents, prompts=prompts)
                else:
                    out = compute_arrays(self.encoder, keys, array_ids=todo,
                                         images=decoded.images[start:start + size], prompts=prompts)
                    self.encoded += len(rows)
            self.batches += 1
            for array_id, values in out.items():
                arrays[array_id][rows] = values
        return arrays, reused, failed

    def process(self, decoded: DecodedShard) -> ShardStats:
        """Compute, write the tar then the zarr shard (records last), return the shard's stats."""
        batches, encoded, before = self.batches, self.encoded, Counter(self.encoder.seconds)
        arrays, reused, failed = self.compute(decoded)
        start, shard = time.perf_counter(), decoded.task.shard
        # the image files the values come from, and how they were read: now, or for the reused latents
        if decoded.task.reuse_latents:
            source = self.store.record(LATENTS, shard)
            images, limits = source.images, source.decode_limits
        else:
            images, limits = decoded.stamps, self.builder.decode_limits
        written = sum(len(v) * sample_nbytes(v.shape[1:], self.builder.shapes[a][1]) for a, v in arrays.items())
        # the tar holds every array of the shard: the store adds those complete before this run
        export = {**reused, **arrays} if self.builder.write_webdataset else None
        tar = self.store.write_shard(shard, arrays, failed, export=export, images=images,  # tar, then zarr
                                     decode_limits=limits)
        written += tar.stat().st_size if tar is not None else 0
        spent = self.encoder.seconds - before  # this shard's vae/unet/clip seconds
        seconds = {"decode": decoded.seconds, **{s: spent[s] for s in self.builder.spec.kind.time_stages},
                   "write": time.perf_counter() - start}
        return ShardStats(shard=shard, n_images=sum(k is not None for k in decoded.task.keys), failed=failed,
                          bytes=written, batches=self.batches - batches, decoded=len(decoded.images),
                          encoded=self.encoded - encoded, seconds=seconds)


class ShardWorker:
    """Ray Data actor UDF: `map_batches(ShardWorker, batch_size=1, batch_format="numpy",
    fn_constructor_kwargs={"builder": ...})`; returns the stats rows as an Arrow table (their list
    columns convert cleanly from Python lists, not from numpy object arrays)."""

    def __init__(self, builder: WorkerBuilder) -> None:
        import ray

        self.node = ray.get_runtime_context().get_node_id()
        with reported():
            self.processor = builder.build()

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        stats = []
        for row in ({k: v[i] for k, v in batch.items()} for i in range(len(batch["shard"]))):
            with reported(shard=int(row["shard"])):
                stats.append(dataclasses.replace(self.processor.process(DecodedShard.from_row(row)),
                                                 node=self.node).to_row())
        return pa.Table.from_pylist(stats)
