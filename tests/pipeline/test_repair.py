"""A store you can trust: every kind of damage is reported by `verify` with the command that fixes it,
and `verify --repair` plus an extraction (the driver's own plan, shards computed by the sequential runner) restore
the store byte for byte; `extract` alone repairs what its cheap checks see; a failed run leaves the
store as it was; `caches --drop` removes arrays (tiny SD, 64 px, 6 images in shards of 4)."""
import json
import os
import shlex
import resource
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml

import pipeline.cli as cli
import pipeline.driver as driver
import stages.store.locks as locks
from pipeline.config import split_config
from pipeline.driver import plan_run, run_extract
from pipeline.errors import ExtractionError
from pipeline.runner import run_in_process
from pipeline.store_cli import caches_main, verify_main
from stages.config import ConfigError
from stages.store import list_caches
from stages.store.verify import verify_store
from tests.conftest import pretrain_subset

FEATURE = "U-L2-R2-Res-Out@t50"


def config(data, cache_root, **extra):
    values = {"data": [data["json"]], "image_root": data["root"], "cache_root": str(cache_root),
              "resolution": 64, "grid": 4, "features": ["U-L2-R2-Res-Out"], "timesteps": [50],
              "batch_size": 2, "device": "cpu", "precision": "fp32", "runner": "sequential", **extra}
    return split_config(values)


def extract(cfg):
    """The driver's plan (cheap checks and repairs included), then its tasks by the sequential runner."""
    plan = plan_run(cfg)
    run_in_process(cfg, plan)
    return plan


