"""The shard worker and the driver's plan without Ray: `plan_run`, then the sequential runner's
`ShardProcessor.process` per task (what the Ray job does), on a few bundled sample images (tiny SD, 64 px)."""
import json

import numpy as np
import pytest

from pipeline.config import split_config
from pipeline.driver import plan_run, run_extract
from pipeline.progress import ErrorLog, Progress, Summary
from pipeline.rows import ShardStats
from pipeline.runner import worker_builder
from pipeline.sequential import run_sequential
from stages.config import ConfigError
from stages.features import FeatureName
from stages.store import StoreReader

OLD, NEW = "U-L2-R2-Res-Out", "U-L1-R1-Vit-Out"  # the U-Net forward reaches NEW before OLD


@pytest.fixture(scope="module")
def data(sample, tmp_path_factory):
    """Four samples of the bundled pretrain file, in one data file."""
    path = tmp_path_factory.mktemp("data") / "four.json"
    path.write_text(json.dumps(json.loads(sample.pretrain_json.read_text())[:4]))
    return {"json": str(path), "root": str(sample.image_root)}


def config(data, cache_root, **extra):
    values = {"data": [data["json"]], "image_root": data["root"], "cache_root": str(cache_root),
              "resolution": 64, "grid": 4, "features": [OLD], "timesteps": [50], "shard_size": 4,
              "batch_size": 4, "device": "cpu", "precision": "fp32", **extra}
    return split_config(values)


def processor_for(cfg, plan):
    return worker_builder(cfg, plan).build()


def run_tasks(plan, processor):
    """The plan's tasks by the sequential runner with `processor` (hooks attached), their stats in order."""
    stats = []
    run_sequential(plan.tasks, processor=processor, image_root=str(plan.manifest.image_root),
                   image_spec=plan.image_spec, on_stats=stats.append)
    return stats


def test_reused_latents_compute_only_the_missing_names_and_timesteps(data, tmp_path):
    import torch

    first = config(data, tmp_path)
    plan = plan_run(first)
    run_tasks(plan, processor_for(first, plan))

    more_steps = config(data, tmp_path, timesteps=[50, 200])  # only OLD@t200 is missing
    plan = plan_run(more_steps)
    processor = processor_for(more_steps, plan)
    unet_rows = []
    processor.encoder.components.unet.register_forward_pre_hook(lambda m, args: unet_rows.append(len(args[0])))
    stats = run_tasks(plan, processor)
    assert plan.tasks and all(t.reuse_latents for t in plan.tasks)
    assert sum(s.encoded for s in stats) == 0 and all(s.seconds["vae"] == 0 < s.seconds["unet"] for s in stats)
    assert unet_rows and max(unet_rows) <= 4  # one timestep x batch, not both timesteps

    more_names = config(data, tmp_path, features=[OLD, NEW], timesteps=[50, 200])  # only NEW is missing
    plan = plan_run(more_names)
    processor = processor_for(more_names, plan)
    unet = processor.encoder.components.unet
    old_calls = []
    FeatureName.parse(OLD).resolve(unet).register_forward_hook(lambda *_: old_calls.append(1))
    run_tasks(plan, processor)
    assert old_calls == []  # the forward stopped at NEW: OLD, already stored, was not computed

    reader = StoreReader(plan.store.path, expect=plan.store.fingerprint)
    stored = reader.read(reader.keys)
    full = processor.encoder.features(torch.from_numpy(stored["latents"]), reader.keys)
    for array_id, values in full.items():  # the restricted passes give the full pass's values
        np.testing.assert_allclose(stored[array_id].astype(np.float32), values.numpy(), rtol=2e-3, atol=2e-3)


def test_two_data_files_on_one_store_count_only_their_own_shards(sample, tmp_path):
    """Data A and B (four images each, one shard each) share a store. A key planned by an earlier
    run whose image is gone keeps its shard this run's (done, the key failed), not another data's."""
    import shutil

    root = shutil.copytree(sample.image_root, tmp_path / "images")
    samples = json.loads(sample.pretrain_json.read_text())
    files = {}
    for name, part in (("a", samples[:4]), ("b", samples[4:8])):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(part))
    data_a = {"json": str(files["a"]), "root": str(root)}
    cfg_a = config(data_a, tmp_path / "cache")
    plan_run(cfg_a)  # A's shard is planned, then the run stops before computing it
    gone = samples[0]["image"]
    (root / gone).unlink()

    plan = plan_run(cfg_a)
    assert (len(plan.tasks), plan.schedule.foreign_shards) == (1, 0) and gone in plan.manifest.missing
    stats = run_tasks(plan, processor_for(cfg_a, plan))
    assert stats[0].failed.keys() == {gone}
    schedule = plan_run(cfg_a).schedule
    assert (schedule.tasks, schedule.planned, schedule.reused_images, schedule.recorded_failures) == ((), 4, 3, ())

    plan = plan_run(config({"json": str(files["b"]), "root": str(root)}, tmp_path / "cache"))
    assert plan.store.path == plan_run(cfg_a).store.path and len(plan.tasks) == 1
    schedule = plan.schedule
    assert (schedule.planned, schedule.reused_images, schedule.recorded_failures) == (4, 0, ())  # nothing of A's
    assert plan.errors_file.parent == plan.store.path and plan.errors_file != plan_run(cfg_a).errors_file


def test_shard_stats_time_each_stage_and_the_summary_says_where_the_time_went(data, tmp_path):
    cfg = config(data, tmp_path / "cache", shard_size=2)
    plan = plan_run(cfg)
    stats = run_tasks(plan, processor_for(cfg, plan))
    assert len(stats) == 2 and all(ShardStats.from_row(s.to_row()) == s for s in stats)
    for s in stats:
        assert list(s.seconds) == ["decode", "vae", "unet", "write"] and min(s.seconds.values()) > 0
    summary = Summary(store=plan.store.path, errors_file=tmp_path / "errors.jsonl")
    progress = Progress(summary, ErrorLog(summary.errors_file), total=4, enabled=False)
    for s in stats:
        progress.update(s)
    progress.close()
    assert summary.as_dict()["stage_seconds"]["unet"] == pytest.approx(sum(s.seconds["unet"] for s in stats))
    time_line = next(line for line in summary.render().splitlines() if line.startswith("time"))
    assert all(f"{stage} " in time_line for stage in ("decode", "vae", "unet", "write")), time_line


def test_cpu_actors_beyond_the_embedded_rays_cpus_fail_before_ray_starts(data, tmp_path, monkeypatch):
    import pipeline.job

    monkeypatch.setattr(pipeline.job, "start_ray", lambda run: pytest.fail("Ray was started"))
    cfg = config(data, tmp_path / "cache", shard_size=1, num_actors=4, num_cpus=4, device="cpu")
    with pytest.raises(ConfigError, match="4 CPU actors x cpus_per_actor=1.0 leave none of the 4 CPUs"):
        run_extract(cfg, show_progress=False)
