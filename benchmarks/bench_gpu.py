"""`just bench-gpu`: extraction and LLM training throughput per batch size against the device's dense bf16 peak.

For each backbone (SD 2.1-base, SDXL-base) the extraction worker's per-batch call (`gpu_workloads.extract`)
is timed on batch sizes 1, 2, 4, ... until CUDA runs out of memory, the list ends or the time budget is
spent: images/s end to end (the mean of `--repeats` calls after `--warmup`), the VAE's and the U-Net pass's
own rates (`FeatureEncoder.seconds` over the same calls), peak memory, and the fraction of the peak that
the FLOPs counted in a call on one image reach. Then the same for a training step of a Llama-7B-shaped
LLM (`--llm-layers` decoder layers), in tokens/s.

On CUDA it runs full size in bf16 (`--precision`), the models built with random weights on the device;
elsewhere the bundled sample's tiny models in float32, so the code path stays exercised (`--size`).
Writes `gpu.json` and `gpu.md` to `--out` (default `benchmarks/results/`).

    python -m benchmarks.bench_gpu [--size auto|full|tiny] [--budget-s 900] [--out DIR] [--peak-tflops X]
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Sequence  # noqa: E402

import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from benchmarks.common import RESULTS, write_results  # noqa: E402
from benchmarks.gpu_report import report  # noqa: E402
from benchmarks.gpu_workloads import (BACKBONES, build_llm, compile_regions, extract, extraction_gflop,  # noqa: E402
                                      extraction_inputs, llm_batch, llm_parameters, load_encoder, train_step)
from benchmarks.throughput import (achieved, counted_gflop, known_gpu, mean_seconds,  # noqa: E402
                                   peak_memory_gib, release_memory, reset_peak_memory, sweep)
from stages.errors import UserError, print_user_error  # noqa: E402
from stages.flops import GPUS  # noqa: E402
from stages.models import PRECISIONS, default_device, resolve_precision  # noqa: E402

SDPA = {"auto": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
LARGEST_BATCH = {True: 128, False: 4}  # default sweep end: full size, reduced size


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(BACKBONES), default=sorted(BACKBONES))
    parser.add_argument("--size", choices=("auto", "full", "tiny"), default="auto",
                        help="full-size models (auto: on CUDA) or the embedded tiny ones")
    parser.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    parser.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                        help="auto: bf16 on CUDA, fp32 on CPU (the VAE keeps the loader's dtype)")
    parser.add_argument("--resolution", type=int, help="image side (default: the extraction config's)")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes, ascending (default: 1, 2, 4 ... "
                        f"{LARGEST_BATCH[True]} at full size, ... {LARGEST_BATCH[False]} reduced)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per batch size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per batch size first")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the VAE encoder and the U-Net blocks that hold no tap")
    parser.add_argument("--channels-last", action="store_true", help="U-Net and VAE in channels-last memory format")
    parser.add_argument("--sdpa", choices=sorted(SDPA), default="auto", help="restrict SDPA to one backend")
    parser.add_argument("--llm-layers", type=int, default=4, help="Llama-7B-shaped decoder layers (0: no LLM step)")
    parser.add_argument("--llm-seq", type=int, help="tokens per sequence (default 2048 full size, 128 reduced)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of this device (default: known GPUs)")
    parser.add_argument("--budget-s", type=float, default=900.0, help="stop sweeping once this much time is spent")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for gpu.json and gpu.md")
    args = parser.parse_args(argv)
    if args.batches and (min(args.batches) < 1 or sorted(args.batches) != args.batches):
        parser.error("--batches must be positive and ascending")
    if args.repeats < 1 or args.warmup < 0 or args.llm_layers < 0 or args.budget_s <= 0:
        parser.error("--repeats must be >= 1, --warmup and --llm-layers >= 0, --budget-s > 0")
    if args.resolution is not None and args.resolution < 1 or args.llm_seq is not None and args.llm_seq < 1:
        parser.error("--resolution and --llm-seq must be positive")
    return args


def describe_device(device: torch.device, peak_tflops: float | None) -> dict[str, Any]:
    """Name, memory and dense bf16 peak (`--peak-tflops`, else the table of `stages.flops.GPUS`, else None)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        memory = torch.cuda.get_device_properties(device).total_memory / 2**30
    else:
        name, memory = platform.processor() or platform.machine(), None
    gpu = known_gpu(name) if device.type == "cuda" else None
    if peak_tflops is not None:
        peak, source = peak_tflops, "--peak-tflops"
    else:
        peak, source = (GPUS[gpu].peak_tflops, f"stages.flops.GPUS[{gpu!r}]") if gpu else (None, None)
    return {"type": device.type, "name": name, "memory_gib": memory, "peak_tflops": peak, "peak_source": source}


