"""The markdown tables of `just bench-gpu`'s results (`gpu.md`), from the payload written to `gpu.json`."""
from __future__ import annotations

from typing import Any

from benchmarks.common import markdown_table

__all__ = ["report"]


def _number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _tflops(value: float) -> str:
    return f"{value:.3g}"  # three significant digits: a CPU run delivers thousandths


def _percent(*fractions: float | None) -> str:
    return " / ".join("n/a" if f is None else f"{100 * f:.1f}" for f in fractions)


def _extraction(name: str, result: dict[str, Any]) -> list[str]:
    gflop, dtypes = result["gflop_per_image"], result["dtypes"]
    lines = [f"**{name}** ({result['model']}, {result['resolution']} px, {result['config']}): "
             f"{len(result['features'])} features x {len(result['timesteps'])} timesteps, prompt sources "
             f"{result['prompt_sources'] or 'none'}; U-Net {dtypes['unet']}, VAE {dtypes['vae']}; attention "
             f"{', '.join(result['attention'])}; GFLOP / image: VAE {gflop['vae']:.4g}, U-Net pass "
             f"{gflop['unet']:.4g}, total {gflop['total']:.4g}; stopped: {result['stopped']}.", ""]
    rows = [[r["batch"], _number(r["images_per_s"], 2), _number(r["vae_images_per_s"], 2),
             _number(r["unet_images_per_s"], 2), _number(r["peak_memory_gib"]), _tflops(r["tflops"]),
             _percent(r["fraction_of_peak"], r["vae_fraction_of_peak"], r["unet_fraction_of_peak"])]
            for r in result["rows"]]
    header = ["batch", "images/s", "VAE images/s", "U-Net images/s", "peak GiB", "TFLOP/s",
              "% of peak (all / VAE / U-Net)"]
    return lines + [markdown_table(header, rows), ""]


def _llm(result: dict[str, Any]) -> list[str]:
    if "skipped" in result:
        return [f"**LLM training step**: skipped ({result['skipped']})."]
    shape = result["shape"]
    lines = [f"**LLM training step** ({result['model']}: {shape['num_hidden_layers']} layers, hidden "
             f"{shape['hidden_size']}, intermediate {shape['intermediate_size']}, {shape['num_attention_heads']} "
             f"heads, vocab {shape['vocab_size']}; {result['parameters_m']:.4g} M parameters, {result['dtype']}, "
             f"attention {result['attention']}; {result['sequence_length']} tokens per sequence, forward + backward "
             f"{result['gflop_per_token']:.4g} GFLOP / token; stopped: {result['stopped']}).", ""]
    rows = [[r["batch"], _number(r["tokens_per_s"], 0), _number(r["peak_memory_gib"]), _tflops(r["tflops"]),
             _percent(r["fraction_of_peak"])] for r in result["rows"]]
    return lines + [markdown_table(["sequences", "tokens/s", "peak GiB", "TFLOP/s", "% of peak"], rows)]


def report(payload: dict[str, Any]) -> str:
    device, settings = payload["device"], payload["settings"]
    peak = ("n/a (no known peak for this device; --peak-tflops sets one)" if device["peak_tflops"] is None
            else f"{device['peak_tflops']:g} TFLOP/s ({device['peak_source']})")
    lines = [f"Device: {device['name']} ({device['type']}"
             + (f", {device['memory_gib']:.0f} GiB" if device["memory_gib"] else "") + f"); dense bf16 peak: {peak}.",
             f"Size: {settings['size']}, {settings['dtype']}; compile {settings['compile']}, channels-last "
             f"{settings['channels_last']}, SDPA backend {settings['sdpa']}; mean of {settings['repeats']} calls "
             f"after {settings['warmup']} warm-up per batch size.", ""]
    for name, result in payload["extraction"].items():
        lines += _extraction(name, result)
    if payload["llm"] is not None:
        lines += _llm(payload["llm"])
    return "\n".join(lines).rstrip()
