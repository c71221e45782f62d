"""The Ray Data extraction job end to end on the bundled sample plus broken entries (tiny SD, 128 px).

Ray runs are expensive (~10-15 s each), so there are eight: the reference run (1 actor, batch 2,
shared by several tests), batch 5, a run killed with SIGKILL and its resume with 2 actors, a run
whose actors cannot load the model, a run adding a feature name and a timestep to a copy of the
reference store, a run with another seed, and a run whose actor is SIGKILLed (its re-run is a cache
hit). The cache-hit checks start no Ray job; the worker and the plan are tested without Ray in
test_worker.py.
"""
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import split_config
from stages.locations import REPO
from pipeline.driver import run_extract
from pipeline.errors import ExtractionError
from stages.cache_spec import LATENTS, fingerprint_for
from stages.store import StoreReader, verify_store

pytestmark = pytest.mark.slow

FEATURES = ["U-L1-R1-B0-Cross-Q", "U-L2-R2-Res-Out"]
NEW_FEATURE, NEW_TIMESTEP = "U-L1-R1-Vit-Out", 200  # added by a later experiment on the same store
BROKEN = {  # key -> (kind in errors.jsonl, words expected in the reason)
    "bad/corrupt.jpg": ("failed", "cannot decode"),
    "bad/truncated.jpg": ("failed", "cannot decode"),
    "bad/empty.jpg": ("failed", "zero-byte"),
    "bad/huge.png": ("failed", "exceeds max_pixels"),
    "bad/absent.jpg": ("missing", "missing image file"),
    "../outside.jpg": ("refused", "has a '..' component, which escapes the image root"),
    "/etc/passwd": ("refused", "is absolute, which escapes the image root"),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The bundled sample's images and samples plus one entry per kind of broken image, and a CMYK JPEG."""
    from stages.embedded.sample import bundled_sample_dir, ensure_sample

    sample = ensure_sample(bundled_sample_dir())
    base = tmp_path_factory.mktemp("data")
    root = base / "images"
    shutil.copytree(sample.image_root, root)
    good = next(root.rglob("*.jpg"))
    (root / "bad").mkdir()
    (root / "bad/corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    (root / "bad/truncated.jpg").write_bytes(good.read_bytes()[:300])
    (root / "bad/empty.jpg").write_bytes(b"")
    Image.new("RGB", (2100, 2000), (10, 20, 30)).save(root / "bad/huge.png")
    (base / "outside.jpg").write_bytes(good.read_bytes())
    Image.open(good).convert("CMYK").save(root / "bad/cmyk.jpg")
    samples = [*json.loads(sample.pretrain_json.read_text()), *json.loads(sample.sft_json.read_text())]
    samples += [{"id": k, "image": k, "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                       {"from": "gpt", "value": f"caption of {k}"}]}
                for k in [*BROKEN, "bad/cmyk.jpg"]]
    manifest = base / "data.json"
    manifest.write_text(json.dumps(samples))
    return {"json": str(manifest), "root": str(root)}


def fields(data, cache_root, **extra):
    values = {"data": [data["json"]], "image_root": data["root"], "cache_root": str(cache_root),
              "resolution": 128, "features": FEATURES, "prompt_sources": ["caption"], "shard_size": 8,
              "batch_size": 2, "num_actors": 1, "max_pixels": 4_000_000, **extra}
    return values


def overrides(values):
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from pipeline.job import start_ray

    start_ray(split_config({"num_cpus": 2}).run)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(data, ray_session, tmp_path_factory):
    """One actor, batch 2: the run the other runs are compared with."""
    summary = run_extract(split_config(fields(data, tmp_path_factory.mktemp("ref"))), show_progress=False)
    return summary


def rel_err(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


@functools.cache
def expected_fingerprint():
    """The fingerprint of the stores read here (`fields` changes no fingerprint field but the seed)."""
    return fingerprint_for(split_config(fields({"json": "", "root": ""}, "")).spec)


def read_all(store_path):
    reader = StoreReader(store_path, expect=expected_fingerprint())
    return reader.keys, reader.read(reader.keys)


def captions_of(data):
    """key -> the caption the store conditions on (the first sample's first assistant turn)."""
    samples = json.loads(Path(data["json"]).read_text())
    return {s.get("image"): s["conversations"][1]["value"] for s in reversed(samples)}


def file_bytes(paths):
    """{path: bytes} of each file in `paths` and of every file under each folder in `paths`."""
    files = [q for p in map(Path, paths) for q in ([p] if p.is_file() else sorted(p.rglob("*")))]
    return {f: f.read_bytes() for f in files if f.is_file()}


def shard_hashes(store_path):
    """{(array_id, shard): sha256 of the zarr shard file} from the completion records."""
    records = Path(store_path).glob("done/*/*.json")
    return {(r.parent.name, r.stem): json.loads(r.read_text())["sha256"] for r in records}


def assert_bit_identical(store_path, reference_path):
    """Same keys (none duplicated), same bytes in every array and every zarr shard file."""
    assert verify_store(store_path) == []
    keys, a = read_all(reference_path)
    keys_b, b = read_all(store_path)
    assert keys == keys_b and len(set(keys_b)) == len(keys_b)
    assert sorted(a) == sorted(b)
    for array_id in a:
        assert a[array_id].tobytes() == b[array_id].tobytes(), array_id
    assert shard_hashes(store_path) == shard_hashes(reference_path)


def test_store_verifies_and_errors_are_recorded_with_reasons(reference):
    assert verify_store(reference.store) == []
    keys, _ = read_all(reference.store)
    assert len(keys) == len(set(keys)) == 39  # 38 sample images + the CMYK one
    assert "bad/cmyk.jpg" in keys and not set(BROKEN) & set(keys)
    errors = {row["key"]: row for row in map(json.loads, reference.errors_file.read_text().splitlines())}
    assert set(errors) == set(BROKEN)
    for key, (kind, words) in BROKEN.items():
        assert errors[key]["kind"] == kind and words in errors[key]["reason"], errors[key]
    assert (reference.done, reference.failed, reference.missing, reference.refused) == (39, 4, 1, 2)
    assert reference.refused_by_cause == {"'..' in the path": 1, "absolute path": 1}
    assert reference.extractor_batches > 0 and reference.images_decoded == reference.images_encoded == 39


def test_pipeline_equals_calling_the_extractor_directly(reference, data, tiny_sd):
    import torch

    from stages.extractor import ExtractionSpec, SDExtractor
    from stages.preprocess import ImageSpec, load_image, preprocess, to_tensor

    keys, stored = read_all(reference.store)
    picked = [keys[0], "bad/cmyk.jpg", keys[-1]]
    captions = captions_of(data)
    spec = ImageSpec(resolution=128)
    pixels = torch.stack([to_tensor(preprocess(load_image(data["root"], k), spec)) for k in picked])
    extractor = SDExtractor(tiny_sd, ExtractionSpec(features=tuple(FEATURES), timesteps=(50,), grid=16))
    latents = extractor.encode(pixels)
    direct = extractor.conditional_pair(latents, picked, prompts=[captions[k] for k in picked], source="caption")
    rows = [keys.index(k) for k in picked]
    assert rel_err(stored["latents"][rows], latents.numpy()) < 1e-5
    assert len(direct) == 2 * len(FEATURES)
    for array_id, values in direct.items():  # stored float16: within its rounding
        assert rel_err(stored[array_id][rows], values.numpy()) < 1e-3, array_id


def test_batch_size_two_vs_five_agree_within_1e_5(reference, data, tmp_path):
    other = run_extract(split_config(fields(data, tmp_path, batch_size=5)), show_progress=False)
    assert other.store.name == reference.store.name  # batch size is not part of the fingerprint
    keys, a = read_all(reference.store)
    keys_b, b = read_all(other.store)
    assert keys == keys_b
    for array_id in a:
        assert rel_err(b[array_id], a[array_id]) <= 1e-5, array_id


def cli(args, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "extract", "--no-progress", *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kwargs)


def wait_for_first_shard(proc, store_glob, *, timeout=240):
    """Return once a file matches `store_glob` (a completion record) or `proc` has exited."""
    start = time.time()
    while time.time() - start < timeout:
        if list(Path(store_glob.parent).glob(store_glob.name)) or proc.poll() is not None:
            return
        time.sleep(0.05)


def kill_after_first_shard(proc, store_glob, *, timeout=240):
    wait_for_first_shard(proc, store_glob, timeout=timeout)
    os.kill(proc.pid, signal.SIGKILL)  # the driver only; its Ray processes must not finish the job
    proc.wait()
    time.sleep(3)
    kill_session(proc)


def kill_session(proc):
    """SIGKILL what is left of the subprocess's session (its raylet; workers die with the raylet)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def test_sigkill_then_resume_with_two_actors_is_bit_identical_to_one_actor_run(reference, data, tmp_path):
    args = overrides(fields(data, tmp_path))
    proc = cli(args)
    kill_after_first_shard(proc, tmp_path / reference.store.name / "done" / "latents" / "*.json")
    records = list((tmp_path / reference.store.name / "done" / "latents").glob("*.json"))
    n_shards = len(list((reference.store / "done" / "latents").glob("*.json")))
    assert 1 <= len(records) < n_shards, "the run was not interrupted mid-way"
    resumed = cli([*args, "num_actors=2", "cpus_per_actor=0.5"])  # 2 CPUs: one left for decoding
    try:
        output, _ = resumed.communicate(timeout=300)
    finally:
        kill_session(resumed)
    assert resumed.returncode == 0, output
    assert_bit_identical(tmp_path / reference.store.name, reference.store)


def test_cache_hit_computes_nothing_and_starts_no_ray(reference, data, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in reference.store.rglob("*")
              if p.is_file() and not p.name.startswith("errors-")}
    config = overrides(fields(data, reference.store.parent))
    code = ("import sys, json; from pipeline.cli import main; rc = main(['extract', '--no-progress', "
            f"'--summary-json', {str(tmp_path / 's.json')!r}, *{config!r}]); "
            "assert 'ray' not in sys.modules, 'ray was imported'; sys.exit(rc)")
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "nothing to compute" in out.stdout
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["done"], summary["shards"], summary["reused"]) == (0, 0, 39)
    assert time.time() - start < 60
    after = {p: p.stat().st_mtime_ns for p in reference.store.rglob("*")
             if p.is_file() and not p.name.startswith("errors-")}
    assert after == before


def test_actor_that_cannot_load_the_model_fails_fast_with_the_message(data, ray_session, tmp_path, tiny_sd_dir):
    model = tmp_path / "broken-sd"
    shutil.copytree(tiny_sd_dir, model)
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage, not safetensors")
    start = time.time()
    with pytest.raises(ExtractionError) as info:
        run_extract(split_config(fields(data, tmp_path / "cache", model=str(model))), show_progress=False)
    assert time.time() - start < 120
    message = str(info.value)  # one line: where, the original type and message, and the log
    assert len(message.splitlines()) == 1
    assert message.startswith("extraction worker failed at actor start: ModelLoadError: cannot load unet/ of "), message
    log = Path(message.rsplit("; tracebacks in ", 1)[1])
    assert log.parent.name == "logs" and "Traceback (most recent call last)" in log.read_text()


def test_sigint_mid_extraction_prints_the_summary_and_one_line_exits_130_and_the_rerun_completes(data, tmp_path):
    args = [*overrides(fields(data, tmp_path)), "--summary-json", str(tmp_path / "s.json")]
    store = tmp_path / expected_fingerprint().short
    proc = cli(args)
    try:
        wait_for_first_shard(proc, store / "done" / "latents" / "*.json")
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole foreground group
        output, _ = proc.communicate(timeout=120)
    finally:
        kill_session(proc)
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and lines[0].startswith("extract: interrupted after "), output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["interrupted"] is True  # shards counts those whose stats reached the driver
    rerun = cli(args)
    try:
        output, _ = rerun.communicate(timeout=300)
    finally:
        kill_session(rerun)
    assert rerun.returncode == 0, output
    assert verify_store(store) == []


def test_new_feature_and_timestep_reuse_stored_latents_and_leave_existing_arrays_untouched(
        reference, data, tmp_path, tiny_sd):
    """A later experiment adds a name and a timestep: same store, only the new arrays are computed,
    from the stored latents: no image is read (a file overwritten with garbage would now be a changed
    image, extracted again: tests/pipeline/test_changed_images.py)."""
    import torch

    from stages.extractor import ExtractionSpec, SDExtractor

    store = shutil.copytree(reference.store, tmp_path / "cache" / reference.store.name)
    old_ids = StoreReader(store, expect=expected_fingerprint()).array_ids
    old_paths = [store / "index", store / "fingerprint.json",
                 *(store / folder / a for folder in ("zarr", "done") for a in old_ids)]
    kept = file_bytes(old_paths)
    config = fields(data, tmp_path / "cache", features=[*FEATURES, NEW_FEATURE], timesteps=[50, NEW_TIMESTEP])
    summary = run_extract(split_config(config), show_progress=False)
    assert summary.store == store and [p.name for p in store.parent.iterdir()] == [store.name]
    assert (summary.images_decoded, summary.images_encoded) == (0, 0)
    assert (summary.done, summary.failed) == (39, 4) and summary.extractor_batches > 0  # failures as recorded
    assert file_bytes(old_paths) == kept  # every pre-existing array's zarr files and records, byte for byte
    assert verify_store(store) == []
    reader = StoreReader(store, expect=expected_fingerprint())
    new_ids = sorted(set(reader.array_ids) - set(old_ids))
    assert len(new_ids) == 2 * (3 * 2 - len(FEATURES))  # (3 names x 2 timesteps - 2 old) x (uncond, caption)
    picked = [reader.keys[0], "bad/cmyk.jpg", reader.keys[-1]]
    stored = reader.read(picked)
    extractor = SDExtractor(tiny_sd, ExtractionSpec(features=(*FEATURES, NEW_FEATURE),
                                                    timesteps=(50, NEW_TIMESTEP), grid=16))
    captions = captions_of(data)
    direct = extractor.conditional_pair(torch.from_numpy(stored[LATENTS]), picked,
                                        prompts=[captions[k] for k in picked], source="caption")
    assert sorted(direct) == sorted(set(reader.array_ids) - {LATENTS})
    for array_id in new_ids:  # stored float16: within its rounding
        assert rel_err(stored[array_id], direct[array_id].numpy()) < 1e-3, array_id


def test_changed_seed_writes_a_new_store_and_never_touches_the_old_one(reference, data):
    before = file_bytes([reference.store])
    config = fields(data, reference.store.parent, seed=1, features=FEATURES[:1], prompt_sources=[],
                    write_webdataset=False)
    other = run_extract(split_config(config), show_progress=False)
    assert other.store.parent == reference.store.parent and other.store != reference.store
    fingerprints = [json.loads((s / "fingerprint.json").read_text()) for s in (reference.store, other.store)]
    assert {k for k in fingerprints[0] if fingerprints[0][k] != fingerprints[1][k]} == {"noise"}
    assert verify_store(other.store) == [] and other.done == 39
    assert file_bytes([reference.store]) == before


def extractor_actor_pids(ancestor):
    """Pids of the extractor actors (process title `ray::MapWorker(MapBatches(ShardWorker))`) among
    the descendants of `ancestor`, from /proc."""
    parents, titles = {}, {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                titles[int(entry.name)] = (entry / "cmdline").read_bytes()
        except OSError:  # exited meanwhile
            continue

    def descends(pid):
        while pid in parents and pid != ancestor:
            pid = parents[pid]
        return pid == ancestor
    return [pid for pid, title in titles.items() if b"ShardWorker" in title and descends(pid)]


def test_a_sigkilled_extractor_actor_costs_a_retry_and_the_store_is_bit_identical(reference, data, tmp_path):
    """The actor's shard fails the attempt (actors are not restarted, see `pipeline.job.run_shards`); the
    driver starts a new embedded Ray and runs the shards left; the run exits 0 with every image counted
    once, and the re-run is a cache hit."""
    store = tmp_path / reference.store.name
    proc = cli([*overrides(fields(data, tmp_path)), "--summary-json", str(tmp_path / "s.json")])
    try:
        wait_for_first_shard(proc, store / "done" / "latents" / "*.json")
        actors = extractor_actor_pids(proc.pid)
        assert len(actors) == 1, actors
        n_done = len(list((store / "done" / "latents").glob("*.json")))
        os.kill(actors[0], signal.SIGKILL)
        output, _ = proc.communicate(timeout=240)
    finally:
        kill_session(proc)
    assert 1 <= n_done < len(list((reference.store / "done" / "latents").glob("*.json")))
    assert proc.returncode == 0, output
    assert "retry 1: ActorDiedError" in output, output[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    counts = (summary["done"], summary["failed"], summary["shards"])
    assert counts == (reference.done, reference.failed, reference.shards)  # the retried shard counted once
    again = run_extract(split_config(fields(data, tmp_path)), show_progress=False)
    assert again.shards == 0 and "cache hit" in again.notes[-1]
    assert_bit_identical(store, reference.store)
