"""Which shards a run computes, decided on a snapshot of its store's records: the one planning that the
run (`pipeline.driver.plan_run`, after its repairs and `add_keys`) and `--dry-run` (`pipeline.plan`, on
the records projected as the run would leave them, nothing written) both call.

A shard belongs to this run when all its keys are in this run's data (usable, or missing/refused now:
planned by an earlier run); only those are computed and counted, the others are left to a run with their
data. A shard of this run is computed again whole when an image it was computed from changed since
(DESIGN §8: a changed image is a miss) or when its recorded failures are tried again (`retry_failed`,
other decode limits): such stale shards are withdrawn first. Stored latents (of a backbone whose registry
entry `has_latents`) are reused when every key of the shard is usable (its prompts are known).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.config import ExtractConfig, RunConfig
from pipeline.manifest import Manifest
from pipeline.rows import ShardTask
from stages.cache_spec import LATENTS, CacheSpec, fingerprint_for
from stages.config import ConfigError
from stages.image_files import changed_keys
from stages.preprocess import ImageSpec
from stages.store import DEFAULT_SHARD_SIZE, CacheStore, StoreMeta
from stages.store.layout import ShardPlan, new_shard_plans
from stages.store.meta import is_store
from stages.store.objects import as_location
from stages.store.records import ShardRecords
from stages.store.repair import cheap_problems

__all__ = ["ShardSchedule", "Plan", "Pending", "schedule_shards", "pending"]


@dataclass(frozen=True)
class ShardSchedule:
    """The shards of this run left to compute (`tasks`, with the arrays each computes) and the counts of
    the rest: keys planned, complete shards, their valid images and recorded failures, other data's
    missing shards; and the stale shards withdrawn first (key -> shard of a changed image, shard -> why
    its failures are tried again)."""

    tasks: tuple[ShardTask, ...]
    computes: Mapping[int, tuple[str, ...]]  # shard -> the arrays its task computes
    shards: tuple[int, ...]  # the shards of this run's data: every key of theirs is in it
    planned: int  # keys in shards of this run's data only (shards shared with other data are not counted)
    complete: int  # shards of this run's data that are complete
    reused_images: int  # valid keys of those shards
    recorded_failures: tuple[dict[str, str], ...]  # failures recorded by those shards (not re-reported)
    foreign_shards: int  # missing shards of keys outside this run's data (left for a run with that data)
    changed_images: Mapping[str, int]
    retried: Mapping[int, str]

    @property
    def stale(self) -> set[int]:
        """The shards the run withdraws before it computes them again."""
        return {*self.changed_images.values(), *self.retried}


@dataclass(frozen=True)
class Plan:
    """A store ready to be filled: its arrays exist, its keys have rows, `schedule` says what is left."""

    store: CacheStore
    manifest: Manifest
    array_ids: tuple[str, ...]
    shapes: dict[str, tuple[tuple[int, ...], str]]
    image_spec: ImageSpec
    schedule: ShardSchedule
    errors_file: Path  # this data set's errors file in the store
    created: tuple[str, ...] = ()  # arrays this run created (dropped again if it fails before writing them)
    repairs: tuple[str, ...] = ()  # what the cheap checks of the existing store found and repaired

    @property
    def tasks(self) -> tuple[ShardTask, ...]:
        return self.schedule.tasks


def _retry_reason(records: ShardRecords, plan: ShardPlan, usable: set[str], run: RunConfig) -> str | None:
    """Why the failures recorded in complete shard `plan` are tried again, or None: `retry_failed`, or
    decode limits (`max_pixels`) other than this run's, which decide which images fail."""
    recorded = [r[plan.index] for r in records.records.values() if plan.index in r]
    failed = {k for record in recorded for k in record.failed if k in usable}
    if not failed:
        return None
    if run.retry_failed:
        return "retry_failed"
    other = next((r.decode_limits for r in recorded if r.failed and r.decode_limits
                  and r.decode_limits != run.decode_limits), None)
    return None if other is None else f"decoded with {other}, this run with {dict(run.decode_limits)}"


def _stale(records: ShardRecords, plans: Sequence[ShardPlan], manifest: Manifest,
           run: RunConfig) -> tuple[dict[str, int], dict[int, str]]:
    """(key -> shard of each image whose file no longer has the bytes its values were computed from,
    shard -> reason of the shards whose recorded failures are tried again) among `plans`."""
    usable, changed, retried = set(manifest.keys), {}, {}
    for plan in plans:
        keys = changed_keys(manifest.image_root, [k for k in plan.keys if k in usable],
                            records.image_stamps(plan.index))
        changed.update((k, plan.index) for k in keys)
        if not keys and (reason := _retry_reason(records, plan, usable, run)) is not None:
            retried[plan.index] = reason
    return changed, retried


