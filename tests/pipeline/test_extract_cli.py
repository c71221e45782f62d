"""`python -m pipeline.cli`: user mistakes are one line on stderr and exit status 2, never a traceback;
anything else (a bug) keeps its traceback."""
import hashlib
import json

import pytest
import torch

from pipeline.cli import main


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_unreachable_ray_cluster_is_one_line_error_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))  # `auto` finds no cluster file here,
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # nor, by Ray's legacy fallback for `auto` (grepping processes), another test's running Ray
    monkeypatch.setattr("ray._private.services._find_address_from_flag", lambda flag: [])
    rc = main(["extract", "--no-progress", f"cache_root={tmp_path / 'cache'}", "--ray-address", "auto"])
    err = _one_error_line(capsys)
    assert rc == 2 and err.startswith("extract: error: cannot connect to the Ray cluster at ray_address='auto'")
    assert "ray start --head" in err


@pytest.mark.parametrize("override, message", [
    ("config=no-such.yaml", "config file no-such.yaml does not exist"),
    ("model=no-such-model-dir", "model directory 'no-such-model-dir' does not exist"),
    ("resolution=100", "resolution 100 is not a positive multiple of 64"),
    ("resize_mode=bogus", "resize_mode 'bogus' is not one of"),
    ("prompt_sources=[bogus]", "unknown prompt source(s) ['bogus']"),
])
def test_a_user_mistake_is_one_line_naming_it_and_exit_2(override, message, tmp_path, capsys):
    rc = main(["extract", "--no-progress", f"cache_root={tmp_path / 'cache'}", override])
    assert rc == 2 and _one_error_line(capsys).startswith(f"extract: error: {message}")


def test_a_bug_is_not_reported_as_a_user_mistake_but_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    def bug(*args, **kwargs):
        raise KeyError("a bug in our code")

    monkeypatch.setattr("pipeline.driver.plan_run", bug)
    with pytest.raises(KeyError, match="a bug in our code"):  # uncaught: Python prints it and exits 1
        main(["extract", "--no-progress", f"cache_root={tmp_path / 'cache'}"])
    assert "error:" not in capsys.readouterr().err


@pytest.fixture(scope="module")
def planned_store(tmp_path_factory):
    """A store as a first run leaves it before its Ray job: fingerprint, keys and arrays on disk."""
    from pipeline.config import load_extract_config
    from pipeline.driver import plan_run

    root = tmp_path_factory.mktemp("cache")
    return root, plan_run(load_extract_config([f"cache_root={root}"])).store.path


