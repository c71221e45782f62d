"""`just extract --dry-run`: what a run would compute, write and cost, before anything is spent.

Nothing is written and neither Ray nor a model's weights are touched: the manifest is built, and the
shards the run would compute are scheduled by the run's own planning (`pipeline.shards.pending`: the
existing store, if any, read as `plan_run` reads it, its records projected as the run's repairs and
`add_keys` would leave them). Compute is the registry entry's count (`EncoderKind.image_gflop`, on the
meta device); a hub model not in the local cache is priced on its reference architecture when
`stages.flops.REFERENCE_MODELS` knows it (its store cannot be found without the weights' hashes, so
every usable image counts as new).

Bytes are those of the files a run writes: each zarr shard file (every row, padding included: one
sample's bytes plus its 4-byte crc32c, then the 16-byte-per-row index and its crc32c) and each
webdataset tar (`stages.store.webdataset_shards.tar_shard_size`, the tar writer's own rule); the small
JSON index and completion records are left out. The CPU side is sized by the config's `decode_rate`
(images per second per core; `just bench-decode` measures a machine's).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pipeline.config import ExtractConfig, resolve_data
from pipeline.manifest import REFUSED_HINT, build_manifest
from pipeline.shards import pending
from stages.cache_spec import CacheSpec, fingerprint_for
from stages.flops import ComputeBudget, architecture_dir
from stages.store.objects import as_location, is_url
from stages.store.compact import data_type, held_dtype, stored_parts
from stages.store.webdataset_shards import npy_size, tar_shard_size

__all__ = ["ShardWork", "ExtractPlan", "plan_extract", "write_plan", "extractor_memory", "zarr_shard_bytes",
           "array_shard_bytes"]

_UNKNOWN_STORE = "0" * 16


def zarr_shard_bytes(sample_shape: Sequence[int], dtype: str, shard_size: int) -> int:
    """One shard file of a zarr array of data type `dtype`: every row's bytes + crc32c, then the shard index
    + its crc32c."""
    sample = int(np.prod(sample_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return shard_size * (sample + 4) + shard_size * 16 + 4


def array_shard_bytes(spec: CacheSpec, shapes: Mapping[str, Sequence[int]], shard_size: int) -> dict[str, int]:
    """`{array_id: bytes}` of one shard of each array of `spec` (sample shapes `shapes`): its shard file, and
    a compact array's scales' (`stages.store.compact`)."""
    parts = {a: stored_parts(a, shapes[a], spec.stored_dtype(a)) for a in spec.array_ids()}
    return {a: sum(zarr_shard_bytes(s, data_type(d), shard_size) for _, s, d in p) for a, p in parts.items()}


@dataclass(frozen=True)
class ShardWork:
    """One shard a run would compute: its keys (None: padding, or a key that fails the manifest checks
    now), the arrays computed and whether the stored latents are reused (no decode, no VAE)."""

    shard: int
    rows: range
    keys: tuple[str | None, ...]
    arrays: tuple[str, ...]
    reuse_latents: bool

    @property
    def images(self) -> int:
        return sum(k is not None for k in self.keys)


@dataclass
class ExtractPlan:
    """The dry run's answer (`as_dict` is the JSON written, `render` the text printed)."""

    store: str | None
    shard_size: int
    images: dict[str, int]
    shards: dict[str, int]
    bytes_per_array: dict[str, dict[str, int]]
    bytes: dict[str, int]
    gflop_per_image: dict[str, float]
    gflop: dict[str, float]
    budget: dict[str, Any]
    gpu_hours: float
    images_per_s_per_gpu: float
    decode_rate: float  # images/s per CPU core (the config's)
    cpu_cores_per_gpu: float
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        gb = lambda n: f"{n / 1e9:.3f} GB"  # noqa: E731
        i, s, b, g = self.images, self.shards, self.bytes, self.gflop
        lines = [
            f"plan: store {self.store or '(unknown until the model is downloaded)'}, shards of {self.shard_size}",
            f"  images: {i['new']} to compute ({i['reusing_latents']} from stored latents), {i['cached']} already "
            f"cached, {i['failing_checks']} failing the manifest checks ({i['missing']} missing, {i['refused']} "
            f"refused), {i['failed_before']} failed in earlier runs",
            f"  shards: {s['to_compute']} to compute ({s['new']} new), {s['complete']} complete, "
            f"{s['other_data']} left for other data files",
            f"  bytes written: {gb(b['total'])} (zarr {gb(b['zarr'])}, webdataset {gb(b['webdataset'])}); "
            f"store when complete: {gb(b['store_when_complete'])}"
            + (" (uploaded to the object store: the workers' egress)" if self.store and is_url(self.store) else ""),
        ]
        lines += [f"    {a}: {v['per_image']} B/image, {gb(v['zarr'])} written" for a, v in self.bytes_per_array.items()]
        parts = ", ".join(f"{k} {v:.1f}" for k, v in self.gflop_per_image.items())
        lines += [
            f"  compute: {g['per_new_image']:.1f} GFLOP per new image ({parts}); {g['total'] / 1e6:.3f} PFLOP in all",
            f"  at {self.budget['utilization']:.0%} of {self.budget['gpu']} ({self.budget['peak_tflops']:g} TFLOP/s "
            f"dense): {self.gpu_hours:.3g} GPU-hours, {self.images_per_s_per_gpu:.0f} images/s per GPU",
            f"  CPU: {self.cpu_cores_per_gpu:.1f} cores per GPU to decode and resize at that rate "
            f"({self.decode_rate:g} images/s per core: decode_rate, which `just bench-decode` measures)",
        ]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def extractor_memory(shapes: Mapping[str, tuple[Sequence[int], str]], *, shard_size: int, batch_size: int) -> int:
    """Bytes an extractor actor holds for its results (`shapes`: array id -> (sample shape, stored dtype)):
    one shard of every array, buffered whole before it is written (`pipeline.worker`), plus one batch of
    pooled float32 features. The models and the U-Net's activations come on top."""
    per_row = {a: int(np.prod(shape, dtype=np.int64)) for a, (shape, _) in shapes.items()}
    return sum(n * (shard_size * np.dtype(held_dtype(shapes[a][1])).itemsize + batch_size * 4)
               for a, n in per_row.items())