def snapshot(root):
    """Every file's bytes; JSON records without their `written` time; the empty lock file left out."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".lock"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("done/", "wds/")) and path.suffix == ".json":
            out[rel] = {k: v for k, v in json.loads(path.read_text()).items() if k != "written"}
        else:
            out[rel] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def data(sample, tmp_path_factory):
    return pretrain_subset(sample, tmp_path_factory.mktemp("data"), 6)


@pytest.fixture(scope="module")
def pristine(data, tmp_path_factory):
    """A complete store (shards 0 and 1, shard 1 half padding, with tars) and its snapshot."""
    root = tmp_path_factory.mktemp("pristine")
    plan = extract(config(data, root / "cache", shard_size=4))
    assert verify_store(plan.store.path) == [] and len(plan.store.shards()) == 2
    return plan.store.path, snapshot(plan.store.path)


@pytest.fixture
def store(pristine, tmp_path):
    path = tmp_path / "cache" / pristine[0].name
    shutil.copytree(pristine[0], path)
    return path


def flip(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def _flip_index_key(store):
    path = store / "index/000000.json"
    flip(path, path.read_text().index('"keys": ["') + 12)  # a character of the first key


def _edit_shard_size(store):
    path = store / "zarr" / "zarr.json"
    path.write_text(path.read_text().replace('"shard_size": 4', '"shard_size": 3'))


def _shard(store, shard=1):
    return store / "zarr" / FEATURE / f"c/{shard}/0/0"


def _swap_shards(store):
    first, second = _shard(store, 0).read_bytes(), _shard(store, 1).read_bytes()
    _shard(store, 0).write_bytes(second)
    _shard(store, 1).write_bytes(first)


def _swap_samples(store):
    """Rows 0 and 1 of shard 0 trade places, each with its crc32c: every byte intact, two samples wrong."""
    path = _shard(store, 0)
    raw = bytearray(path.read_bytes())
    index = np.frombuffer(bytes(raw[-(4 * 16 + 4):-4]), "<u8").reshape(4, 2)  # (offset, nbytes) per row
    (a, n), (b, _) = index[0], index[1]
    raw[a:a + n], raw[b:b + n] = raw[b:b + n], raw[a:a + n]
    path.write_bytes(bytes(raw))


def _edit_dtype(store):
    path = store / "zarr" / FEATURE / "zarr.json"
    path.write_text(path.read_text().replace('"data_type": "float16"', '"data_type": "int16"', 1))


DAMAGE = {
    "shard_bytes": lambda s: flip(_shard(s), 100),
    "index_bytes": _flip_index_key,
    "shard_deleted": lambda s: _shard(s).unlink(),
    "shard_index_bytes": lambda s: flip(_shard(s), _shard(s).stat().st_size - 8),  # the shard's own index
    "shard_truncated": lambda s: os.truncate(_shard(s), 1000),
    "index_truncated": lambda s: (s / "index/000001.json").write_text((s / "index/000001.json").read_text()[:40]),
    "record_deleted": lambda s: (s / "done" / FEATURE / "000001.json").unlink(),
    "group_shard_size": _edit_shard_size,
    "shards_swapped": _swap_shards,
    "samples_swapped": _swap_samples,
    "dtype_edited": _edit_dtype,
    "array_deleted": lambda s: shutil.rmtree(s / "zarr" / FEATURE),
    "leftovers": lambda s: [(s / "zarr" / FEATURE / "c/0/0/0.1234.partial").write_bytes(b"x"),
                            (s / "index/.000001.json.99.tmp").write_text("{")],
}
NEEDS_REPAIR = {"shard_bytes", "index_bytes", "shard_deleted", "shard_index_bytes", "shard_truncated", "index_truncated",
                "leftovers", "group_shard_size", "shards_swapped", "samples_swapped", "array_deleted"}
# shards the extract after the repair computes (the index ones are proven from records and tar, an edited
# zarr.json is rewritten as it was created)
RECOMPUTED = {"shard_bytes": 1, "shard_deleted": 1, "shard_index_bytes": 1, "shard_truncated": 1, "record_deleted": 1,
              "shards_swapped": 2, "samples_swapped": 1, "array_deleted": 2}
NEEDS_EXTRACT = {*RECOMPUTED, "index_bytes", "index_truncated", "dtype_edited"}  # advice cannot know what a repair proves


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_verify_names_the_fix_and_repair_then_extract_restores_the_store_byte_identical(
        damage, store, pristine, data, capsys):
    DAMAGE[damage](store)
    assert verify_main([str(store), "--no-progress"]) == 1
    out = capsys.readouterr().out
    repair_step = f"just verify {store} --repair"
    extract_step = (f"just extract config=<the config that made it> cache_root={store.parent} "
                    f"'data=[{Path(data['json']).resolve()}]' image_root={Path(data['root']).resolve()}")
    expected = " && ".join([s for s, needed in ((repair_step, damage in NEEDS_REPAIR),
                                                (extract_step, damage in NEEDS_EXTRACT)) if needed])
    assert f"to fix: {expected}\n" in out

    assert verify_main([str(store), "--repair", "--no-progress"]) == 0
    plan = extract(config(data, store.parent))
    assert len(plan.tasks) == RECOMPUTED.get(damage, 0)
    assert verify_store(store) == [] and snapshot(store) == pristine[1]


@pytest.mark.parametrize("damage", ["shard_deleted", "shard_truncated", "index_truncated", "index_bytes",
                                    "record_deleted"])
def test_extract_alone_repairs_what_its_cheap_checks_find(damage, store, pristine, data):
    DAMAGE[damage](store)  # index_bytes: a changed key, which a plan would give a new shard of its own
    plan = extract(config(data, store.parent))
    assert bool(plan.repairs) == (damage != "record_deleted")
    assert len(plan.tasks) == (damage not in ("index_truncated", "index_bytes"))  # an index is proven, not recomputed
    assert snapshot(store) == pristine[1] and len(plan.store.shards()) == 2


def test_the_fix_named_for_a_shard_of_another_data_set_run_as_printed_computes_it_and_verify_passes(
        store, sample, tmp_path, capsys):
    """A store filled from two data sets, as `just eval-extract` adds a run's benchmark images to the training
    images' store: the fix for a damaged shard of the second set names its YAML, files and image root (the
    first set's command alone is a cache hit, and `verify` would fail again). Each printed step is run as the
    justfile's recipe runs it (`python -m pipeline.cli <recipe> "$@"`)."""
    records = json.loads(Path(sample.pretrain_json).read_text())[6:10]  # not in the store yet: shard 2
    (tmp_path / "eval.json").write_text(json.dumps(records))
    values = {"data": [str(tmp_path / "eval.json")], "image_root": str(sample.image_root),
              "cache_root": str(store.parent), "resolution": 64, "grid": 4, "features": ["U-L2-R2-Res-Out"],
              "timesteps": [50], "batch_size": 2, "device": "cpu", "precision": "fp32", "runner": "sequential"}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(values))
    assert cli.main(["extract", f"config={tmp_path / 'eval.yaml'}", "--no-progress"]) == 0
    flip(_shard(store, 2), 100)
    assert verify_main([str(store), "--no-progress"]) == 1
    (fix,) = [line.removeprefix("to fix: ") for line in capsys.readouterr().out.splitlines()
              if line.startswith("to fix: ")]
    assert f"config={tmp_path / 'eval.yaml'}" in fix and str(tmp_path / "eval.json") in fix
    for step in fix.split(" && "):
        just, recipe, *args = shlex.split(step)
        assert just == "just" and cli.main([recipe, *args]) == 0, step
    assert verify_main([str(store), "--no-progress"]) == 0


