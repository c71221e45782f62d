"""`python -m benchmarks.bench_pipeline`: Ray overhead, i.e. the Ray Data job's images/s versus the
sequential runner (`runner=sequential`: the job's own work units, `decode_shard` then
`ShardProcessor.process`: encode, features, tar and zarr shard writes, shard by shard in one process),
into a store of its own.

Tiny SD at 512 px, the paper's six feature names, batch 8: one extractor call takes ~3 s on one core,
so the ratio measures what Ray adds (decode tasks, object store, actor scheduling) rather than
start-up. Both sides use one torch thread and write the same files. Reported separately: Ray
start-up, the first shard (actor start: importing torch/diffusers and loading the model), and the
steady state after it; the sequential runner's model load is not timed.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import markdown_table, write_results  # noqa: E402
from pipeline.config import split_config  # noqa: E402
from pipeline.driver import plan_run, run_extract  # noqa: E402
from pipeline.runner import worker_builder  # noqa: E402
from pipeline.sequential import run_sequential  # noqa: E402
from stages.embedded.sample import bundled_sample_dir, ensure_sample  # noqa: E402

N_IMAGES, BATCH, SHARD, RESOLUTION = 64, 8, 16, 512
PAPER_NAMES = ["U-L1-R1-B0-Cross-Q", "D-L2-R0-B0-Cross-Q", "U-L1-R1-B0-Out", "U-L1-R2-B0-Cross-Q",
               "U-L2-R1-B0-Cross-Q", "U-L2-R2-Res-Out"]


def make_data(base: Path) -> tuple[Path, Path]:
    """N_IMAGES distinct keys: the sample's images copied under new names (same pixels, new noise)."""
    sample = ensure_sample(bundled_sample_dir())
    sources = sorted(p for p in sample.image_root.rglob("*") if p.suffix in (".jpg", ".png"))
    root = base / "images"
    root.mkdir(parents=True)
    samples = []
    for i in range(N_IMAGES):
        src = sources[i % len(sources)]
        key = f"bench/{i:04d}{src.suffix}"
        (root / "bench").mkdir(exist_ok=True)
        shutil.copyfile(src, root / key)
        samples.append({"id": str(i), "image": key, "conversations": []})
    data = base / "bench.json"
    data.write_text(json.dumps(samples))
    return data, root


def config(data: Path, root: Path, cache: Path):
    return split_config({"data": [str(data)], "image_root": str(root), "cache_root": str(cache),
                         "resolution": RESOLUTION, "features": PAPER_NAMES, "batch_size": BATCH,
                         "shard_size": SHARD, "num_actors": 1, "cpus_per_actor": 1, "write_webdataset": True})


def sequential_images_per_s(cfg) -> float:
    """images/s of the sequential runner (the job's work units, no Ray; model load not timed)."""
    plan = plan_run(cfg)
    processor = worker_builder(cfg, plan).build()  # cpus_per_actor=1: one torch thread, as the actor
    stats = []
    start = time.perf_counter()
    run_sequential(plan.tasks, processor=processor, image_root=str(plan.manifest.image_root),
                   image_spec=plan.image_spec, on_stats=stats.append)
    return sum(s.n_images for s in stats) / (time.perf_counter() - start)


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        data, root = make_data(base)
        bare = sequential_images_per_s(config(data, root, base / "bare-cache"))
        cfg = config(data, root, base / "cache")
        summary = run_extract(cfg, show_progress=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    (t_first, n_first), (t_last, _) = summary.completions[0], summary.completions[-1]
    steady = (summary.done + summary.failed - n_first) / (t_last - t_first)
    rows = [["sequential runner (same work units and writes, no Ray)", f"{bare:.2f}", "1.00"],
            ["pipeline, steady state (after the first shard)", f"{steady:.2f}", f"{steady / bare:.2f}"],
            ["pipeline, whole job incl. actor start", f"{summary.images_per_s:.2f}",
             f"{summary.images_per_s / bare:.2f}"]]
    print(markdown_table([f"tiny SD, {RESOLUTION} px, 6 names, batch {BATCH}, {N_IMAGES} images", "images/s",
                          "vs bare"], rows))
    print(f"\nRay start-up: {summary.ray_start_s:.1f} s; first shard done after {t_first:.1f} s "
          f"(actor start + {n_first} images); shard writes on both sides ({summary.bytes_written / 1e6:.0f} MB)")
    path = write_results("pipeline", {
        "setup": {"model": "embedded:tiny-sd", "resolution": RESOLUTION, "features": PAPER_NAMES,
                  "batch_size": BATCH, "shard_size": SHARD, "images": N_IMAGES, "actors": 1, "torch_threads": 1},
        "bare_images_per_s": bare, "pipeline_steady_images_per_s": steady, "steady_over_bare": steady / bare,
        "pipeline_whole_images_per_s": summary.images_per_s, "ray_start_s": summary.ray_start_s,
        "first_shard_s": t_first, "bytes_written": summary.bytes_written, "arrays": cfg.spec.array_ids()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
