"""The analyses' embedded defaults, built on first use under the embedded home (`stages.embedded`), atomically:
tiny MMVP-VLM and Winoground in their official layouts from the bundled photos, and a tiny full CLIP
(vision + text towers) for the baseline row. Bump a VERSION whenever its bytes change."""
from __future__ import annotations

import math
from pathlib import Path

from analysis.matching import MatchBenchmark
from analysis.mmvp_vlm import MMVP_VLM
from analysis.winoground import WINOGROUND
from stages.embedded import embedded_home, materialize

__all__ = ["BENCHMARKS", "EMBEDDED", "benchmark_root", "tiny_clip_dir"]

BENCHMARKS: dict[str, MatchBenchmark] = {b.name: b for b in (MMVP_VLM, WINOGROUND)}
EMBEDDED = "embedded"  # the value of --<benchmark> / --clip naming these defaults
_VERSIONS = {"mmvp-vlm": 1, "winoground": 1, "tiny-clip": 2}  # tiny-clip 2: stages.embedded.weights
TINY_CLIP_PROJECTION = 32  # != hidden size (64), so a missing projection shows up as a shape error


def _target(name: str) -> Path:
    return embedded_home() / f"analysis-{name}-v{_VERSIONS[name]}"


def benchmark_root(name: str, root: str | Path = EMBEDDED) -> Path:
    """`root` as given, or the embedded fixture of benchmark `name` when `root` is `embedded`."""
    if str(root) != EMBEDDED:
        return Path(root)
    return materialize(_target(name), BENCHMARKS[name].write_fixture)


def _build_tiny_clip(out: Path) -> None:
    """`CLIPModel` with the tiny SD text encoder's shape and tokenizer and the tiny CLIP vision tower's."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from stages.embedded.clip_vision import PROCESSOR_CONFIG, VISION_CONFIG
    from stages.embedded.sd import TEXT_ENCODER_CONFIG, write_clip_tokenizer
    from stages.embedded.weights import save_model, seeded_model, write_json

    ids = write_clip_tokenizer(out)
    config = CLIPConfig(text_config={**TEXT_ENCODER_CONFIG, **ids}, vision_config=VISION_CONFIG,
                        projection_dim=TINY_CLIP_PROJECTION)
    model = seeded_model(lambda: CLIPModel(config), namespace="analysis-tiny-clip")
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1 / 0.07))  # CLIP's initial temperature, not a random number
    save_model(model, out, weights_name="model.safetensors")
    write_json(out / "preprocessor_config.json", PROCESSOR_CONFIG)


def tiny_clip_dir(model: str = EMBEDDED) -> str:
    """`model` as given, or the embedded tiny CLIP's directory."""
    return model if model != EMBEDDED else str(materialize(_target("tiny-clip"), _build_tiny_clip))