def attention(choice: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if SDPA[choice] is None else sdpa_kernel(SDPA[choice])


@dataclass(frozen=True)
class Run:
    """What every section of one benchmark run shares."""

    args: argparse.Namespace
    device: torch.device
    dtype: torch.dtype
    full: bool
    peak: float | None  # dense bf16 TFLOP/s
    batches: tuple[int, ...]

    def warm_up(self, fn: Callable[[], Any]) -> None:
        """`--warmup` untimed calls of `fn` (the first call of a batch size allocates and, compiled, compiles)."""
        with attention(self.args.sdpa):
            for _ in range(self.args.warmup):
                fn()

    def timed(self, fn: Callable[[], Any]) -> float:
        """Mean seconds of `--repeats` calls of `fn` under the chosen SDPA backend."""
        with attention(self.args.sdpa):
            return mean_seconds(fn, repeats=self.args.repeats, device=self.device)


def extraction_section(name: str, run: Run, *, deadline: float) -> dict[str, Any]:
    backbone = BACKBONES[name]
    encoder = load_encoder(backbone, full=run.full, device=run.device, dtype=run.dtype,
                           resolution=run.args.resolution)
    spec, parts = encoder.spec, encoder.components
    if run.args.channels_last:
        for module in (parts.unet, parts.vae):
            module.to(memory_format=torch.channels_last)
    gflop = extraction_gflop(encoder)
    gflop["total"] = gflop["vae"] + gflop["unet"]
    processors = sorted({type(p).__name__ for m in (parts.unet, parts.vae) for p in m.attn_processors.values()})
    if run.args.compile:
        compile_regions(encoder)

    def measure(batch: int) -> dict[str, Any]:
        images, keys, prompts = extraction_inputs(spec, batch)
        reset_peak_memory(run.device)
        run.warm_up(lambda: extract(encoder, images, keys, prompts))
        before = Counter(encoder.seconds)
        seconds = run.timed(lambda: extract(encoder, images, keys, prompts))
        stages = {stage: (encoder.seconds[stage] - before[stage]) / run.args.repeats for stage in ("vae", "unet")}
        row: dict[str, Any] = {"batch": batch, "peak_memory_gib": peak_memory_gib(run.device)}
        for part, part_seconds in {"total": seconds, **stages}.items():
            prefix = "" if part == "total" else f"{part}_"
            rate = batch / part_seconds
            tflops, fraction = achieved(gflop[part], rate, run.peak)
            row |= {f"{prefix}images_per_s": rate, f"{prefix}tflops": tflops, f"{prefix}fraction_of_peak": fraction}
        return row

    rows, stopped = sweep(measure, run.batches, deadline=deadline, device=run.device)
    return {"config": backbone.config if run.full else backbone.sample_config,
            "model": spec.model + (" (random weights)" if run.full else ""), "resolution": spec.resolution,
            "features": list(spec.features), "timesteps": list(spec.timesteps),
            "prompt_sources": list(spec.prompt_sources), "attention": processors,
            "dtypes": {"unet": str(parts.unet.dtype), "vae": str(parts.vae.dtype)},
            "parameters_m": {"unet": _millions(parts.unet), "vae": _millions(parts.vae)},
            "gflop_per_image": gflop, "rows": rows, "stopped": stopped}


def llm_section(run: Run, *, deadline: float) -> dict[str, Any]:
    layers, device = run.args.llm_layers, run.device
    if run.full and device.type == "cuda":
        need, free = 2 * run.dtype.itemsize * llm_parameters(layers), torch.cuda.mem_get_info(device)[0]
        if need > free:
            return {"skipped": f"{layers} Llama-7B layers need {need / 2**30:.1f} GiB for weights and gradients "
                               f"alone, {free / 2**30:.1f} GiB are free"}
    try:
        llm = build_llm(full=run.full, layers=layers, device=device, dtype=run.dtype)
    except torch.cuda.OutOfMemoryError:
        llm = None
    if llm is None:  # outside the handler: its traceback no longer holds the partly built model
        release_memory(device)
        return {"skipped": f"out of memory building {layers} Llama-7B layers"}
    length = min(run.args.llm_seq or (2048 if run.full else 128), llm.config.max_position_embeddings)
    gflop_per_token = counted_gflop(lambda: train_step(llm, llm_batch(llm, batch=1, length=length))) / length

    def measure(batch: int) -> dict[str, Any]:
        data = llm_batch(llm, batch=batch, length=length)
        reset_peak_memory(device)
        run.warm_up(lambda: train_step(llm, data))
        rate = batch * length / run.timed(lambda: train_step(llm, data))
        tflops, fraction = achieved(gflop_per_token, rate, run.peak)
        return {"batch": batch, "tokens_per_s": rate, "peak_memory_gib": peak_memory_gib(device), "tflops": tflops,
                "fraction_of_peak": fraction}

    rows, stopped = sweep(measure, run.batches, deadline=deadline, device=device)
    config = llm.config
    shape = {k: getattr(config, k) for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                             "num_hidden_layers", "vocab_size")}
    return {"model": "Llama-7B shapes (random weights)" if run.full else "embedded:tiny-llm", "shape": shape,
            "parameters_m": _millions(llm), "dtype": str(llm.dtype), "attention": config._attn_implementation,
            "sequence_length": length, "gflop_per_token": gflop_per_token, "rows": rows, "stopped": stopped}


