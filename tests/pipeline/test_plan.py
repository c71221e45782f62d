"""`just extract --dry-run` (pipeline.plan): counts, bytes and FLOPs against what a run really does.

Stores are built in this process by the pipeline's sequential runner (`store_builder`, no Ray); tiny
SD at 64 px. The dry run schedules shards with the run's own planning (`pipeline.shards`). The FLOP count is checked against a FlopCounterMode count of the real encoder computing one
image, and the full-size numbers against DESIGN §6.
"""
import json
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.cli import extract_main
from pipeline.config import split_config
from pipeline.plan import plan_extract
from stages.locations import REPO
from stages.flops import GPUS, ComputeBudget, count_gflop

BUDGET = ComputeBudget()
FEATURES = ["U-L1-R1-B0-Cross-Q", "U-L2-R2-Res-Out"]


@pytest.fixture(scope="module")
def data(sample, tmp_path_factory):
    """Seven sample images (two shards of 4) and one missing file."""
    records = json.loads(sample.pretrain_json.read_text())[:7]
    records.append({**records[0], "image": "absent/none.jpg"})
    path = tmp_path_factory.mktemp("data") / "seven.json"
    path.write_text(json.dumps(records))
    return {"json": str(path), "root": str(sample.image_root)}


def fields(data, cache_root, **extra):
    return {"data": [data["json"]], "image_root": data["root"], "cache_root": str(cache_root), "resolution": 64,
            "grid": 4, "features": FEATURES, "timesteps": [50], "prompt_sources": ["caption"], "shard_size": 4,
            "batch_size": 4, "device": "cpu", "precision": "fp32", **extra}


def written_bytes(store: Path) -> dict[str, int]:
    """Bytes of the zarr shard files and webdataset tars on disk (what the plan counts)."""
    zarr = sum(p.stat().st_size for p in store.glob("zarr/*/c/**/*") if p.is_file())
    return {"zarr": zarr, "webdataset": sum(p.stat().st_size for p in store.glob("wds/*.tar"))}