def _task(plan: ShardPlan, *, records: ShardRecords, manifest: Manifest, has_latents: bool,
          usable: set[str]) -> ShardTask:
    """A missing shard's task. Keys missing or refused now are decoded, so that they fail with their reason."""
    prompts = {source: tuple(texts.get(k) for k in plan.keys) for source, texts in manifest.prompts.items()}
    reuse = (has_latents and records.is_complete(LATENTS, plan.index)
             and all(k is None or k in usable for k in plan.keys))
    return ShardTask(shard=plan.index, keys=tuple(plan.keys), prompts=prompts, reuse_latents=reuse)


def schedule_shards(records: ShardRecords, manifest: Manifest, *, spec: CacheSpec, run: RunConfig) -> ShardSchedule:
    """What a run of `spec` over `manifest` computes in a store holding `records` (module docstring)."""
    array_ids = spec.array_ids()
    ours = {*manifest.keys, *manifest.missing, *manifest.refused}
    mine = [p for p in records.plans if all(k is None or k in ours for k in p.keys)]
    changed, retried = _stale(records, mine, manifest, run)
    stale = {*changed.values(), *retried}
    if stale:  # as `CacheStore.withdraw_shard` leaves them
        records = records.projected(withdrawn=[(a, s) for a in records.records for s in stale])
    missing = set(records.missing_shards(array_ids))
    usable = set(manifest.keys)
    tasks = [_task(p, records=records, manifest=manifest, has_latents=spec.kind.has_latents, usable=usable)
             for p in mine if p.index in missing]
    computes = {t.shard: tuple(a for a in array_ids if not (t.reuse_latents and records.is_complete(a, t.shard)))
                for t in tasks}  # reused latents: what is not stored yet (`ShardProcessor.compute`); else all
    reported = {*manifest.missing, *manifest.refused}  # already in the manifest's problems
    failures, reused = [], 0
    for plan in (p for p in mine if p.index not in missing):
        failures += [{"key": k, "kind": "failed", "reason": r}
                     for k, r in sorted(records.failed(plan.index, array_ids).items()) if k not in reported]
        reused += len(records.valid_keys(plan, array_ids))
    return ShardSchedule(tasks=tuple(tasks), computes=computes, shards=tuple(p.index for p in mine),
                         planned=sum(k is not None for p in mine for k in p.keys), complete=len(mine) - len(tasks), reused_images=reused, recorded_failures=tuple(failures),
                         foreign_shards=len(missing) - len(tasks), changed_images=changed, retried=retried)


@dataclass(frozen=True)
class Pending:
    """What a run would find and do, read without writing: the store (None: not created yet, or unknown
    for a model priced on its reference architecture), its shard size and the schedule."""

    meta: StoreMeta | None
    shard_size: int
    schedule: ShardSchedule


def _existing_meta(config: ExtractConfig) -> StoreMeta | None:
    """The store `config` would write into, read-only; None when it does not exist."""
    fingerprint = fingerprint_for(config.spec)
    path = as_location(config.run.cache_root) / fingerprint.short
    if not is_store(path):
        return None
    meta = StoreMeta.load(path, expect=fingerprint)
    if config.run.shard_size is not None and config.run.shard_size != meta.shard_size:
        raise ConfigError(f"store {path} has shard_size {meta.shard_size}, not {config.run.shard_size}; "
                          "shard size is fixed when a store is created")
    return meta


def _withdrawn(meta: StoreMeta, array_ids: Sequence[str]) -> set[tuple[str, int]]:
    """(array, shard) records `extract`'s repairs may withdraw after its cheap checks of the store (a
    damaged shard or index withdraws the shard whole)."""
    out: set[tuple[str, int]] = set()
    for problem in cheap_problems(meta, array_ids):
        if problem.fix == "record":
            out.add((problem.array_id, problem.shard))
        elif problem.fix in ("shard", "index") and problem.shard is not None:
            out.update((a, problem.shard) for a in meta.records)
    return out


def pending(config: ExtractConfig, manifest: Manifest, *, known_store: bool = True) -> Pending:
    """The schedule `plan_run` would make for `config`, on the store's records as its repairs and
    `add_keys` would leave them; nothing is written. `known_store=False`: the store cannot be found (no
    weights to hash), every usable image is new."""
    meta = _existing_meta(config) if known_store else None
    shard_size = meta.shard_size if meta is not None else config.run.shard_size or DEFAULT_SHARD_SIZE
    base = meta if meta is not None else ShardRecords([], {})
    withdrawn = _withdrawn(meta, config.spec.array_ids()) if meta is not None else set()
    records = base.projected(new_plans=new_shard_plans(base.plans, manifest.keys, shard_size=shard_size),
                             withdrawn=withdrawn)
    return Pending(meta=meta, shard_size=shard_size,
                   schedule=schedule_shards(records, manifest, spec=config.spec, run=config.run))
