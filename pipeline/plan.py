"""`just extract --dry-run`: what a run would compute, write and cost, before anything is spent.

Nothing is written and neither Ray nor a model's weights are touched: the manifest is built and the
existing store (if any) is read exactly as `plan_run` reads it, and the shard planning of
`CacheStore.add_keys` (new keys from the next shard boundary, in sorted order) and of `plan_run` (a
shard whose latents are complete reuses them) is replayed on that snapshot. Compute is counted on the
meta device (`stages.flops`); a hub model not in the local cache is priced on its reference
architecture when `stages.flops.REFERENCE_MODELS` knows it (its store cannot be found without the
weights' hashes, so every usable image counts as new).

Bytes are those of the files a run writes: each zarr shard file (every row, padding included: one
sample's bytes plus its 4-byte crc32c, then the 16-byte-per-row index and its crc32c) and each
webdataset tar (512-byte headers, members padded to 512 bytes, 10 KiB records); the small JSON index
and completion records are left out. The decode rate that sizes the CPU side is measured by
`just bench-decode` (benchmarks/results/decode.json).
"""
from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pipeline.config import REPO, ExtractConfig, resolve_data
from pipeline.manifest import Manifest, build_manifest
from stages.cache_spec import LATENTS, CacheSpec, fingerprint_for
from stages.config import ConfigError
from stages.flops import ComputeBudget, architecture_dir, image_gflop
from stages.store import DEFAULT_SHARD_SIZE, StoreMeta, encode_key
from stages.store.repair import cheap_problems

__all__ = ["DECODE_RESULTS", "FALLBACK_DECODE_RATE", "DecodeRate", "ShardWork", "ExtractPlan", "plan_extract",
           "write_plan", "pending_work", "extractor_memory",
           "zarr_shard_bytes", "tar_shard_bytes", "load_decode_rate"]

DECODE_RESULTS = REPO / "benchmarks" / "results" / "decode.json"
# Used when `just bench-decode` has not run here: its result on the development machine (2-core x86 VM,
# 512 px, the bundled sample's photos of 0.13 MP on average, 2026-11-27)
FALLBACK_DECODE_RATE = 57.0
_TAR_BLOCK, _TAR_RECORD = 512, 20 * 512  # tarfile's block and record sizes
_DIGEST = "0" * 64  # a sha256 hex digest's length, in each sample's .json member
_UNKNOWN_STORE = "0" * 16


@dataclass(frozen=True)
class DecodeRate:
    """Images decoded and preprocessed per second on one CPU core, and where the number comes from."""

    images_per_s_per_core: float
    resolution: int
    source: str


def load_decode_rate(path: Path = DECODE_RESULTS) -> DecodeRate:
    """The rate `just bench-decode` measured, else `FALLBACK_DECODE_RATE` (stated as such)."""
    if path.is_file():
        result = json.loads(path.read_text(encoding="utf-8"))
        return DecodeRate(float(result["images_per_s_per_core"]), int(result["resolution"]), f"measured: {path}")
    return DecodeRate(FALLBACK_DECODE_RATE, 512, f"fallback (no {path}; run `just bench-decode` to measure this "
                                                   "machine): the development machine's rate")