def files_of(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


def test_plan_bytes_and_counts_match_the_finished_store_and_a_rerun_plans_nothing(data, tmp_path, store_builder):
    values = fields(data, tmp_path / "cache")
    plan = plan_extract(split_config(values), budget=BUDGET)
    assert not (tmp_path / "cache").exists()  # planning wrote nothing
    assert (plan.images["new"], plan.images["missing"], plan.shards["to_compute"], plan.shards["new"]) == (7, 1, 2, 2)

    config_yaml = tmp_path / "extract.yaml"
    config_yaml.write_text(yaml.safe_dump(values))
    store = store_builder(config_yaml)
    actual = written_bytes(store)
    assert plan.store == str(store)
    assert plan.bytes["zarr"] == actual["zarr"]  # the shard files' layout is exact
    assert abs(plan.bytes["total"] - sum(actual.values())) <= 0.10 * sum(actual.values())
    assert abs(plan.bytes["webdataset"] - actual["webdataset"]) <= 0.01 * actual["webdataset"]

    before = files_of(store)
    again = plan_extract(split_config(values), budget=BUDGET)
    assert files_of(store) == before
    assert (again.images["new"], again.images["cached"], again.shards["complete"], again.bytes["total"]) == (0, 7, 2, 0)
    assert again.gflop["total"] == 0
    assert extract_main(["--dry-run", f"config={config_yaml}"]) == 0  # the CLI's plan: beside the store, not in it
    assert (tmp_path / "cache" / "plans" / f"extract-{store.name}.json").is_file() and files_of(store) == before

    more = plan_extract(split_config(fields(data, tmp_path / "cache", timesteps=[50, 200])), budget=BUDGET)
    assert more.images["reusing_latents"] == more.images["new"] == 7
    assert more.gflop["total_vae_encode"] == 0 < more.gflop["total_unet"]
    assert more.bytes_per_array["latents"]["zarr"] == 0 < more.bytes_per_array["U-L2-R2-Res-Out@t200"]["zarr"]


def test_the_dry_run_schedules_the_shards_the_run_computes_after_an_image_changed(data, tmp_path, store_builder):
    """The dry run calls the run's own planning (`pipeline.shards`): an image whose file changed since it
    was extracted makes its shard a miss for both (DESIGN §8), and the dry run still writes nothing."""
    import shutil

    from pipeline.driver import plan_run

    root = shutil.copytree(data["root"], tmp_path / "images")
    values = fields({**data, "root": str(root)}, tmp_path / "cache")
    config_yaml = tmp_path / "extract.yaml"
    config_yaml.write_text(yaml.safe_dump(values))
    store = store_builder(config_yaml)
    key = sorted(r["image"] for r in json.loads(Path(data["json"]).read_text()) if r["image"] != "absent/none.jpg")[5]
    (root / key).write_bytes((root / key).read_bytes() + b"\0")  # in shard 1 (shards of 4)
    before = files_of(store)
    dry = plan_extract(split_config(values), budget=BUDGET)
    assert files_of(store) == before
    run = plan_run(split_config(values))
    assert [t.shard for t in run.tasks] == [1] and run.schedule.changed_images == {key: 1}
    assert (dry.shards["to_compute"], dry.shards["complete"], dry.images["new"], dry.images["cached"]) == (1, 1, 3, 4)
    assert dry.gflop["total_vae_encode"] > 0  # the shard's latents are computed again, not reused


def test_gflop_per_image_equals_a_count_of_the_encoder_computing_an_image(data, tiny_sd_dir):
    """trials 2 x timesteps 2 x (unconditional + caption) passes, the VAE once, one caption prompt. The
    real run uses SDPA's math kernel here: FlopCounterMode does not count the CPU flash kernel (the meta
    device decomposes attention into matmuls, which it counts)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from stages.encoders import SDFeatureEncoder

    config = split_config(fields(data, "unused", trials=2, timesteps=[50, 200]))
    per_image = plan_extract(config, budget=BUDGET).gflop_per_image
    encoder = SDFeatureEncoder.load(config.spec, device="cpu", dtype=torch.float32)
    image = np.full((1, 64, 64, 3), 128, np.uint8)
    encoder.encode(image, ["a.jpg"], {"caption": ["warm-up"]})  # the empty prompt's embedding is cached
    with sdpa_kernel(SDPBackend.MATH):
        counted = count_gflop(lambda: encoder.encode(image, ["a.jpg"], {"caption": ["a dog on grass"]}))
        vae_only = count_gflop(lambda: encoder.latents(image))
    assert sum(per_image.values()) == pytest.approx(counted, rel=1e-6)
    assert per_image["vae_encode"] == pytest.approx(vae_only, rel=1e-6)


def _readme_command(config: str) -> list[str]:
    """The arguments of the README's `just extract config=<config> ...` line, as a shell passes them on."""
    line = next(line for line in (REPO / "README.md").read_text().splitlines()
                if line.startswith(f"just extract config={config}"))
    just, recipe, *args = shlex.split(line, comments=True)
    return args


def test_the_readmes_real_run_command_on_the_documented_data_layout_gives_design_numbers_without_ray_or_weights(
        sample, tmp_path, monkeypatch, capsys):
    """The README's llava558k command as written, with --dry-run, in a checkout holding the documented data
    layout (docs/pipeline.md: LLaVA's file name, keys like `00453/004539375.jpg`, a few of the bundled photos):
    every image is found; SD 2.1-base (not downloadable here: priced on its reference architecture) gives
    DESIGN §6's VAE 1117 GFLOP + U-Net to U-L2-R2-Res-Out 0.69 x 804, GPU-hours by hand."""
    pretrain = tmp_path / "data" / "LLaVA-Pretrain"
    records = []
    for n, record in enumerate(json.loads(sample.pretrain_json.read_text())[:5]):
        key = f"{n:05d}/{n:09d}.jpg"
        (pretrain / "images" / key).parent.mkdir(parents=True)
        shutil.copyfile(Path(sample.image_root) / record["image"], pretrain / "images" / key)
        records.append({**record, "id": f"{n:09d}", "image": key})
    (pretrain / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(records))
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)  # the recipes run in the checkout's root
    monkeypatch.setitem(sys.modules, "ray", None)  # any `import ray` fails
    monkeypatch.setattr("stages.models.load_sd_components", lambda *a, **k: pytest.fail("weights loaded"))
    code = extract_main([*_readme_command("configs/extract/llava558k.yaml"), "--dry-run", "--utilization", "0.5"])
    assert code == 0, capsys.readouterr().err
    out = tmp_path / "cache" / "plans" / "extract-reference.json"  # no store to name it after: no weights
    plan = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "GPU-hours" in printed and f"wrote {out.relative_to(tmp_path)}" in printed
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == [out]
    per_image = plan["gflop_per_image"]
    assert per_image["vae_encode"] == pytest.approx(1117, rel=0.005)
    assert per_image["unet"] == pytest.approx(0.69 * 804, rel=0.01)
    assert (plan["images"]["new"], plan["images"]["missing"], plan["store"]) == (5, 0, None)
    hours = 5 * plan["gflop"]["per_new_image"] / (GPUS["h100-sxm"].peak_tflops * 1e3 * 0.5) / 3600
    assert plan["gpu_hours"] == pytest.approx(hours)
    assert plan["bytes_per_array"]["U-L1-R1-B0-Cross-Q@t50"]["per_image"] == 256 * (256 * 1280 * 2 + 4 + 16) // 256
    assert plan["cpu_cores_per_gpu"] == pytest.approx(
        plan["images_per_s_per_gpu"] / plan["decode_rate"])


def test_the_planned_size_of_a_compact_store_is_its_shard_files_scales_included(train_store_int8):
    plan = plan_extract(split_config(yaml.safe_load(train_store_int8.extract_yaml.read_text())), budget=BUDGET)
    assert plan.store == str(train_store_int8.path) and plan.shards["to_compute"] == 0
    assert any(train_store_int8.path.glob("zarr/*.scale/c/**/*"))
    assert plan.bytes["store_when_complete"] == written_bytes(train_store_int8.path)["zarr"]
