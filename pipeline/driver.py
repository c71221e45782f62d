"""`run_extract(config)`: manifest -> fingerprint -> store plan -> (Ray job for the missing shards).

Everything up to the Ray job is Ray-free, so a cache hit (every planned shard complete for every
array) is answered in seconds without starting Ray.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from pipeline.config import ExtractConfig, RunConfig, check_setup, resolve_data
from pipeline.errors import ExtractionError
from pipeline.manifest import Manifest, build_manifest
from pipeline.progress import ErrorLog, Progress, Summary
from pipeline.rows import ShardStats, ShardTask
from pipeline.worker import WorkerBuilder
from stages.cache_spec import (LATENTS, array_shapes_for, fingerprint_for, image_spec_for,
                               spec_summary)
from stages.image_files import changed_keys
from stages.preprocess import ImageSpec
from stages.config import ConfigError
from stages.store import CacheStore, StoreMeta
from stages.store.repair import cheap_problems, repair
from stages.store.layout import ShardPlan

__all__ = ["Plan", "errors_file_name", "plan_run", "worker_builder", "run_extract", "check_before_writing",
           "drop_unwritten", "MAX_EXTRACTOR_MEMORY"]

MAX_EXTRACTOR_MEMORY = 64 << 30  # results one actor may buffer (a real run: ~1 GiB per 256-image shard)


@dataclass(frozen=True)
class Plan:
    """A store ready to be filled: its arrays exist, its keys have rows, `tasks` are the missing shards."""

    store: CacheStore
    manifest: Manifest
    array_ids: tuple[str, ...]
    shapes: dict[str, tuple[tuple[int, ...], str]]
    image_spec: ImageSpec
    tasks: tuple[ShardTask, ...]
    planned: int  # keys in shards of this run's data only (shards shared with other data are not counted)
    reused_images: int  # valid keys of those shards already complete
    recorded_failures: tuple[dict[str, str], ...]  # failures recorded by those shards (not re-reported)
    foreign_shards: int  # missing shards of keys outside this run's data (left for a run with that data)
    errors_file: Path  # this data set's errors file in the store
    created: tuple[str, ...] = ()  # arrays this run created (dropped again if it fails before writing them)
    repairs: tuple[str, ...] = ()  # what the cheap checks of the existing store found and repaired
    changed_images: Mapping[str, int] = field(default_factory=dict)  # key -> shard withdrawn: its file changed
    retried: Mapping[int, str] = field(default_factory=dict)  # shard -> why its recorded failures are tried again


def errors_file_name(json_paths: Sequence[Path], image_root: Path) -> str:
    """`errors-<12 hex>.jsonl`, hashed from the resolved data files and image root: each data set
    filling a store keeps its own errors file, which its next run rewrites."""
    data = json.dumps([sorted(str(p.resolve()) for p in json_paths), str(image_root.resolve())])
    return f"errors-{hashlib.sha256(data.encode()).hexdigest()[:12]}.jsonl"


def _open_store(config: ExtractConfig, manifest: Manifest) -> tuple[CacheStore, list[str]]:
    """The store with this run's keys planned, and what was repaired first: the cheap checks of
    `stages.store.repair` on the shards of the arrays this run needs (a damaged shard is computed
    again, a damaged index rewritten from the store or from this run's keys)."""
    spec, run = config.spec, config.run
    if not manifest.keys:
        raise ConfigError(f"no images to extract: the data has {manifest.n_samples} samples "
                          f"({manifest.n_text_only} text-only), {len(manifest.missing)} images missing and "
                          f"{len(manifest.refused)} refused under image_root {manifest.image_root}")
    attrs = {"model_ids": {"model": spec.model, "encoder": spec.encoder}, "cache_spec": spec_summary(spec)}
    store = CacheStore.open_or_create(run.cache_root, fingerprint=fingerprint_for(spec),
                                      shard_size=run.shard_size, attrs=attrs)
    problems = cheap_problems(store.meta, spec.array_ids())  # just loaded by open_or_create
    repairs = repair(store, problems, keys=manifest.keys) if problems else []
    store.add_keys(manifest.keys)
    return store, repairs


def _task(plan: ShardPlan, *, meta: StoreMeta, manifest: Manifest, has_latents: bool, usable: set[str]) -> ShardTask:
    """A missing shard's task. Keys missing or refused now are decoded, so they fail with their
    reason; stored latents (of a backbone that `has_latents`) are reused only when every key is `usable`
    (its prompts are known)."""
    prompts = {source: tuple(texts.get(k) for k in plan.keys) for source, texts in manifest.prompts.items()}
    reuse = (has_latents and meta.is_complete(LATENTS, plan.index)
             and all(k is None or k in usable for k in plan.keys))
    return ShardTask(shard=plan.index, keys=tuple(plan.keys), prompts=prompts, reuse_latents=reuse)


def _retry_reason(meta: StoreMeta, plan: ShardPlan, usable: set[str], run: RunConfig) -> str | None:
    """Why the failures recorded in complete shard `plan` are tried again, or None: `retry_failed`, or
    decode limits (`max_pixels`) other than this run's, which decide which images fail."""
    records = [r[plan.index] for r in meta.records.values() if plan.index in r]
    failed = {k for record in records for k in record.failed if k in usable}
    if not failed:
        return None
    if run.retry_failed:
        return "retry_failed"
    other = next((r.decode_limits for r in records if r.failed and r.decode_limits
                  and r.decode_limits != run.decode_limits), None)
    return None if other is None else f"decoded with {other}, this run with {dict(run.decode_limits)}"


def _withdraw_stale_shards(store: CacheStore, meta: StoreMeta, plans: Sequence[ShardPlan], manifest: Manifest,
                           run: RunConfig) -> tuple[dict[str, int], dict[int, str]]:
    """Withdraw every shard of `plans` holding a key whose image file no longer has the bytes its values
    were computed from (DESIGN §8: a changed image is a miss), or recorded failures to try again
    (`_retry_reason`). Returns (key -> shard of the changed images, shard -> reason of the retried)."""
    usable, changed, retried = set(manifest.keys), {}, {}
    for plan in plans:
        keys = changed_keys(manifest.image_root, [k for k in plan.keys if k in usable], meta.image_stamps(plan.index))
        changed.update((k, plan.index) for k in keys)
        if not keys and (reason := _retry_reason(meta, plan, usable, run)) is not None:
            retried[plan.index] = reason
        if keys or plan.index in retried:
            store.withdraw_shard(plan.index)
    return changed, retried


def _manifest(config: ExtractConfig) -> Manifest:
    json_paths, image_root = resolve_data(config.run)
    return build_manifest(json_paths, image_root=image_root, prompt_sources=config.spec.prompt_sources)


def plan_run(config: ExtractConfig, *, manifest: Manifest | None = None) -> Plan:
    """Build the manifest (unless given), open (or create) the store, plan rows, ensure arrays, list
    missing shards.

    A shard belongs to this run when all its keys are in this run's data (usable, or missing/refused
    now: planned by an earlier run); only those are computed and counted. Others are left to a run
    with their data."""
    spec, run = config.spec, config.run
    json_paths, image_root = resolve_data(run)
    manifest = _manifest(config) if manifest is None else manifest
    store, repairs = _open_store(config, manifest)
    array_ids = spec.array_ids()
    created = []
    if not set(array_ids) <= set(store.array_ids()):  # shapes need a meta forward: only for new arrays
        for array_id, (shape, dtype) in array_shapes_for(spec).items():
            if store.ensure_array(array_id, sample_shape=shape, dtype=dtype):
                created.append(array_id)
    meta = store.refresh()
    ours = {*manifest.keys, *manifest.missing, *manifest.refused}
    mine = [p for p in meta.plans if all(k is None or k in ours for k in p.keys)]
    changed, retried = _withdraw_stale_shards(store, meta, mine, manifest, run)
    if changed or retried:
        meta = store.refresh()
    shapes = {a: (meta.infos[a].sample_shape, meta.infos[a].dtype.name) for a in array_ids}
    missing = set(meta.missing_shards(array_ids))
    shards = meta.plans
    usable = set(manifest.keys)
    tasks = [_task(p, meta=meta, manifest=manifest, has_latents=spec.kind.has_latents, usable=usable)
             for p in mine if p.index in missing]
    reported = {*manifest.missing, *manifest.refused}  # already in the manifest's problems
    failures, reused = [], 0
    for plan in (p for p in mine if p.index not in missing):
        failed = meta.failed(plan.index, array_ids)
        failures += [{"key": k, "kind": "failed", "reason": r}
                     for k, r in sorted(failed.items()) if k not in reported]
        reused += len(meta.valid_keys(plan, array_ids))
    return Plan(store=store, manifest=manifest, array_ids=tuple(array_ids), shapes=shapes,
                image_spec=image_spec_for(spec, max_pixels=run.max_pixels), tasks=tuple(tasks),
                planned=sum(k is not None for p in mine for k in p.keys), reused_images=reused,
                recorded_failures=tuple(failures), errors_file=store.path / errors_file_name(json_paths, image_root),
                foreign_shards=sum(p.index in missing for p in shards) - len(tasks), created=tuple(created),
                repairs=tuple(repairs), changed_images=changed, retried=retried)


def worker_builder(config: ExtractConfig, plan: Plan) -> WorkerBuilder:
    """What each extractor actor builds its `ShardProcessor` from (also the Ray-free bare loop's)."""
    run = config.run
    return WorkerBuilder(spec=config.spec, store_path=str(plan.store.path), fingerprint=plan.store.fingerprint,
                         shapes=plan.shapes,
                         batch_size=run.batch_size, device=run.device, compute_dtype=run.compute_dtype,
                         write_webdataset=run.write_webdataset, threads=max(1, int(run.cpus_per_actor)),
                         decode_limits=run.decode_limits)


def run_extract(config: ExtractConfig, *, show_progress: bool = True) -> Summary:
    """Fill the store for `config`; returns the summary (also for a cache hit, which starts no Ray, and
    for a run stopped by Ctrl-C: `summary.interrupted`, the completed shards counted). Every check of
    what the user typed comes before the store is created or changed (`check_setup`, the manifest,
    `check_before_writing`)."""
    check_setup(config)
    manifest = _manifest(config)
    check_before_writing(config, manifest)
    plan = plan_run(config, manifest=manifest)
    run = config.run
    log = ErrorLog(plan.errors_file)
    log.reset([*plan.manifest.problems(), *plan.recorded_failures])
    summary = Summary(store=plan.store.path, errors_file=log.path, reused=plan.reused_images,
                      planned=plan.planned, refused=len(plan.manifest.refused), missing=len(plan.manifest.missing),
                      failed_before=len(plan.recorded_failures))
    summary.notes += [f"repaired: {line}" for line in plan.repairs]
    if plan.changed_images:
        first = next(iter(plan.changed_images))
        summary.notes.append(f"{len(plan.changed_images)} images changed since they were extracted (e.g. {first}): "
                             f"their {len(set(plan.changed_images.values()))} shards are computed again")
    if plan.retried:
        summary.notes.append(f"{len(plan.retried)} shards with recorded failures are computed again "
                             f"({next(iter(plan.retried.values()))})")
    if plan.foreign_shards:
        summary.notes.append(f"{plan.foreign_shards} incomplete shards hold images of other data files; "
                             "run with those files (and their image_root) to complete them")
    if not plan.tasks:
        summary.notes.append(f"cache hit: all {len(plan.array_ids)} arrays are complete for "
                             f"{summary.reused} images in {plan.store.path}; nothing to compute")
        summary.notes += [log.error] if log.error is not None else []
        return summary
    try:
        _run_job(config, plan, summary, log, show_progress=show_progress)
    except BaseException as exc:
        drop_unwritten(plan)
        if not isinstance(exc, KeyboardInterrupt):
            raise
        summary.interrupted = True
    finally:
        if log.error is not None:
            summary.notes.append(log.error)
    return summary


def check_before_writing(config: ExtractConfig, manifest: Manifest) -> None:
    """The checks that need the plan, made before anything is written (STYLE: validate what the user typed
    before any store directory, process or actor exists). The store is read as `--dry-run` reads it
    (`pipeline.plan.pending_work`). With shards to compute: what an extractor actor holds in memory (grid,
    features, shard_size: `grid=100000` is terabytes), and the Ray that would run them (an embedded Ray's
    CPUs, a cluster's address). A cache hit needs neither, and starts no Ray."""
    from pipeline.plan import pending_work

    run = config.run
    meta, shard_size, work = pending_work(config, manifest)
    if not work:
        return
    actors = min(run.num_actors, len(work))
    _check_extractor_memory(config, meta, shard_size=shard_size, actors=actors)
    from pipeline import job  # imports Ray (not started)

    if run.ray_address is None:
        job.check_embedded_budget(run, n_tasks=len(work))
    else:
        job.check_reachable(run.ray_address)


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**40:.1f} TiB" if nbytes >= 2**40 else f"{nbytes / 2**30:.1f} GiB"