def zarr_shard_bytes(sample_shape: Sequence[int], dtype: str, shard_size: int) -> int:
    """One shard file of an array: every row's bytes + crc32c, then the shard index + its crc32c."""
    sample = int(np.prod(sample_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return shard_size * (sample + 4) + shard_size * 16 + 4


def _npy_bytes(sample_shape: Sequence[int], dtype: str) -> int:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(tuple(sample_shape), dtype))
    return buffer.tell()


def _member_bytes(name: str, size: int) -> int:
    """A tar member: its header (plus a PAX header for names over 100 bytes or not ASCII) and its data
    padded to whole blocks."""
    pax = 2 * _TAR_BLOCK if len(name.encode()) > 100 or not name.isascii() else 0
    return pax + _TAR_BLOCK + -(-size // _TAR_BLOCK) * _TAR_BLOCK


def tar_shard_bytes(keys: Sequence[str | None], *, shard: int, shard_size: int, npy_bytes: Mapping[str, int],
                    store: str) -> int:
    """The webdataset tar of a shard whose valid keys are `keys` (None: padding or failed), holding one
    `.npy` member per array (`npy_bytes[array_id]` each) and a `.json` member per key."""
    total = 0
    for row, key in enumerate(keys):
        if key is None:
            continue
        stem = encode_key(key)
        meta = {"key": key, "row": shard * shard_size + row, "shard": shard, "store": store,
                "sha256": {f"{a}.npy": _DIGEST for a in npy_bytes}}
        total += sum(_member_bytes(f"{stem}.{a}.npy", size) for a, size in npy_bytes.items())
        total += _member_bytes(f"{stem}.json", len(json.dumps(meta, ensure_ascii=False).encode()))
    return -(-(total + 2 * _TAR_BLOCK) // _TAR_RECORD) * _TAR_RECORD


@dataclass(frozen=True)
class ShardWork:
    """One shard a run would compute: its keys (None: padding, or a key that fails the manifest checks
    now), the arrays computed and whether the stored latents are reused (no decode, no VAE)."""

    shard: int
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
    decode: dict[str, Any]
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
            f"store when complete: {gb(b['store_when_complete'])}",
        ]
        lines += [f"    {a}: {v['per_image']} B/image, {gb(v['zarr'])} written" for a, v in self.bytes_per_array.items()]
        parts = ", ".join(f"{k} {v:.1f}" for k, v in self.gflop_per_image.items())
        lines += [
            f"  compute: {g['per_new_image']:.1f} GFLOP per new image ({parts}); {g['total'] / 1e6:.3f} PFLOP in all",
            f"  at {self.budget['utilization']:.0%} of {self.budget['gpu']} ({self.budget['peak_tflops']:g} TFLOP/s "
            f"dense): {self.gpu_hours:.3g} GPU-hours, {self.images_per_s_per_gpu:.0f} images/s per GPU",
            f"  CPU: {self.cpu_cores_per_gpu:.1f} cores per GPU to decode and resize at that rate "
            f"({self.decode['images_per_s_per_core']:.1f} images/s per core at {self.decode['resolution']} px, "
            f"{self.decode['source']})",
        ]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def _existing_meta(config: ExtractConfig, spec: CacheSpec, reference: bool) -> StoreMeta | None:
    """The store this config would write into, read-only; None when it does not exist (or cannot be
    found: a reference architecture has no weights to hash)."""
    if reference:
        return None
    fingerprint = fingerprint_for(spec)
    path = Path(config.run.cache_root) / fingerprint.short
    if not path.exists():
        return None
    meta = StoreMeta.load(path, expect=fingerprint)
    if config.run.shard_size is not None and config.run.shard_size != meta.shard_size:
        raise ConfigError(f"store {path} has shard_size {meta.shard_size}, not {config.run.shard_size}; "
                          "shard size is fixed when a store is created")
    return meta


def _withdrawn(meta: StoreMeta, array_ids: Sequence[str]) -> set[tuple[str, int]]:
    """(array, shard) records `extract` would withdraw first after its cheap checks of the store."""
    out: set[tuple[str, int]] = set()
    for problem in cheap_problems(meta, array_ids):
        if problem.fix == "record":
            out.add((problem.array_id, problem.shard))
        elif problem.fix in ("shard", "index") and problem.shard is not None:
            out.update((a, problem.shard) for a in meta.records)
    return out


def _work(meta: StoreMeta | None, manifest: Manifest, array_ids: Sequence[str],
          shard_size: int) -> tuple[list[ShardWork], dict[str, int]]:
    """The shards a run would compute (existing incomplete ones of this data, then the new keys' shards)
    and the counts of the rest: complete shards, their valid and earlier-failed images, other data's."""
    plans = meta.plans if meta is not None else []
    withdrawn = _withdrawn(meta, array_ids) if meta is not None else set()

    def done(array_id: str, shard: int) -> bool:
        return meta is not None and meta.is_complete(array_id, shard) and (array_id, shard) not in withdrawn

    usable, ours = set(manifest.keys), {*manifest.keys, *manifest.missing, *manifest.refused}
    work, counts = [], {"complete": 0, "cached": 0, "failed_before": 0, "other_data": 0}
    for plan in plans:
        todo = [a for a in array_ids if not done(a, plan.index)]
        if not all(k is None or k in ours for k in plan.keys):
            counts["other_data"] += bool(todo)
        elif todo:
            reuse = LATENTS in array_ids and LATENTS not in todo and all(k is None or k in usable for k in plan.keys)
            work.append(ShardWork(plan.index, tuple(k if k in usable else None for k in plan.keys),
                                  tuple(todo if reuse else array_ids), reuse))
        else:
            counts["complete"] += 1
            counts["cached"] += len(meta.valid_keys(plan, array_ids))
            counts["failed_before"] += len(set(meta.failed(plan.index, array_ids)) - set(manifest.missing)
                                           - set(manifest.refused))
    planned = {k for plan in plans for k in plan.keys if k is not None}
    new = [k for k in manifest.keys if k not in planned]  # sorted, as `plan_run` adds them
    for offset in range(0, len(new), shard_size):
        keys = new[offset:offset + shard_size]
        work.append(ShardWork(len(plans) + offset // shard_size, tuple(keys) + (None,) * (shard_size - len(keys)),
                              tuple(array_ids), False))
    return work, counts


def pending_work(config: ExtractConfig, manifest: Manifest) -> tuple[StoreMeta | None, int, list[ShardWork]]:
    """The store `config` writes into (read-only; None when it does not exist yet), its shard size and the
    shards a run would compute: what `plan_extract` prices, and what `pipeline.driver` checks before the
    run writes anything."""
    meta = _existing_meta(config, config.spec, reference=False)
    shard_size = meta.shard_size if meta is not None else config.run.shard_size or DEFAULT_SHARD_SIZE
    return meta, shard_size, _work(meta, manifest, config.spec.array_ids(), shard_size)[0]


def extractor_memory(shapes: Mapping[str, tuple[Sequence[int], str]], *, shard_size: int, batch_size: int) -> int:
    """Bytes an extractor actor holds for its results (`shapes`: array id -> (sample shape, stored dtype)):
    one shard of every array, buffered whole before it is written (`pipeline.worker`), plus one batch of
    pooled float32 features. The models and the U-Net's activations come on top."""
    per_row = {a: int(np.prod(shape, dtype=np.int64)) for a, (shape, _) in shapes.items()}
    return sum(n * (shard_size * np.dtype(shapes[a][1]).itemsize + batch_size * 4) for a, n in per_row.items())


def _sum_parts(parts: Iterable[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for count, cost in parts:
        for name, value in cost.items():
            totals[name] = totals.get(name, 0.0) + count * value
    return totals


def plan_extract(config: ExtractConfig, *, budget: ComputeBudget, decode: DecodeRate | None = None) -> ExtractPlan:
    """The plan of `just extract` for `config`; raises the `UserError`s the run itself would raise first."""
    spec, run = config.spec, config.run
    model_dir, reference = architecture_dir(spec.model)
    spec.kind.check_model(spec, model_dir)
    json_paths, image_root = resolve_data(run)
    manifest = build_manifest(json_paths, image_root=image_root, prompt_sources=spec.prompt_sources)
    meta = _existing_meta(config, spec, reference)
    shard_size = meta.shard_size if meta is not None else run.shard_size or DEFAULT_SHARD_SIZE
    array_ids = spec.array_ids()
    shapes = spec.kind.sample_shapes(spec, model_dir)
    work, counts = _work(meta, manifest, array_ids, shard_size)
    existing = len(meta.plans) if meta is not None else 0

    per_shard = {a: zarr_shard_bytes(shapes[a], spec.stored_dtype(a), shard_size) for a in array_ids}
    npy = {a: _npy_bytes(shapes[a], spec.stored_dtype(a)) for a in array_ids}
    store = meta.fingerprint.short if meta is not None else (None if reference else fingerprint_for(spec).short)
    tars = sum(tar_shard_bytes(w.keys, shard=w.shard, shard_size=shard_size, npy_bytes=npy,
                               store=store or _UNKNOWN_STORE) for w in work) if run.write_webdataset else 0
    zarr_written = {a: per_shard[a] * sum(a in w.arrays for w in work) for a in array_ids}
    n_shards = max([existing, *(w.shard + 1 for w in work)])
    bytes_ = {"zarr": sum(zarr_written.values()), "webdataset": tars}
    bytes_["total"] = bytes_["zarr"] + bytes_["webdataset"]
    bytes_["store_when_complete"] = n_shards * sum(per_shard.values())  # zarr only; tars as written

    fresh = image_gflop(spec, model_dir)
    costs = [(w.images, image_gflop(spec, model_dir, array_ids=w.arrays, encode=not w.reuse_latents)) for w in work]
    per_part = _sum_parts(costs)
    total = sum(per_part.values())
    per_image = sum(fresh.values())
    decode = decode or load_decode_rate()
    images_per_s = budget.gflop_per_s / per_image if per_image else math.inf
    new_images = sum(w.images for w in work)
    notes = []
    if reference:
        notes.append(f"{spec.model} is not in the local Hugging Face cache: priced on its reference architecture "
                     "(stages.flops.REFERENCE_MODELS); its store is unknown until the weights are there, so every "
                     "usable image counts as new, and `extract` itself needs the model downloaded")
    if decode.images_per_s_per_core <= 0:
        notes.append("no decode rate: run `just bench-decode` to size the CPU side")
    return ExtractPlan(
        store=str(Path(run.cache_root) / store) if store else None, shard_size=shard_size,
        images={"new": new_images, "reusing_latents": sum(w.images for w in work if w.reuse_latents),
                "cached": counts["cached"], "failing_checks": len(manifest.missing) + len(manifest.refused),
                "missing": len(manifest.missing), "refused": len(manifest.refused),
                "failed_before": counts["failed_before"], "text_only_samples": manifest.n_text_only},
        shards={"to_compute": len(work), "new": sum(w.shard >= existing for w in work),
                "complete": counts["complete"], "other_data": counts["other_data"]},
        bytes_per_array={a: {"per_image": per_shard[a] // shard_size, "zarr": zarr_written[a]} for a in array_ids},
        bytes=bytes_,
        gflop_per_image=fresh,
        gflop={"per_new_image": per_image, "total": total, **{f"total_{k}": v for k, v in per_part.items()}},
        budget=budget.as_dict(), gpu_hours=budget.gpu_hours(total), images_per_s_per_gpu=images_per_s,
        decode=asdict(decode),
        cpu_cores_per_gpu=images_per_s / decode.images_per_s_per_core if decode.images_per_s_per_core > 0 else math.nan,
        notes=notes)


def write_plan(plan: ExtractPlan, path: str | Path) -> Path:
    """The plan as JSON at `path` (with the time it was made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **plan.as_dict()}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path