def _millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    device = default_device() if args.device == "auto" else torch.device(args.device)
    full = args.size == "full" or (args.size == "auto" and device.type == "cuda")
    described = describe_device(device, args.peak_tflops)
    run = Run(args, device, resolve_precision(args.precision, device), full, described["peak_tflops"],
              tuple(args.batches or (2**i for i in range(LARGEST_BATCH[full].bit_length()))))
    settings = {"size": "full" if full else "tiny", "dtype": str(run.dtype), "batches": list(run.batches),
                "repeats": args.repeats, "warmup": args.warmup, "compile": args.compile,
                "channels_last": args.channels_last, "sdpa": args.sdpa, "budget_s": args.budget_s}
    payload: dict[str, Any] = {"device": described, "settings": settings, "extraction": {}, "llm": None}
    sections = [*dict.fromkeys(args.models), *(["llm"] if args.llm_layers else [])]
    end = time.monotonic() + args.budget_s
    for i, section in enumerate(sections):  # each section gets an equal share of the time left
        deadline = time.monotonic() + (end - time.monotonic()) / (len(sections) - i)
        print(f"bench-gpu: {section} ({settings['size']}, {run.dtype}) on {described['name']}", flush=True)
        if section == "llm":
            payload["llm"] = llm_section(run, deadline=deadline)
        else:
            payload["extraction"][section] = extraction_section(section, run, deadline=deadline)
        release_memory(device)
        path = write_results("gpu", payload, root=args.out)  # after every section: a killed run keeps the rest
        table = report(payload)
        (args.out / "gpu.md").write_text(table + "\n")
    print(f"{table}\n\nwrote {path} and {args.out / 'gpu.md'}")
    return path


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:  # a resolution the models cannot down-sample evenly, say: one line
        sys.exit(print_user_error("bench-gpu", exc))
