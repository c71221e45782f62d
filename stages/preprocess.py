"""Image loading and preprocessing (DESIGN §3): decode, EXIF-transpose, RGB, pad/crop/stretch, resize.

`read_image` is the only place that opens user images: it refuses keys that escape the image root
(`stages.image_files.safe_image_path`) and caps the decoded size (decompression bombs), raising `ImageError` with a reason the caller records, and
stamps the bytes it decoded (`stages.image_files`), so a store can tell later whether the file changed.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from stages.config import ConfigError
from stages.image_files import ImageError, ImageStamp, safe_image_path

__all__ = ["ImageSpec", "read_image", "load_image", "preprocess", "to_tensor"]

CLIP_MEAN_RGB = (122, 116, 104)  # round(CLIP mean * 255): LLaVA-1.5's expand2square background
RESIZE_MODES = ("pad", "crop", "stretch")


@dataclass(frozen=True)
class ImageSpec:
    resolution: int = 512
    resize_mode: str = "pad"
    pad_color: tuple[int, int, int] = CLIP_MEAN_RGB
    max_pixels: int = 89_478_485  # PIL's default bomb threshold; larger images are refused

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"resize_mode {self.resize_mode!r} is not one of {RESIZE_MODES}")
        if len(self.pad_color) != 3 or not all(0 <= c <= 255 for c in self.pad_color):
            raise ConfigError(f"pad_color {self.pad_color!r} must be three integers in 0..255")
        if self.resolution <= 0:
            raise ConfigError(f"resolution must be positive, got {self.resolution}")


def read_image(root: str | Path, key: str, *, max_pixels: int = ImageSpec.max_pixels
               ) -> tuple[Image.Image, ImageStamp]:
    """Decode `root/key` fully into an RGB PIL image with EXIF orientation applied, and stamp its bytes.

    `ImageError` when the file cannot be used; its `stamp` is set when the bytes could be read (a file
    that does not decode), so that a file replaced later is seen to have changed."""
    path = safe_image_path(root, key)
    try:
        stat = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"missing image file {path}") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read image ({exc.strerror})") from exc
    stamp = ImageStamp.of(data, stat)
    if not data:
        raise ImageError(f"zero-byte image file {path}", stamp=stamp)
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > max_pixels:
                raise ImageError(f"{path}: {image.width}x{image.height} exceeds max_pixels={max_pixels}",
                                 stamp=stamp)
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB"), stamp
    except ImageError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ImageError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})", stamp=stamp) from exc


def load_image(root: str | Path, key: str, *, max_pixels: int = ImageSpec.max_pixels) -> Image.Image:
    """`read_image` without the stamp."""
    return read_image(root, key, max_pixels=max_pixels)[0]


def preprocess(image: Image.Image, spec: ImageSpec) -> Image.Image:
    """Pad to square (LLaVA-1.5 `expand2square`), centre-crop or stretch, then BICUBIC-resize."""
    width, height = image.size
    if spec.resize_mode == "pad" and width != height:
        side = max(width, height)
        canvas = Image.new("RGB", (side, side), tuple(spec.pad_color))
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        image = canvas
    elif spec.resize_mode == "crop" and width != height:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    return image.resize((spec.resolution, spec.resolution), Image.BICUBIC)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, R, R) float32 in [-1, 1]: `pixels / 255 * 2 - 1`."""
    array = np.asarray(image, dtype=np.float32)  # (R, R, 3)
    return torch.from_numpy(array / 255.0 * 2.0 - 1.0).permute(2, 0, 1).contiguous()
