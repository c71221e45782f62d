"""`just bench-train`: the diffusion compute a training sample costs, and measured step and loader rates.

1. GFLOP per training sample at 512 px on the full-size SD 2.1-base architecture (FlopCounterMode, meta
   device): pretraining from the cache (none), SFT with question guidance s = 4 from cached latents
   (text encoder + U-Net stopped after U-L1-R1-B0-Cross-Q), and the naive on-the-fly recipe (VAE encode +
   full unconditional U-Net + text encoder + full conditional U-Net, every step).
2. Measured on this machine through `train.cli.prepare`/`run` (the DeepSpeed loop), on the bundled sample
   store of configs/extract/sample.yaml: seconds per step and samples/s, cached vs on the fly
   (`stages.serving.SpecFeatures` computing every key: VAE + U-Net in the data loader), for the tiny LLM
   and a mid-size Llama (hidden 512, 4 layers); and the data loader alone (samples/s) next to the step rate.

    python -m benchmarks.bench_train [--cache-root cache] [--steps 6]
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from benchmarks.bench_extract import count_flops  # noqa: E402
from benchmarks.bench_extract import flop_table as extract_flop_table  # noqa: E402
from benchmarks.common import markdown_table, write_results  # noqa: E402
from benchmarks.sd21 import sd21_base_modules  # noqa: E402
from stages.locations import DEFAULT_CACHE_ROOT  # noqa: E402

TAP = "U-L1-R1-B0-Cross-Q"
SCALE = 4.0
EXTRACT_YAML = "configs/extract/sample.yaml"


def flop_table() -> dict[str, float]:
    """Diffusion GFLOP per training sample at 512 px (SD 2.1-base, batch of one); the U-Net figures are
    `bench_extract`'s (the tap's through `SDExtractor`'s early exit, as the trainer runs it)."""
    extract = extract_flop_table()
    text_encoder = sd21_base_modules("meta")["text_encoder"]
    with torch.device("meta"):
        ids = torch.zeros(1, 77, dtype=torch.long)
    parts = {"vae_encode": extract["VAE encode"], "unet_full": extract["U-Net (full)"],
             "unet_to_tap": extract[f"U-Net to {TAP}"], "text_encoder": count_flops(lambda: text_encoder(ids))}
    return {**parts,
            "pretrain_cached": 0.0,
            "sft_guided_cached": parts["text_encoder"] + parts["unet_to_tap"],
            "sft_guided_naive": parts["vae_encode"] + 2 * parts["unet_full"] + parts["text_encoder"]}


def mid_llm(root: Path) -> str:
    """A Llama with hidden 512 and 4 layers (random weights) sharing the tiny LLM's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from stages.embedded import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("embedded:tiny-llm"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return str(root)


def _loader_rate(prepared: Any, *, epochs: int = 2) -> float:
    """Samples/s of the data loader alone (reads + collate) over whole epochs, each epoch's first batch
    (worker start-up) excluded."""
    elapsed, samples = 0.0, 0
    for _ in range(epochs):
        loader = iter(prepared.make_loader(prepared.sampler))
        next(loader)
        started = time.perf_counter()
        samples += sum(len(batch) for batch in loader)
        elapsed += time.perf_counter() - started
    return samples / elapsed


def measure(stage: str, *, model: str, on_the_fly: bool, cache_root: str, steps: int, out: Path) -> dict[str, float]:
    from train.cli import prepare, run
    from train.config import load_stage_config
    from stages.cache_spec import cache_spec_from_yaml
    from stages.serving import SpecFeatures
    from train.stores import resolve_data_path

    overrides = [f"model={model}", f"max_steps={steps}", "save_every=0", f"output_dir={out}",
                 f"data.cache_root={cache_root}", "pretrained_adapter="]
    config = load_stage_config(stage, overrides)
    source = None
    if on_the_fly:
        _, image_root = resolve_data_path(config.data.data_path)
        source = SpecFeatures(cache_spec_from_yaml(EXTRACT_YAML)[0], image_root=image_root, compute_missing=True)
    prepared = prepare(config, source=source)
    loader_rate = _loader_rate(prepared)  # leaves the model and the RNGs alone; `train` repositions the sampler
    history = run(prepared).history[1:]  # step 1: warm-up (lazy U-Net load, allocations)
    step_rate = statistics.median(m.samples_per_s for m in history)
    batch = config.per_device_batch_size * config.gradient_accumulation_steps
    return {"step_s": batch / step_rate, "step_samples_per_s": step_rate, "loader_samples_per_s": loader_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-root", default=DEFAULT_CACHE_ROOT, help="where `just extract` put the sample store")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    from train.stores import locate_stores
    from train.config import DataConfig

    locate_stores(DataConfig(extract_configs=(EXTRACT_YAML,), cache_root=args.cache_root))  # fail fast, with the fix
    flops = flop_table()
    print(markdown_table(["per training sample (512 px, SD 2.1-base)", "diffusion GFLOP"], [
        ["pretrain, features from the cache", f"{flops['pretrain_cached']:.0f}"],
        [f"SFT s={SCALE:g}, cached latents (text encoder + U-Net to {TAP})", f"{flops['sft_guided_cached']:.0f}"],
        ["SFT s=4, naive on the fly (VAE + 2 full U-Nets + text encoder)", f"{flops['sft_guided_naive']:.0f}"],
        ["naive / cached (SFT)", f"{flops['sft_guided_naive'] / flops['sft_guided_cached']:.1f}x"]]))
    rows, measured = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"tiny (hidden 64, 2 layers)": "embedded:tiny-llm",
                  "mid (hidden 512, 4 layers)": mid_llm(Path(tmp) / "mid-llm")}
        for label, model in models.items():
            for stage in ("pretrain", "sft"):
                for on_the_fly in (False, True):
                    mode = "on the fly" if on_the_fly else "cached"
                    result = measure(stage, model=model, on_the_fly=on_the_fly, cache_root=args.cache_root,
                                     steps=args.steps, out=Path(tmp) / f"{len(measured)}")
                    measured[f"{label} | {stage} | {mode}"] = result
                    rows.append([label, stage, mode, f"{result['step_s']:.3f}", f"{result['step_samples_per_s']:.1f}",
                                 f"{result['loader_samples_per_s']:.1f}"])
    print()
    print(markdown_table(["LLM", "stage", "features", "s/step", "step samples/s", "loader samples/s"], rows))
    path = write_results("train", {"gflop_per_sample": flops, "measured": measured, "steps": args.steps,
                                   "store": EXTRACT_YAML, "threads": torch.get_num_threads()})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
