"""`retries` bounds the attempts in a row that lose workers without completing a shard: a loss after
progress starts the count again, so one lost node (which can cost two attempts) never ends a run."""
from __future__ import annotations

import pytest

import pipeline.driver as driver
from pipeline import job
from pipeline.driver import plan_run
from pipeline.errors import ExtractionError
from pipeline.runner import worker_builder
from pipeline.sequential import run_sequential
from tests.pipeline.test_repair import config, data  # noqa: F401  (data: the module's fixture)


def _cluster(monkeypatch, cfg, outcomes):
    """A stand-in for the Ray job: each attempt computes the number of shards `outcomes` gives it (in this
    process, by the sequential runner), then loses its workers, or (None) computes every shard left."""
    plan = plan_run(cfg)
    processor = worker_builder(cfg, plan).build()
    attempts = iter(outcomes)

    def run_shards(tasks, *, on_stats, image_root, image_spec, **_):
        computed = next(attempts)
        run_sequential(tasks[:computed], processor=processor, image_root=image_root, image_spec=image_spec,
                       on_stats=on_stats)
        if computed is not None:
            raise job.WorkersLost("ActorDiedError: The actor died because its node has died")

    monkeypatch.setattr(job, "start_ray", lambda run: (False, 0.0))
    monkeypatch.setattr(job, "check_embedded_budget", lambda run, n_tasks: None)
    monkeypatch.setattr(job, "run_shards", run_shards)
    monkeypatch.setattr(driver, "check_before_writing", lambda cfg, manifest: None)
    return plan


def test_a_loss_after_progress_starts_the_retry_count_again(data, tmp_path, monkeypatch):  # noqa: F811
    cfg = config(data, tmp_path / "cache", shard_size=2, retries=1, runner="ray")
    plan = _cluster(monkeypatch, cfg, [1, 0, None])  # a shard, then a loss, then an attempt on the dead node
    summary = driver.run_extract(cfg, show_progress=False)
    assert len(plan.tasks) == 3 and summary.shards == 3 and summary.done == 6
    assert [n.split(":")[0] for n in summary.notes] == ["retry 1", "retry 2"]


def test_losses_in_a_row_without_progress_end_the_run(data, tmp_path, monkeypatch):  # noqa: F811
    cfg = config(data, tmp_path / "cache", shard_size=2, retries=1, runner="ray")
    _cluster(monkeypatch, cfg, [1, 0, 0])
    with pytest.raises(ExtractionError, match="lost workers 2 times in a row without a shard completing"):
        driver.run_extract(cfg, show_progress=False)
