"""`just bench-analyze`: what the analyses cost.

1. Image–text matching, U-Net GFLOP per (image, text) pair on the full-size SD 2.1-base architecture
   (`FlopCounterMode`, meta device, 512 px): one pass with the capture processors stopping after the deepest
   default layer (every attn2 at 16x16 and coarser) vs a full forward, times the paper's 5 timesteps x 3
   trials; and the VAE encode those passes would add per image without cached latents (each image is
   scored against 2 texts in MMVP-VLM and Winoground).
2. CKA throughput on a store (samples/s): Gram matrices accumulated block by block from the store
   (`analysis.cka.gram_matrices`, two blocks in memory) vs reading every sample first.

    python -m benchmarks.bench_analyze [--n 512] [--block 128] [--workdir DIR]
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from analysis.cka import cka_from_grams, gram, gram_matrices  # noqa: E402
from analysis.itm import DEFAULT_TIMESTEPS, ITM_MIN_STRIDE  # noqa: E402
from benchmarks.bench_extract import count_flops  # noqa: E402
from benchmarks.bench_store import activations  # noqa: E402
from benchmarks.common import best_seconds_interleaved, markdown_table, write_results  # noqa: E402
from benchmarks.sd21 import sd21_base_modules  # noqa: E402
from stages.attention import CrossAttentionCapture, cross_attention_layers  # noqa: E402
from stages.store import CacheStore, Fingerprint, StoreReader  # noqa: E402

TRIALS = 3
TEXTS_PER_IMAGE = 2  # MMVP-VLM and Winoground score each image against two texts
T, C = 256, 320  # CKA samples: a 16x16 grid of 320 channels (the level-0 width of SD)
ARRAYS = ("A@t50", "B@t50")


def itm_flops() -> dict[str, float]:
    modules = sd21_base_modules("meta")
    unet, vae = modules["unet"], modules["vae"]
    layers = cross_attention_layers(unet, min_stride=ITM_MIN_STRIDE)
    with torch.device("meta"):
        pixels, latents = torch.empty(1, 3, 512, 512), torch.empty(1, 4, 64, 64)
        text, t = torch.empty(1, 77, 1024), torch.full((1,), 389)

    def captured(early_exit: bool) -> None:
        with torch.no_grad(), CrossAttentionCapture(unet, layers, early_exit=early_exit).attached():
            unet(latents, t, encoder_hidden_states=text)

    passes = len(DEFAULT_TIMESTEPS) * TRIALS
    early, full = count_flops(lambda: captured(True)), count_flops(lambda: captured(False))
    with torch.no_grad():
        plain = count_flops(lambda: unet(latents, t, encoder_hidden_states=text))
    vae_gflop = count_flops(lambda: vae.encode(pixels))
    pair = passes * early
    return {"layers": [str(x) for x in layers], "deepest_layer": str(layers[-1]),
            "unet_pass_early_exit_gflop": early, "unet_pass_full_gflop": full, "unet_plain_forward_gflop": plain,
            "early_over_full": early / full, "capture_overhead": full / plain - 1, "passes_per_pair": passes,
            "pair_early_exit_gflop": pair, "pair_full_gflop": passes * full, "vae_encode_gflop_per_image": vae_gflop,
            "vae_share_if_encoded_per_image": vae_gflop / (vae_gflop + TEXTS_PER_IMAGE * pair),
            "vae_share_if_encoded_per_pair": vae_gflop / (vae_gflop + pair)}


def cka_store(work: Path, n: int) -> StoreReader:
    fingerprint = Fingerprint.from_fields({"bench": "analyze", "n": n})
    store = CacheStore.open_or_create(work / "cache", fingerprint=fingerprint, shard_size=128)
    store.add_keys([f"k{i}" for i in range(n)])
    for seed, array in enumerate(ARRAYS):
        store.ensure_array(array, sample_shape=(T, C))
    data = {a: activations(n, seed=s)[..., :C] for s, a in enumerate(ARRAYS)}
    for plan in store.shards():
        store.write_shard(plan.index, {a: v[plan.rows.start:plan.rows.stop] for a, v in data.items()})
    return StoreReader(store.path, expect=fingerprint)


def cka_throughput(reader: StoreReader, block: int) -> dict[str, float]:
    keys = reader.keys
    n, sample_bytes = len(keys), T * C * 2 * len(ARRAYS)

    def blockwise() -> float:
        grams = gram_matrices(lambda rows: reader.read(keys[rows], list(ARRAYS)), n,
                              [(a, a) for a in ARRAYS], block=block)
        return cka_from_grams(grams[ARRAYS[0], ARRAYS[0]], grams[ARRAYS[1], ARRAYS[1]])

    def load_all() -> float:
        values = reader.read(keys, list(ARRAYS))
        return cka_from_grams(gram(values[ARRAYS[0]]), gram(values[ARRAYS[1]]))

    assert abs(load_all() - blockwise()) < 1e-5  # the same CKA either way (and warm page cache and BLAS)
    seconds = best_seconds_interleaved({"load_all": load_all, "blockwise": blockwise}, repeats=3)
    return {"n": n, "block": block, "sample_shape": [T, C], "arrays": len(ARRAYS),
            "blockwise_samples_per_s": n / seconds["blockwise"], "load_all_samples_per_s": n / seconds["load_all"],
            "blockwise_fetches": len(range(0, n, block)) * (len(range(0, n, block)) + 1) // 2,
            "blockwise_feature_mb_in_memory": 2 * min(block, n) * sample_bytes / 1e6,
            "load_all_feature_mb_in_memory": n * sample_bytes / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    itm = itm_flops()
    print(markdown_table(["ITM, SD 2.1-base, 512 px", "GFLOP"], [
        ["U-Net pass, early exit after " + itm["deepest_layer"], f"{itm['unet_pass_early_exit_gflop']:.1f}"],
        ["U-Net pass, full forward (capturing)", f"{itm['unet_pass_full_gflop']:.1f}"],
        ["U-Net pass, plain full forward (no capture)", f"{itm['unet_plain_forward_gflop']:.1f}"],
        [f"per (image, text): {itm['passes_per_pair']} passes, early exit", f"{itm['pair_early_exit_gflop']:.0f}"],
        [f"per (image, text): {itm['passes_per_pair']} passes, full", f"{itm['pair_full_gflop']:.0f}"],
        ["VAE encode per image (saved by cached latents)", f"{itm['vae_encode_gflop_per_image']:.1f}"],
        [f"VAE share of an image's cost ({TEXTS_PER_IMAGE} texts) if encoded once per image",
         f"{itm['vae_share_if_encoded_per_image']:.3f}"],
        ["VAE share of a pair's cost if encoded for every pair", f"{itm['vae_share_if_encoded_per_pair']:.3f}"],
    ]))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-analyze-"))
    try:
        cka = cka_throughput(cka_store(work, args.n), args.block)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(markdown_table(["CKA of 2 arrays from a store", "samples/s", "features in memory (MB)"], [
        [f"blockwise, block {cka['block']}", f"{cka['blockwise_samples_per_s']:.0f}",
         f"{cka['blockwise_feature_mb_in_memory']:.0f}"],
        ["load all first", f"{cka['load_all_samples_per_s']:.0f}", f"{cka['load_all_feature_mb_in_memory']:.0f}"],
    ]))
    path = write_results("analyze", {"itm_512px_sd21_base": itm, "cka_store": cka})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
