"""The sequential runner (`runner: sequential`): the Ray job's two units of work called in this process,
one shard after another — `decode_shard`, then `ShardProcessor.process` of one processor built from the
same `WorkerBuilder` an actor gets (`pipeline.runner.run_in_process`). No Ray is imported; what it writes
is what the Ray job writes (a shard's values do not depend on where it ran). Tests, benchmarks and
machines without Ray use it.
"""
from __future__ import annotations

from typing import Callable, Sequence

from pipeline.errors import reported
from pipeline.rows import ShardStats, ShardTask
from pipeline.worker import ShardProcessor, decode_shard
from stages.preprocess import ImageSpec

__all__ = ["run_sequential"]


def run_sequential(tasks: Sequence[ShardTask], *, processor: ShardProcessor, image_root: str, image_spec: ImageSpec,
                   on_stats: Callable[[ShardStats], None]) -> None:
    """Compute and write every shard of `tasks` in order with `processor`, calling `on_stats` with each
    shard's stats (as `pipeline.job.run_shards` does). A worker's exception leaves as the `WorkerError`
    an actor raises."""
    for task in tasks:
        with reported(shard=task.shard):
            stats = processor.process(decode_shard(task, image_root=image_root, image_spec=image_spec))
        on_stats(stats)