def _check_extractor_memory(config: ExtractConfig, meta: StoreMeta | None, *, shard_size: int, actors: int) -> None:
    """Each extractor actor buffers a whole shard of every array (`pipeline.plan.extractor_memory`): that
    must stay under `MAX_EXTRACTOR_MEMORY`, and on an embedded Ray all actors under this machine's memory."""
    from pipeline.plan import extractor_memory

    spec, run = config.spec, config.run
    array_ids = spec.array_ids()
    if meta is not None and set(array_ids) <= set(meta.array_ids):
        shapes = {a: (meta.infos[a].sample_shape, meta.infos[a].dtype.name) for a in array_ids}
    else:  # a meta-device forward, as `plan_run` makes for new arrays
        shapes = array_shapes_for(spec)
    need = extractor_memory(shapes, shard_size=shard_size, batch_size=run.batch_size)
    limit, what = MAX_EXTRACTOR_MEMORY, f"the {_gib(MAX_EXTRACTOR_MEMORY)} an actor may take"
    try:
        machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every OS says
        machine = 0
    if run.ray_address is None and 0 < machine // actors < limit:
        limit, what = machine // actors, f"this machine's {_gib(machine)} of memory for {actors} actor(s)"
    if need > limit:
        raise ConfigError(f"grid={spec.grid}, {len(array_ids)} arrays and shard_size={shard_size} need "
                          f"{_gib(need)} per extractor actor (a whole shard of every array is buffered before it "
                          f"is written), more than {what}; lower grid (16 is the paper's), the features or "
                          "timesteps, or shard_size")


