"""Throughput against a device's dense bf16 peak (`just bench-gpu`): the peak of a known GPU by its name,
FLOPs counted with `FlopCounterMode`, synchronised wall times, peak memory, and a batch-size sweep that ends
cleanly at the first CUDA out-of-memory error or at a deadline."""
from __future__ import annotations

import gc
import time
from typing import Any, Callable, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from stages.flops import GPUS

__all__ = ["known_gpu", "counted_gflop", "mean_seconds", "reset_peak_memory", "peak_memory_gib", "release_memory",
           "sweep", "achieved"]

# A substring of `torch.cuda.get_device_name()` -> its `stages.flops.GPUS` entry, first match first. NVL
# boards (H100 NVL, H200 NVL) run other clocks than the SXM parts: they are left to --peak-tflops.
_DEVICE_NAMES = (("H200", "h200"), ("H100 PCIE", "h100-pcie"), ("H100", "h100-sxm"), ("A100", "a100"),
                 ("L40S", "l40s"), ("A10G", "a10g"), ("RTX 4090", "rtx4090"))


def known_gpu(device_name: str) -> str | None:
    """The `GPUS` key of a CUDA device name ("NVIDIA H100 80GB HBM3" -> "h100-sxm"), None if not in the table."""
    name = device_name.upper()
    if "NVL" in name:
        return None
    return next((key for part, key in _DEVICE_NAMES if part in name and key in GPUS), None)


def counted_gflop(fn: Callable[[], Any]) -> float:
    """GFLOP of the matrix products and convolutions `fn` runs (a multiply-add is 2). Attention is counted
    through SDPA's math backend, whose matmuls every device and the meta device count alike (the fused CPU
    kernel is invisible to `FlopCounterMode`); causal attention counts in full, as the math backend computes it."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def mean_seconds(fn: Callable[[], Any], *, repeats: int, device: torch.device) -> float:
    """Mean wall time of `repeats` calls of `fn` timed as one block, from an idle CUDA device until the kernels
    they queued have finished. (An extraction's stage rates come from `FeatureEncoder.seconds`, which adds up
    the same calls, so the parts never exceed the whole.)"""
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _synchronize(device)
    return (time.perf_counter() - start) / repeats


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """Most memory held by tensors on a CUDA `device` since `reset_peak_memory` (None elsewhere)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def release_memory(device: torch.device) -> None:
    """Drop unreachable tensors and hand the CUDA caching allocator's free blocks back."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sweep(measure: Callable[[int], dict[str, Any]], batches: Sequence[int], *, deadline: float,
          device: torch.device) -> tuple[list[dict[str, Any]], str]:
    """`measure(batch)` for each batch size in turn; (rows, why it stopped): the last batch size was measured,
    the next one ran out of CUDA memory, or `time.monotonic()` passed `deadline` before it started."""
    rows: list[dict[str, Any]] = []
    for batch in batches:
        if time.monotonic() >= deadline:
            return rows, f"time budget spent before batch {batch}"
        try:
            rows.append(measure(batch))
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True
        else:
            out_of_memory = False
        if out_of_memory:  # outside the handler: its traceback no longer holds the batch's tensors
            release_memory(device)
            return rows, f"out of memory at batch {batch}"
    return rows, f"largest batch {batches[-1]} done" if batches else "no batch sizes"


def achieved(gflop_per_item: float, items_per_s: float, peak_tflops: float | None) -> tuple[float, float | None]:
    """(TFLOP/s delivered, fraction of `peak_tflops`, None without a peak)."""
    tflops = gflop_per_item * items_per_s / 1e3
    return tflops, (tflops / peak_tflops if peak_tflops else None)