def _hashes(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("override, message", [
    ("batch_size=abc", "run: batch_size must be an integer, got 'abc'"),
    ("num_actors=1.5", "run: num_actors must be an integer, got 1.5"),
    ("cpus_per_actor=lots", "run: cpus_per_actor must be a number, got 'lots'"),
    ("write_webdataset=maybe", "run: write_webdataset must be true or false, got 'maybe'"),
    ("seed=abc", "cache: seed must be an integer, got 'abc'"),
    ("resolution=abc", "cache: resolution must be an integer or null, got 'abc'"),
    ("num_cpus=two", "run: num_cpus must be an integer or null, got 'two'"),
    ("timesteps=[fifty]", "cache: timesteps must be a list (an integer each), got ['fifty']"),
    ("pad_color=[1,2]", "cache: pad_color must be a list of 3 (an integer each), got [1, 2]"),
    ("features={a: 1}", "cache: features must be a list (a string each), got {'a': 1}"),
    ("device=gpu", "device 'gpu' is not auto, cpu, cuda or cuda:N"),
    ("precision=fp8", "precision 'fp8' is not one of"),
    ("timesteps=[5000]", "timesteps [5000] are outside the range 0..999 of the scheduler of embedded:tiny-sd"),
    ("features=[U-L9-R0-B0-Cross-Q]", "U-L9-R0-B0-Cross-Q does not exist in this U-Net"),
    ('actor_resources={"GPU": 1}', "actor_resources must map custom Ray resource names (not CPU, GPU"),
    ("actor_resources={h100: 0}", "actor_resources must map custom Ray resource names"),
    ("retries=-1", "retries must be >= 0, got -1"),
])
def test_a_bad_value_is_one_line_naming_the_field_before_ray_and_the_store_stays_byte_identical(
        override, message, planned_store, no_ray, capsys):
    root, store = planned_store
    before = _hashes(root)
    rc = main(["extract", "--no-progress", f"cache_root={root}", override])
    assert rc == 2 and _one_error_line(capsys).startswith(f"extract: error: {message}")
    assert _hashes(root) == before


def test_a_single_data_file_is_a_one_element_list_not_its_characters(tmp_path, no_ray, capsys):
    rc = main(["extract", "--no-progress", f"cache_root={tmp_path / 'cache'}", f"data={tmp_path / 'four.json'}",
               f"image_root={tmp_path}"])
    assert rc == 2 and str(tmp_path / "four.json") in _one_error_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_device_cuda_without_cuda_fails_before_any_store_or_ray(tmp_path, no_ray, capsys):
    rc = main(["extract", "--no-progress", f"cache_root={tmp_path / 'cache'}", "device=cuda"])
    assert rc == 2 and "device=cuda but torch sees no CUDA GPU" in _one_error_line(capsys)
    assert not (tmp_path / "cache").exists()


def _fake_job(monkeypatch, *, run_shards=None, shutdown=None):
    """The driver's Ray calls replaced: no Ray starts, `run_shards` and `ray.shutdown` do what is given."""
    import ray

    monkeypatch.setattr("pipeline.job.start_ray", lambda run: (True, 0.0))
    monkeypatch.setattr("pipeline.job.run_shards", run_shards or (lambda *a, **k: None))
    monkeypatch.setattr(ray, "shutdown", shutdown or (lambda: None))


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_during_the_job_prints_and_writes_the_summary_one_line_and_exits_130(tmp_path, monkeypatch, capsys):
    _fake_job(monkeypatch, run_shards=_interrupt)
    summary = tmp_path / "s.json"
    rc = main(["extract", "--no-progress", f"cache_root={tmp_path / 'cache'}", "--summary-json", str(summary)])
    out = capsys.readouterr()
    assert rc == 130 and "extract: 0 images done" in out.out
    assert out.err.strip().splitlines() == ["extract: interrupted after 0 shards (0 images) of this run; they are "
                                            "kept: run the same command to resume"]
    assert json.loads(summary.read_text())["interrupted"] is True


def test_ctrl_c_during_ray_shutdown_after_the_work_keeps_success_and_the_summary(tmp_path, monkeypatch, capsys):
    _fake_job(monkeypatch, shutdown=_interrupt)
    summary = tmp_path / "s.json"
    rc = main(["extract", "--no-progress", f"cache_root={tmp_path / 'cache'}", "--summary-json", str(summary)])
    assert rc == 0 and "extract: 0 images done" in capsys.readouterr().out
    assert json.loads(summary.read_text())["interrupted"] is False


@pytest.mark.parametrize("nodes, request_, fit", [
    ([{"CPU": 3, "extractor": 1}, {"CPU": 2, "extractor": 1}], {"CPU": 1, "extractor": 1}, 2),
    ([{"CPU": 3, "extractor": 1}, {"CPU": 2, "extractor": 1}], {"CPU": 1, "extractor": 2}, 0),
    ([{"CPU": 3, "extractor": 1}, {"CPU": 2}], {"CPU": 1, "extractor": 1}, 1),  # no slot on node 2
    ([{"CPU": 64, "GPU": 8}, {"CPU": 8, "GPU": 8}], {"CPU": 2, "GPU": 1}, 12),  # CPUs bound node 2
    ([{"CPU": 3}, {"CPU": 2}], {"CPU": 3.5}, 0),  # 5 CPUs in all, 3.5 on no node
])
def test_actor_capacity_counts_whole_actors_per_node(nodes, request_, fit):
    from pipeline.job import actor_capacity

    assert actor_capacity(nodes, request_, actors=99) == fit


def test_the_sequential_runner_extracts_without_ray_and_refuses_cluster_settings(tmp_path, monkeypatch, capsys):
    """`runner=sequential`: the Ray job's work units in this process, the same summary path; Ray is never
    imported. A cluster address or an actor pool is a one-line error."""
    import sys

    from stages.store.verify import verify_store

    monkeypatch.setitem(sys.modules, "ray", None)  # any `import ray` fails
    small = ["runner=sequential", "resolution=64", "grid=4", "shard_size=16", "batch_size=8", "device=cpu",
             "precision=fp32", f"cache_root={tmp_path / 'cache'}"]
    summary = tmp_path / "summary.json"
    assert main(["extract", "--no-progress", *small, "--summary-json", str(summary)]) == 0, capsys.readouterr().err
    counts = json.loads(summary.read_text())
    assert counts["done"] == 38 and counts["shards"] == 3 and counts["ray_start_s"] == 0
    assert set(counts["stage_seconds"]) == {"decode", "vae", "unet", "write"}
    assert verify_store(counts["store"]) == []
    capsys.readouterr()
    for bad in ("num_actors=2", "ray_address=auto"):
        assert main(["extract", "--no-progress", *small, bad]) == 2
        assert "runner=sequential computes the shards one after another" in _one_error_line(capsys)
