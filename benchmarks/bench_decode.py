"""`just bench-decode`: images decoded and preprocessed per second on one CPU core, the number that sizes
the CPU side of an extraction (`just extract --dry-run` reads it: cores needed to keep one GPU fed).

The work is the extraction's decode task exactly (`stages.preprocess`: decode, EXIF transpose, RGB,
pad to square, BICUBIC resize to `--resolution`, 512 by default) on the bundled sample's photos (38
JPEG/PNG files of varied sizes, built from scikit-image's photos), in one process with one thread;
then the same in one process per core, to show how it scales. The mean source size is recorded:
LLaVA-558k images average ~0.2 megapixels, larger photos decode proportionally slower.

    python -m benchmarks.bench_decode [--resolution 512] [--rounds 5]   -> benchmarks/results/decode.json
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.common import markdown_table, write_results
from stages.embedded.sample import bundled_sample_dir, ensure_sample
from stages.preprocess import ImageSpec, load_image, preprocess


def _image_keys(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in (".jpg", ".png"))


def _decode_all(root: str, keys: list[str], resolution: int) -> float:
    """Seconds to decode and preprocess every key once (in this process, one thread)."""
    spec = ImageSpec(resolution=resolution)
    start = time.perf_counter()
    for key in keys:
        preprocess(load_image(root, key), spec)
    return time.perf_counter() - start


def _per_core(root: Path, keys: list[str], *, resolution: int, rounds: int) -> float:
    _decode_all(str(root), keys, resolution)  # warm the page cache
    best = min(_decode_all(str(root), keys, resolution) for _ in range(rounds))
    return len(keys) / best


def _all_cores(root: Path, keys: list[str], *, resolution: int, rounds: int, processes: int) -> float:
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_decode_all, [str(root)] * processes, [keys] * processes, [resolution] * processes))
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            list(pool.map(_decode_all, [str(root)] * processes, [keys] * processes, [resolution] * processes))
            best = min(best, time.perf_counter() - start)
    return processes * len(keys) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = ensure_sample(bundled_sample_dir()).image_root
    keys = _image_keys(root)
    sizes = [load_image(root, k).size for k in keys]
    megapixels = sum(w * h for w, h in sizes) / len(sizes) / 1e6
    per_core = _per_core(root, keys, resolution=args.resolution, rounds=args.rounds)
    cores = os.cpu_count() or 1
    together = _all_cores(root, keys, resolution=args.resolution, rounds=args.rounds, processes=cores)
    print(markdown_table(["measure", "images/s"], [
        ["one core (one process, one thread)", f"{per_core:.1f}"],
        [f"{cores} processes together", f"{together:.1f} ({together / cores:.1f} per core)"]]))
    path = write_results("decode", {
        "images_per_s_per_core": per_core, "images_per_s_all_cores": together, "cores": cores,
        "resolution": args.resolution, "images": len(keys), "mean_source_megapixels": megapixels})
    print(f"\n{len(keys)} images, mean {megapixels:.2f} MP, to {args.resolution} px; wrote {path}")
    print(f"extraction dry runs on this machine: decode_rate={per_core:.0f} (an extraction config field)")


if __name__ == "__main__":
    main()
