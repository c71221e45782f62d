"""`run_extract(config)`: manifest -> fingerprint -> store plan -> the runner for the missing shards.

Everything up to the runner is Ray-free, so a cache hit (every planned shard complete for every array) is
answered in seconds without starting Ray. What is computed is decided by `pipeline.shards`, which the dry
run (`pipeline.plan`) calls too; how it is run by `pipeline.runner` (`runner: ray|sequential`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from pipeline.config import ExtractConfig, check_setup, resolve_data
from pipeline.manifest import Manifest, build_manifest
from pipeline.progress import ErrorLog, Summary
from pipeline.runner import run_tasks
from pipeline.shards import Plan, pending, schedule_shards
from stages.cache_spec import array_shapes_for, fingerprint_for, image_spec_for, spec_summary
from stages.config import ConfigError
from stages.locations import is_sample_data
from stages.store import CacheStore, StoreMeta
from stages.store.repair import cheap_problems, repair
from stages.store.sources import DataSource, data_set_id, record_source

__all__ = ["errors_file_name", "plan_run", "run_extract", "nothing_to_compute", "check_before_writing",
           "drop_unwritten", "MAX_EXTRACTOR_MEMORY"]

MAX_EXTRACTOR_MEMORY = 64 << 30  # results one actor may buffer (a real run: ~1 GiB per 256-image shard)


def errors_file_name(json_paths: Sequence[Path], image_root: Path) -> str:
    """`errors-<data set id>.jsonl` (`stages.store.sources.data_set_id`): each data set filling a store keeps
    its own errors file, which its next run rewrites."""
    return f"errors-{data_set_id(json_paths, image_root)}.jsonl"


def _data_source(config: ExtractConfig, shards: Sequence[int]) -> DataSource:
    """The data as `config` names it, with its YAML (paths absolute: the command works from anywhere)."""
    run, yaml = config.run, str(config.path) if config.path else None
    if any(is_sample_data(d) for d in run.data):  # a bundled-sample name stands alone (`resolve_data`)
        return DataSource(data=tuple(run.data), image_root=None, shards=tuple(shards), config=yaml)
    return DataSource(data=tuple(str(Path(p).resolve()) for p in run.data),
                      image_root=str(Path(run.image_root).resolve()), shards=tuple(shards), config=yaml)


def _open_store(config: ExtractConfig, manifest: Manifest) -> tuple[CacheStore, list[str]]:
    """The store with this run's keys planned, and what was repaired first: the cheap checks of
    `stages.store.repair` on the shards of the arrays this run needs (a damaged shard is computed
    again, a damaged index rewritten from the store or from this run's keys)."""
    spec, run = config.spec, config.run
    if not manifest.keys:
        problems = [f"{len(manifest.missing)} images missing"]
        if manifest.missing:
            problems[0] += f" (e.g. {next(iter(manifest.missing.values()))})"
        if manifest.refused:
            first = manifest.refused[next(iter(manifest.refused_by_cause.values()))[0]]
            problems.append(f"{len(manifest.refused)} refused: {manifest.refusals()}; {first}")
        raise ConfigError(f"no images to extract under image_root {manifest.image_root}: the data has "
                          f"{manifest.n_samples} samples ({manifest.n_text_only} text-only), {'; '.join(problems)}")
    attrs = {"model_ids": {"model": spec.model, "encoder": spec.encoder}, "cache_spec": spec_summary(spec)}
    store = CacheStore.open_or_create(run.cache_root, fingerprint=fingerprint_for(spec),
                                      shard_size=run.shard_size, attrs=attrs)
    problems = cheap_problems(store.meta, spec.array_ids())  # just loaded by open_or_create
    repairs = repair(store, problems, keys=manifest.keys) if problems else []
    store.add_keys(manifest.keys)
    return store, repairs


def _manifest(config: ExtractConfig) -> Manifest:
    json_paths, image_root = resolve_data(config.run)
    return build_manifest(json_paths, image_root=image_root, prompt_sources=config.spec.prompt_sources)


def plan_run(config: ExtractConfig, *, manifest: Manifest | None = None) -> Plan:
    """Build the manifest (unless given), open (or create) the store, repair what its cheap checks find,
    plan rows for the keys, ensure the arrays, then schedule the missing shards (`pipeline.shards`) and
    withdraw the stale ones it names."""
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
    schedule = schedule_shards(meta, manifest, spec=spec, run=run)
    record_source(meta.paths, data_set_id(json_paths, image_root), _data_source(config, schedule.shards))
    for shard in sorted(schedule.stale):
        store.withdraw_shard(shard)
    if schedule.stale:
        store.refresh()
    return Plan(store=store, manifest=manifest, array_ids=tuple(array_ids), schedule=schedule,
                shapes={a: (meta.infos[a].sample_shape, meta.infos[a].stored_dtype) for a in array_ids},
                image_spec=image_spec_for(spec, max_pixels=run.max_pixels),
                errors_file=store.path / errors_file_name(json_paths, image_root), created=tuple(created),
                repairs=tuple(repairs))


def _summary(plan: Plan, log: ErrorLog) -> Summary:
    """The summary of a run of `plan` before any shard is computed: counts and notes of what was found."""
    schedule, manifest = plan.schedule, plan.manifest
    summary = Summary(store=plan.store.path, errors_file=log.path, reused=schedule.reused_images,
                      planned=schedule.planned, refused=len(manifest.refused), missing=len(manifest.missing),
                      failed_before=len(schedule.recorded_failures),
                      refused_by_cause={cause: len(keys) for cause, keys in manifest.refused_by_cause.items()})
    summary.notes += [f"repaired: {line}" for line in plan.repairs]
    if schedule.changed_images:
        first = next(iter(schedule.changed_images))
        summary.notes.append(f"{len(schedule.changed_images)} images changed since they were extracted (e.g. "
                             f"{first}): their {len(set(schedule.changed_images.values()))} shards are computed again")
    if schedule.retried:
        summary.notes.append(f"{len(schedule.retried)} shards with recorded failures are computed again "
                             f"({next(iter(schedule.retried.values()))})")
    if schedule.foreign_shards:
        summary.notes.append(f"{schedule.foreign_shards} incomplete shards hold images of other data files; "
                             "run with those files (and their image_root) to complete them")
    return summary


def run_extract(config: ExtractConfig, *, show_progress: bool = True) -> Summary:
    """Fill the store for `config`; returns the summary (also for a cache hit, which starts no Ray, and
    for a run stopped by Ctrl-C: `summary.interrupted`, the completed shards counted). Every check of
    what the user typed comes before the store is created or changed (`check_setup`, the manifest,
    `check_before_writing`)."""
    check_setup(config)
    manifest = _manifest(config)
    check_before_writing(config, manifest)
    plan = plan_run(config, manifest=manifest)
    log = ErrorLog(plan.errors_file)
    log.reset([*plan.manifest.problems(), *plan.schedule.recorded_failures])
    summary = _summary(plan, log)
    if not plan.tasks:
        summary.notes.append(f"cache hit: all {len(plan.array_ids)} arrays are complete for "
                             f"{summary.reused} images in {plan.store.path}; nothing to compute")
        summary.notes += [log.error] if log.error is not None else []
        return summary
    try:
        run_tasks(config, plan, summary, log, show_progress=show_progress)
    except BaseException as exc:
        drop_unwritten(plan)
        if not isinstance(exc, KeyboardInterrupt):
            raise
        summary.interrupted = True
    finally:
        if log.error is not None:
            summary.notes.append(log.error)
    return summary


def nothing_to_compute(config: ExtractConfig) -> bool:
    """Whether a run of `config` would be a cache hit (its own schedule, `pipeline.shards.pending`, holds no
    shard); nothing is written, no Ray is started, no weights are loaded (their files are hashed)."""
    return not pending(config, _manifest(config)).schedule.tasks


def check_before_writing(config: ExtractConfig, manifest: Manifest) -> None:
    """The checks that need the plan, made before anything is written (STYLE: validate what the user typed
    before any store directory, process or actor exists). The store is read as `--dry-run` reads it
    (`pipeline.shards.pending`). With shards to compute: what an extractor holds in memory (grid,
    features, shard_size: `grid=100000` is terabytes), and the Ray that would run them (an embedded Ray's
    CPUs, a cluster's address). A cache hit needs neither, and starts no Ray; nor does `runner=sequential`."""
    run = config.run
    found = pending(config, manifest)
    if not found.schedule.tasks:
        return
    actors = min(run.num_actors, len(found.schedule.tasks))
    _check_extractor_memory(config, found.meta, shard_size=found.shard_size, actors=actors)
    if run.runner == "sequential":
        return
    from pipeline import job  # imports Ray (not started)

    if run.ray_address is None:
        job.check_embedded_budget(run, n_tasks=len(found.schedule.tasks))
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
        shapes = {a: (meta.infos[a].sample_shape, meta.infos[a].stored_dtype) for a in array_ids}
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
