"""Running a plan's shard tasks with the config's `runner`: the Ray Data job (`ray`, `pipeline.job`) or
the same work units in this process, one shard after another (`sequential`, `pipeline.sequential`). Both
feed one `on_stats` path: the progress bar, the run summary and the errors file (`pipeline.progress`).
"""
from __future__ import annotations

from typing import Callable, Sequence

from pipeline.config import ExtractConfig
from pipeline.errors import ExtractionError, WorkerError, logged_failure, reported
from pipeline.progress import ErrorLog, Progress, Summary
from pipeline.rows import ShardStats, ShardTask
from pipeline.sequential import run_sequential
from pipeline.shards import Plan
from pipeline.worker import WorkerBuilder
from stages.console import status

__all__ = ["worker_builder", "run_tasks", "run_in_process"]


def worker_builder(config: ExtractConfig, plan: Plan) -> WorkerBuilder:
    """What each extractor (a Ray actor, or the sequential runner's one) builds its `ShardProcessor` from."""
    run = config.run
    return WorkerBuilder(spec=config.spec, store_path=str(plan.store.path), fingerprint=plan.store.fingerprint,
                         shapes=plan.shapes, batch_size=run.batch_size, device=run.device,
                         precision=run.precision, write_webdataset=run.write_webdataset,
                         threads=max(1, int(run.cpus_per_actor)), decode_limits=run.decode_limits)


def run_tasks(config: ExtractConfig, plan: Plan, summary: Summary, log: ErrorLog, *, show_progress: bool) -> None:
    """Compute `plan.tasks` with `config.run.runner`, feeding the progress bar and `summary`. After a Ctrl-C
    the shards completed whose stats never reached the driver are counted from their records."""
    run, ray_job = config.run, config.run.runner == "ray"
    say = (lambda text: status("extract", text)) if show_progress else (lambda text: None)
    images = sum(k is not None for task in plan.tasks for k in task.keys)
    say(f"{images} images in {len(plan.tasks)} shards to compute into {plan.store.path}")
    started = False
    if ray_job:
        from pipeline import job  # imports Ray: only when there is work for it

        if run.ray_address is None:  # an embedded Ray's CPUs are known before it starts: check them first
            job.check_embedded_budget(run, n_tasks=len(plan.tasks))
        say("starting Ray …" if run.ray_address is None else f"connecting to the Ray cluster at {run.ray_address} …")
        started, summary.ray_start_s = job.start_ray(run)
    extractors = f"{min(run.num_actors, len(plan.tasks))} extractor actor(s)" if ray_job else "this process"
    say(f"loading {config.spec.model} in {extractors}; the bar moves as shards complete …")
    progress = Progress(summary, log, total=images, enabled=show_progress)
    reported: set[int] = set()

    def on_stats(stats: ShardStats) -> None:
        reported.add(stats.shard)
        progress.update(stats)

    interrupted = False
    try:
        if ray_job:
            _ray_attempts(config, plan, summary, on_stats, reported=reported, restart=started)
        else:
            run_in_process(config, plan, on_stats=on_stats)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        progress.close()
        if started:
            _shutdown_ray()
        if interrupted:  # the summary counts the shards completed whose stats never reached the driver, from
            _left_after_loss(plan, plan.tasks, reported, on_stats)  # their records (after the shutdown: all written)


def run_in_process(config: ExtractConfig, plan: Plan, *,
                   on_stats: Callable[[ShardStats], None] = lambda stats: None) -> None:
    """`plan.tasks` by the sequential runner: one processor built from `worker_builder`, the shards in
    order. A worker's failure is one line and a log file in the store, as in the Ray job."""
    if not plan.tasks:
        return
    try:
        with reported():
            processor = worker_builder(config, plan).build()
        run_sequential(plan.tasks, processor=processor, image_root=str(plan.manifest.image_root),
                       image_spec=plan.image_spec, on_stats=on_stats)
    except WorkerError as exc:
        raise logged_failure(exc, exc, log_dir=plan.store.path / "logs") from exc


def _ray_attempts(config: ExtractConfig, plan: Plan, summary: Summary, on_stats: Callable[[ShardStats], None], *,
                  reported: set[int], restart: bool) -> None:
    """The Ray job over `plan.tasks`. When the cluster loses an actor or a node, the shards not yet complete
    run again on the nodes alive: the completed ones stay, and a shard's values do not depend on where it
    ran. `retries` bounds the attempts in a row that complete no shard: one lost node can cost two (Ray may
    still place the next actors on it until it is declared dead), and a loss after progress starts the
    count again. `restart`: Ray was started here, and is restarted after a loss (a Ray this process did not
    start is left alone: its lost pool's actors may linger)."""
    from pipeline import job

    run, tasks, fruitless, retry = config.run, plan.tasks, 0, 0
    while True:
        try:
            job.run_shards(tasks, builder=worker_builder(config, plan), run=run, on_stats=on_stats,
                           image_root=str(plan.manifest.image_root), image_spec=plan.image_spec, shrink=retry > 0)
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
        if restart:
            job.restart_ray(run)


def _shutdown_ray() -> None:
    import ray

    try:
        ray.shutdown()
    except KeyboardInterrupt:  # the work is over: a Ctrl-C now changes nothing (atexit retries)
        pass


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