def _sum_parts(parts: Iterable[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for count, cost in parts:
        for name, value in cost.items():
            totals[name] = totals.get(name, 0.0) + count * value
    return totals


def _bytes(config: ExtractConfig, work: Sequence[ShardWork], *, shapes: Mapping[str, Sequence[int]],
           shard_size: int, n_shards: int, store: str | None) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """(bytes written in all, per array) by the shards of `work`: zarr shard files and tars."""
    spec, array_ids = config.spec, config.spec.array_ids()
    per_shard = array_shard_bytes(spec, shapes, shard_size)
    npy = {i: npy_size(s, data_type(d))
           for a in array_ids for i, s, d in stored_parts(a, shapes[a], spec.stored_dtype(a))}
    tars = sum(tar_shard_size(w.keys, rows=w.rows, shard=w.shard, npy_sizes=npy, store=store or _UNKNOWN_STORE)
               for w in work) if config.run.write_webdataset else 0
    zarr_written = {a: per_shard[a] * sum(a in w.arrays for w in work) for a in array_ids}
    total = {"zarr": sum(zarr_written.values()), "webdataset": tars}
    total["total"] = total["zarr"] + total["webdataset"]
    total["store_when_complete"] = n_shards * sum(per_shard.values())  # zarr only; tars as written
    return total, {a: {"per_image": per_shard[a] // shard_size, "zarr": zarr_written[a]} for a in array_ids}


def plan_extract(config: ExtractConfig, *, budget: ComputeBudget) -> ExtractPlan:
    """The plan of `just extract` for `config`; raises the `UserError`s the run itself would raise first."""
    spec, run = config.spec, config.run
    model_dir, reference = architecture_dir(spec.model)
    spec.kind.check_model(spec, model_dir)
    json_paths, image_root = resolve_data(run)
    manifest = build_manifest(json_paths, image_root=image_root, prompt_sources=spec.prompt_sources)
    found = pending(config, manifest, known_store=not reference)
    meta, shard_size, schedule = found.meta, found.shard_size, found.schedule
    usable = set(manifest.keys)
    work = [ShardWork(t.shard, range(t.shard * shard_size, (t.shard + 1) * shard_size),
                      tuple(k if k in usable else None for k in t.keys), schedule.computes[t.shard], t.reuse_latents)
            for t in schedule.tasks]
    existing = len(meta.plans) if meta is not None else 0
    store = meta.fingerprint.short if meta is not None else (None if reference else fingerprint_for(spec).short)
    bytes_, per_array = _bytes(config, work, shapes=spec.kind.sample_shapes(spec, model_dir), shard_size=shard_size,
                               n_shards=max([existing, *(w.shard + 1 for w in work)]), store=store)

    fresh = spec.kind.image_gflop(spec, model_dir)
    per_part = _sum_parts((w.images, spec.kind.image_gflop(spec, model_dir, array_ids=w.arrays,
                                                           encode=not w.reuse_latents)) for w in work)
    total, per_image = sum(per_part.values()), sum(fresh.values())
    images_per_s = budget.gflop_per_s / per_image if per_image else math.inf
    notes = [f"refused: {manifest.refusals()}; {REFUSED_HINT}"] if manifest.refused else []
    if reference:
        notes.append(f"{spec.model} is not in the local Hugging Face cache: priced on its reference architecture "
                     "(stages.flops.REFERENCE_MODELS); its store is unknown until the weights are there, so every "
                     "usable image counts as new, and `extract` itself needs the model downloaded")
    return ExtractPlan(
        store=str(as_location(run.cache_root) / store) if store else None, shard_size=shard_size,
        images={"new": sum(w.images for w in work), "reusing_latents": sum(w.images for w in work if w.reuse_latents),
                "cached": schedule.reused_images, "failing_checks": len(manifest.missing) + len(manifest.refused),
                "missing": len(manifest.missing), "refused": len(manifest.refused),
                "failed_before": len(schedule.recorded_failures), "text_only_samples": manifest.n_text_only,
                "refused_by_cause": {cause: len(keys) for cause, keys in manifest.refused_by_cause.items()}},
        shards={"to_compute": len(work), "new": sum(w.shard >= existing for w in work), "complete": schedule.complete,
                "other_data": schedule.foreign_shards},
        bytes_per_array=per_array, bytes=bytes_, gflop_per_image=fresh,
        gflop={"per_new_image": per_image, "total": total, **{f"total_{k}": v for k, v in per_part.items()}},
        budget=budget.as_dict(), gpu_hours=budget.gpu_hours(total), images_per_s_per_gpu=images_per_s,
        decode_rate=run.decode_rate, cpu_cores_per_gpu=images_per_s / run.decode_rate,
        notes=notes)


def write_plan(plan: ExtractPlan, path: str | Path) -> Path:
    """The plan as JSON at `path` (with the time it was made)."""
    path = as_location(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **plan.as_dict()}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path
