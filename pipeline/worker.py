"""The two units of work of an extraction run, as plain callables (Ray schedules them; the bare loop of
`benchmarks/bench_pipeline.py` and the Ray-free tests call them in one process):

- `decode_shard(task)`: CPU. Loads and preprocesses the images of one shard into uint8 arrays;
  failures are returned with their reasons, never raised.
- `ShardWorker(builder)(batch)`: the extractor actor, wrapping one `ShardProcessor`. Built once from a
  `WorkerBuilder` (a picklable description, not a live model); per shard (`ShardProcessor.process`)
  it encodes (or reads the stored latents and computes only the missing names x timesteps),
  extracts in deterministic mini-batches of `batch_size` in row order, casts to the stored dtypes,
  writes the shard whole (webdataset tar, then zarr with its completion records) and returns a
  one-row stats batch (images decoded and encoded from pixels are counted, so a run that reuses
  stored latents can be seen to touch no image).

Task rows (dicts of scalars and numpy arrays, what Ray Data moves between the two):
  shard: int; keys: JSON list (null = padding row); prompts: JSON {source: [text per row]};
  reuse_latents: bool (latents of this shard are complete: read them instead of the images)
  + from decode_shard: images (n_ok, R, R, 3) uint8; ok_rows (n_ok,) int64; failed: JSON {key: reason}.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from stages.cache_spec import LATENTS, CacheSpec, array_ids_for, extraction_spec_for
from stages.features import ArrayId, FeatureName
from stages.models import resolve_dtype, resolve_model_dir
from stages.preprocess import ImageError, ImageSpec, load_image, preprocess
from stages.store.layout import read_json

__all__ = ["task_row", "decode_shard", "WorkerBuilder", "ShardProcessor", "ShardWorker", "ENCODER_RUNNERS"]


def task_row(*, shard: int, keys: Sequence[str | None], prompts: Mapping[str, Sequence[str | None]],
             reuse_latents: bool) -> dict[str, Any]:
    return {"shard": shard, "keys": json.dumps(list(keys)), "prompts": json.dumps(dict(prompts)),
            "reuse_latents": reuse_latents}


def decode_shard(task: dict[str, Any], *, image_root: str, image_spec: ImageSpec) -> dict[str, Any]:
    """Add `images`, `ok_rows`, `failed` to a task row (nothing is decoded when latents are reused)."""
    keys = json.loads(task["keys"])
    side = image_spec.resolution
    images, ok_rows, failed = [], [], {}
    if not task["reuse_latents"]:
        for row, key in enumerate(keys):
            if key is None:
                continue
            try:
                image = preprocess(load_image(image_root, key, max_pixels=image_spec.max_pixels), image_spec)
            except ImageError as exc:
                failed[key] = str(exc)
                continue
            images.append(np.asarray(image, dtype=np.uint8))  # (R, R, 3)
            ok_rows.append(row)
    stacked = np.stack(images) if images else np.zeros((0, side, side, 3), np.uint8)
    return {**task, "images": stacked, "ok_rows": np.asarray(ok_rows, np.int64), "failed": json.dumps(failed)}


class _SDRunner:
    """VAE latents (rounded to the stored dtype) and U-Net taps computed from exactly those latents."""

    def __init__(self, spec: CacheSpec, model_dir: Path, *, device: Any, dtype: Any) -> None:
        from stages.extractor import SDExtractor
        from stages.models import load_sd_components

        self.spec = spec
        self.latents_dtype = resolve_dtype(spec.latents_dtype, device)
        self.components = load_sd_components(str(model_dir), device=device, dtype=dtype)
        self.extractor = SDExtractor(self.components, extraction_spec_for(spec))
        self.extractor.check_resolution(spec.resolution)
        self._extractors = {(spec.features, spec.timesteps): self.extractor}  # by (features, timesteps)

    def _extractor_for(self, array_ids: Sequence[str] | None) -> Any:
        """The full extractor, or (for a shard whose stored latents are reused) one restricted to the
        feature names x timesteps of `array_ids`, the arrays still missing. Noise depends on key,
        trial and seed only, so a subset computes the same values."""
        if array_ids is None:
            return self.extractor
        ids = [ArrayId.parse(a) for a in array_ids if a != LATENTS]
        names, steps = {i.feature for i in ids}, {i.timestep for i in ids}
        key = (tuple(n for n in self.spec.features if FeatureName.parse(n) in names),
               tuple(t for t in self.spec.timesteps if t in steps))
        if key not in self._extractors:
            from stages.extractor import SDExtractor

            spec = extraction_spec_for(self.spec, features=key[0], timesteps=key[1])
            self._extractors[key] = SDExtractor(self.components, spec)
        return self._extractors[key]

    def latents(self, images: np.ndarray) -> Any:
        """uint8 (B, R, R, 3) -> (B, 4, R/8, R/8) float32 holding values of the stored latents dtype."""
        import torch
        from PIL import Image

        from stages.preprocess import to_tensor

        pixels = torch.stack([to_tensor(Image.fromarray(image)) for image in images])  # (B, 3, R, R)
        z0 = self.extractor.encode(pixels)
        return z0.to(self.latents_dtype).float()

    def features(self, latents: Any, keys: Sequence[str], prompts: Mapping[str, Sequence[str]], *,
                 array_ids: Sequence[str] | None = None) -> dict[str, Any]:
        """{array_id: (B, T, C) float32}: unconditional, plus one conditioned array set per source;
        `array_ids` limits the names and timesteps computed to those these arrays need."""
        extractor = self._extractor_for(array_ids)
        out: dict[str, Any] = {}
        for i, source in enumerate(self.spec.prompt_sources):
            texts = list(prompts[source])
            if i == 0:  # unconditional and conditional halves share one batched pass and x_t
                out.update(extractor.conditional_pair(latents, keys, prompts=texts, source=source))
            else:
                out.update(extractor.features(latents, keys, prompts=texts, source=source))
        if not self.spec.prompt_sources:
            out.update(extractor.features(latents, keys))
        return out

    def __call__(self, images: np.ndarray, keys: Sequence[str], prompts: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        latents = self.latents(images)
        return {LATENTS: latents, **self.features(latents, keys, prompts)}


class _ClipRunner:
    """CLIP vision penultimate-layer patch tokens."""

    def __init__(self, spec: CacheSpec, model_dir: Path, *, device: Any, dtype: Any) -> None:
        from stages.clip_features import load_clip_vision

        self.spec = spec
        self.clip = load_clip_vision(model_dir, device=device, dtype=dtype)

    def __call__(self, images: np.ndarray, keys: Sequence[str], prompts: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        from stages.clip_features import clip_features

        return clip_features(self.clip, list(images), grid=self.spec.grid)


ENCODER_RUNNERS = {"sd": _SDRunner, "clip": _ClipRunner}


@dataclass(frozen=True)
class WorkerBuilder:
    """Everything an actor needs to build its extractor and open the store (sent instead of a model)."""

    spec: CacheSpec
    store_path: str
    shapes: Mapping[str, tuple[tuple[int, ...], str]]  # array_id -> (sample shape, stored dtype)
    batch_size: int
    device: str = "auto"
    compute_dtype: str = "auto"
    write_webdataset: bool = True
    threads: int = 0  # torch CPU threads (0: leave torch's default)

    def build(self) -> "ShardProcessor":
        return ShardProcessor(self)


class ShardProcessor:
    """Computes and writes whole shards; one per actor, models loaded once."""

    def __init__(self, builder: WorkerBuilder) -> None:
        import torch

        from stages.models import default_device, resolve_dtype
        from stages.store import CacheStore

        if builder.threads > 0:
            torch.set_num_threads(builder.threads)
        self.builder = builder
        device = default_device() if builder.device == "auto" else torch.device(builder.device)
        dtype = resolve_dtype(builder.compute_dtype, device)
        model_dir = resolve_model_dir(builder.spec.model)
        self.runner = ENCODER_RUNNERS[builder.spec.encoder](builder.spec, model_dir, device=device, dtype=dtype)
        self.store = CacheStore.open(builder.store_path)
        self._reader: Any = None  # StoreReader, opened on first use (see `_stored`)
        self.array_ids = array_ids_for(builder.spec)
        self.batches = 0  # extractor calls made (the cache-hit test checks no call happens)
        self.encoded = 0  # images encoded from pixels (VAE or CLIP vision); 0 when latents are reused

    def _empty(self, array_ids: Sequence[str], n_rows: int) -> dict[str, np.ndarray]:
        return {a: np.zeros((n_rows, *self.builder.shapes[a][0]), self.builder.shapes[a][1]) for a in array_ids}

    def _stored(self, shard: int, array_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Every row of shard `shard` of arrays complete before the run was planned. One reader per
        actor (it knows every array: the driver creates them before the job starts)."""
        from stages.store import StoreReader

        if array_ids and self._reader is None:
            self._reader = StoreReader(self.store.path, array_ids=[])
        return {a: self._reader.read_shard(a, shard) for a in array_ids}

    def compute(self, task: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
        """Arrays to write `(shard_size, *sample_shape)` in stored dtypes (failed/padding rows zero), the
        stored arrays read to compute them (the reused latents) and the failures."""
        import torch

        shard, keys = int(task["shard"]), json.loads(task["keys"])
        prompts = json.loads(task["prompts"])
        size = self.builder.batch_size
        if task["reuse_latents"]:
            reused = self._stored(shard, [LATENTS])
            failed = dict(read_json(self.store.paths.record(LATENTS, shard))["failed"])
            ok_rows = np.asarray([r for r, k in enumerate(keys) if k is not None and k not in failed], np.int64)
            todo = [a for a in self.array_ids if a != LATENTS and not self.store.is_complete(a, shard)]
        else:
            reused, ok_rows, failed = {}, np.asarray(task["ok_rows"], np.int64), json.loads(task["failed"])
            todo = list(self.array_ids)
        arrays = self._empty(todo, len(keys))
        for start in range(0, len(ok_rows), size):
            rows = ok_rows[start:start + size]
            batch_keys = [keys[r] for r in rows]
            batch_prompts = {s: [prompts[s][r] for r in rows] for s in prompts}
            if task["reuse_latents"]:
                latents = torch.from_numpy(reused[LATENTS][rows]).float()
                out = self.runner.features(latents, batch_keys, batch_prompts, array_ids=todo)
            else:
                out = self.runner(task["images"][start:start + size], batch_keys, batch_prompts)
                self.encoded += len(rows)
            self.batches += 1
            for array_id in todo:
                arrays[array_id][rows] = out[array_id].float().cpu().numpy().astype(self.builder.shapes[array_id][1])
        return arrays, reused, failed

    def process(self, task: Mapping[str, Any]) -> dict[str, Any]:
        """Compute, write the tar then the zarr shard (records last), return the stats row."""
        batches, encoded = self.batches, self.encoded
        arrays, reused, failed = self.compute(task)
        shard = int(task["shard"])
        written = sum(a.nbytes for a in arrays.values())
        if self.builder.write_webdataset:  # the tar holds every array of the shard
            have = {**reused, **arrays}
            export = {**self._stored(shard, [a for a in self.array_ids if a not in have]), **have}
            written += self.store.write_webdataset_shard(shard, export, failed).stat().st_size
        self.store.write_shard(shard, arrays, failed)
        n_keys = sum(k is not None for k in json.loads(task["keys"]))
        return {"shard": shard, "n_images": n_keys, "n_failed": len(failed), "failed": json.dumps(failed),
                "bytes": written, "batches": self.batches - batches, "decoded": len(task["images"]),
                "encoded": self.encoded - encoded}


class ShardWorker:
    """Ray Data actor UDF: `map_batches(ShardWorker, batch_size=1, fn_constructor_kwargs={"builder": ...})`."""

    def __init__(self, builder: WorkerBuilder) -> None:
        self.processor = builder.build()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stats = [self.processor.process({k: v[i] for k, v in batch.items()}) for i in range(len(batch["shard"]))]
        return {k: np.asarray([s[k] for s in stats]) for k in stats[0]}