def drop_unwritten(plan: Plan) -> None:
    """Drop the arrays `plan` created that have no completed shard: a run that fails leaves the store
    as it found it (arrays with completed shards stay, and the next run resumes them)."""
    meta = plan.store.refresh()
    unwritten = [a for a in plan.created if not meta.records.get(a)]
    if unwritten:
        plan.store.drop_arrays(unwritten)


def _run_job(config: ExtractConfig, plan: Plan, summary: Summary, log: ErrorLog, *, show_progress: bool) -> None:
    """The Ray job over `plan.tasks`, feeding the progress bar and `summary`. When the cluster loses an
    actor or a node, the shards not yet complete run again on the nodes alive: the completed ones stay, and
    a shard's values do not depend on where it ran. `retries` bounds the attempts in a row that complete no
    shard: one lost node can cost two (Ray may still place the next actors on it until it is declared dead),
    and a loss after progress starts the count again."""
    from pipeline import job  # imports Ray: only when there is work

    run = config.run
    if run.ray_address is None:  # an embedded Ray's CPUs are known before it starts: check them first
        job.check_embedded_budget(run, n_tasks=len(plan.tasks))
    started, summary.ray_start_s = job.start_ray(run)
    total = sum(k is not None for task in plan.tasks for k in task.keys)
    progress = Progress(summary, log, total=total, enabled=show_progress)
    tasks, reported, interrupted = plan.tasks, set(), False

    def on_stats(stats: ShardStats) -> None:
        reported.add(stats.shard)
        progress.update(stats)

    try:
        fruitless, retry = 0, 0
        while True:
            try:
                job.run_shards(tasks, builder=worker_builder(config, plan), run=run, on_stats=on_stats,
                               image_root=str(plan.manifest.image_root), image_spec=plan.image_spec,
                               shrink=retry > 0)
                return
            except job.WorkersLost as exc:
                lost = str(exc)
            left = _left_after_loss(plan, tasks, reported, on_stats)
            fruitless, tasks, retry = (fruitless + 1 if len(left) == len(tasks) else 0), left, retry + 1
            if not tasks:
                return
            if fruitless > run.retries:
                raise ExtractionError(f"the Ray cluster lost workers {fruitless} times in a row without a shard "
                                      f"completing, the last time: {lost}; {len(tasks)} shards are left: run the "
                                      "same command to finish them (the completed shards are kept)")
            summary.notes.append(f"retry {retry}: {lost}; ran the {len(tasks)} shards left again")
            if started:  # (a Ray this process did not start is left alone: its lost pool's actors may linger)
                job.restart_ray(run)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        progress.close()
        if started:
            import ray

            try:
                ray.shutdown()
            except KeyboardInterrupt:  # the work is over: a Ctrl-C now changes nothing (atexit retries)
                pass
        if interrupted:  # the summary counts the shards completed whose stats never reached the driver, from
            _left_after_loss(plan, tasks, reported, on_stats)  # their records (after the shutdown: all written)


def _left_after_loss(plan: Plan, tasks: Sequence[ShardTask], reported: set[int],
                     on_stats: Callable[[ShardStats], None]) -> tuple[ShardTask, ...]:
    """The tasks whose shards an attempt that lost workers (or was stopped by Ctrl-C) left incomplete.
    Shards it completed whose stats never reached the driver are counted from their records (no timings)."""
    meta = plan.store.refresh()
    missing = set(meta.missing_shards(list(plan.array_ids)))
    for task in tasks:
        if task.shard not in missing and task.shard not in reported:
            on_stats(ShardStats(shard=task.shard, n_images=sum(k is not None for k in task.keys),
                                failed=meta.failed(task.shard, list(plan.array_ids)), bytes=0, batches=0,
                                decoded=0, encoded=0, seconds={}))
    return tuple(t for t in tasks if t.shard in missing)
