"""`embedded:tiny-clip-vision`: a small `CLIPVisionModel` (ViT) plus its `CLIPImageProcessor` config.

Stands in for LLaVA-1.5's CLIP ViT-L/14-336 vision tower: same classes and preprocessing (resize the
short side, centre crop, CLIP mean/std), patch size 14, but 224 px input (16×16 = 256 patch tokens, the
default token grid) and a 64-wide, 3-layer encoder with seeded random weights (`stages.embedded.weights`). Load with
`CLIPVisionModel.from_pretrained(dir)` and `CLIPImageProcessor.from_pretrained(dir)`.
"""
from __future__ import annotations

from pathlib import Path

from stages.embedded import register_embedded
from stages.embedded.weights import save_model, seeded_model, write_json

__all__ = [
    "NAME", "VERSION", "VISION_CONFIG", "PROCESSOR_CONFIG", "CLIP_MEAN", "CLIP_STD", "build_tiny_clip_vision",
]

NAME = "tiny-clip-vision"
VERSION = 2  # 2: weights from stages.embedded.weights, configs without version stamps
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

VISION_CONFIG = {  # ViT-L/14-336: hidden 1024, 24 layers, 16 heads, image 336
    "image_size": 224,
    "patch_size": 14,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "projection_dim": 64,
    "hidden_act": "quick_gelu",
}
PROCESSOR_CONFIG = {  # the fields of openai/clip-vit-large-patch14-336's preprocessor_config.json
    "image_processor_type": "CLIPImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": VISION_CONFIG["image_size"]},
    "resample": 3,  # bicubic
    "do_center_crop": True,
    "crop_size": {"height": VISION_CONFIG["image_size"], "width": VISION_CONFIG["image_size"]},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": list(CLIP_MEAN),
    "image_std": list(CLIP_STD),
    "do_convert_rgb": True,
}


def build_tiny_clip_vision(out: Path) -> None:
    """Write `config.json`, `model.safetensors` and `preprocessor_config.json` into `out`."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    out = Path(out)
    model = seeded_model(lambda: CLIPVisionModel(CLIPVisionConfig(**VISION_CONFIG)), namespace=NAME)
    save_model(model, out, weights_name="model.safetensors")
    write_json(out / "preprocessor_config.json", PROCESSOR_CONFIG)


register_embedded(NAME, version=VERSION, build_fn=build_tiny_clip_vision)
