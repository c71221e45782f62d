"""The Ray Data extraction job end to end on the bundled sample plus broken entries (tiny SD, 128 px).

Ray runs are expensive (~10-15 s each), so there are five: the reference run (1 actor, batch 2,
shared by several tests), batch 5, a run killed with SIGKILL and its resume with 2 actors, and a run
whose actors cannot load the model. The cache-hit check starts no Ray at all.
"""
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

from pipeline.config import REPO, split_config
from pipeline.driver import ExtractionError, run_extract
from stages.store import StoreReader, verify_store

pytestmark = pytest.mark.slow

FEATURES = ["U-L1-R1-B0-Cross-Q", "U-L2-R2-Res-Out"]
BROKEN = {  # key -> (kind in errors.jsonl, words expected in the reason)
    "bad/corrupt.jpg": ("failed", "cannot decode"),
    "bad/truncated.jpg": ("failed", "cannot decode"),
    "bad/empty.jpg": ("failed", "zero-byte"),
    "bad/huge.png": ("failed", "exceeds max_pixels"),
    "bad/absent.jpg": ("missing", "missing image file"),
    "../outside.jpg": ("refused", "escapes the image root"),
    "bad/link-outside.jpg": ("refused", "outside the image root"),
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
    os.symlink(base / "outside.jpg", root / "bad/link-outside.jpg")
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


def read_all(store_path):
    reader = StoreReader(store_path)
    return reader.keys, reader.read(reader.keys)


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
    assert reference.extractor_batches > 0


def test_pipeline_equals_calling_the_extractor_directly(reference, data, tiny_sd):
    import torch

    from stages.extractor import ExtractionSpec, SDExtractor
    from stages.preprocess import ImageSpec, load_image, preprocess, to_tensor

    keys, stored = read_all(reference.store)
    picked = [keys[0], "bad/cmyk.jpg", keys[-1]]
    captions = {s.get("image"): s["conversations"][1]["value"] for s in reversed(json.loads(Path(data["json"]).read_text()))}
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


def kill_after_first_shard(proc, store_glob, *, timeout=240):
    start = time.time()
    while time.time() - start < timeout:
        done = list(Path(store_glob.parent).glob(store_glob.name))
        if done or proc.poll() is not None:
            break
        time.sleep(0.05)
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
    assert verify_store(tmp_path / reference.store.name) == []
    keys, a = read_all(reference.store)
    keys_b, b = read_all(tmp_path / reference.store.name)
    assert keys == keys_b and len(set(keys_b)) == len(keys_b)
    for array_id in a:
        assert a[array_id].tobytes() == b[array_id].tobytes(), array_id


def test_cache_hit_computes_nothing_and_starts_no_ray(reference, data, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in reference.store.rglob("*") if p.is_file() and p.name != "errors.jsonl"}
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
    after = {p: p.stat().st_mtime_ns for p in reference.store.rglob("*") if p.is_file() and p.name != "errors.jsonl"}
    assert after == before


def test_actor_that_cannot_load_the_model_fails_fast_with_the_message(data, ray_session, tmp_path, tiny_sd_dir):
    model = tmp_path / "broken-sd"
    shutil.copytree(tiny_sd_dir, model)
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage, not safetensors")
    start = time.time()
    with pytest.raises(ExtractionError, match="unet"):
        run_extract(split_config(fields(data, tmp_path / "cache", model=str(model))), show_progress=False)
    assert time.time() - start < 120