def test_unprovable_index_is_removed_by_verify_and_planned_again_by_extract(store, pristine, data):
    (store / "wds/000001.tar").unlink()  # no tar: the rows of shard 1's keys are not in the store
    (store / "wds/000001.json").unlink(missing_ok=True)
    DAMAGE["index_truncated"](store)
    assert verify_main([str(store), "--repair", "--no-progress"]) == 0
    assert not (store / "index/000001.json").exists() and not (store / "done" / FEATURE / "000001.json").exists()
    plan = extract(config(data, store.parent))
    assert [t.shard for t in plan.tasks] == [1] and snapshot(store) == pristine[1]


def test_a_failed_run_leaves_the_store_byte_identical(store, data, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("worker died")

    run_extract(config(data, store.parent), show_progress=False)  # a cache hit; writes the errors file
    before = snapshot(store)
    monkeypatch.setattr(driver, "run_tasks", fail)
    with pytest.raises(RuntimeError):
        run_extract(config(data, store.parent, timesteps=[50, 200]), show_progress=False)
    assert snapshot(store) == before
    (info,) = list_caches(store.parent)
    assert info.timesteps == (50,) and verify_store(store) == []


def test_a_cache_hit_needs_no_lock_and_no_shard_size(store, data, monkeypatch, capsys):
    def no_lock(path):
        raise AssertionError(f"a cache hit took the lock {path}")

    monkeypatch.setattr(locks, "_exclusive", no_lock)
    summary = run_extract(config(data, store.parent), show_progress=False)  # shard_size: the store's (4)
    assert summary.shards == 0 and "cache hit" in summary.render()


def test_caches_drop_removes_arrays_and_refuses_latents_while_features_need_them(store, capsys):
    assert caches_main(["--drop", str(store), "latents"]) == 2
    assert "drop it together with them" in capsys.readouterr().err
    assert caches_main(["--drop", str(store), "nope"]) == 2
    assert caches_main(["--drop", str(store), FEATURE]) == 0
    assert not (store / "zarr" / FEATURE).exists() and not (store / "done" / FEATURE).exists()
    assert verify_store(store) == [] and list_caches(store.parent)[0].array_ids == ("latents",)


def test_caches_of_a_missing_root_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        caches_main([str(tmp_path / "nonexistent")])
    assert exc.value.code == 2 and "is not a directory" in capsys.readouterr().err


def test_an_empty_data_set_is_an_error_before_any_store_exists(data, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(ConfigError, match="no images to extract"):
        plan_run(config({**data, "json": str(empty)}, tmp_path / "cache"))
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_full_disk_while_adding_a_timestep_leaves_the_store_as_it_was(store, data):
    """With a file-size limit that a zarr shard fits and a tar does not, the run fails writing its first tar
    (EFBIG, as ENOSPC would); the old tar, its record and every array stay as they were."""
    run_extract(config(data, store.parent), show_progress=False)  # a cache hit; writes the errors file
    before = snapshot(store)
    limit = max(p.stat().st_size for p in (store / "zarr").rglob("*") if p.is_file()) + 1024

    old = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[0][1]))
    try:
        with pytest.raises(ExtractionError, match=r"OSError: \[Errno 27\] File too large"):
            run_extract(config(data, store.parent, timesteps=[50, 200]), show_progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old[0])
        signal.signal(signal.SIGXFSZ, old[1])
    shutil.rmtree(store / "logs")  # the failure's log file (tracebacks), beside the store's data
    assert snapshot(store) == before and verify_store(store) == []
    assert len(extract(config(data, store.parent, timesteps=[50, 200])).tasks) == 2  # the disk has room again
    assert verify_store(store) == []


def test_failures_under_other_decode_limits_or_retry_failed_are_tried_again(data, pristine, tmp_path):
    low = extract(config(data, tmp_path / "cache", shard_size=4, max_pixels=1))  # every image "too large"
    assert low.tasks and not extract(config(data, tmp_path / "cache", max_pixels=1)).tasks  # recorded: a hit
    again = extract(config(data, tmp_path / "cache", max_pixels=1, retry_failed=True))
    assert set(again.schedule.retried.values()) == {"retry_failed"} and len(again.tasks) == 2
    default = extract(config(data, tmp_path / "cache"))  # the default limit: the recorded failures are retried
    assert len(default.tasks) == 2 and "max_pixels" in next(iter(default.schedule.retried.values()))
    made = {k: v for k, v in snapshot(default.store.path).items() if k != "zarr/zarr.json"}  # its creation time
    assert made == {k: v for k, v in pristine[1].items() if k != "zarr/zarr.json"}  # as if max_pixels=1 never ran
