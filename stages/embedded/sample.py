"""Bundled sample data in LLaVA format, written from the photos that ship inside scikit-image.

`ensure_sample(root)` writes (once; idempotent, atomic like every embedded artefact) an image folder and
two JSON files shaped like the real ones:

- `pretrain.json`, 558k style: 24 samples, keys like `00453/004539375.jpg`, one human/gpt turn
  (`"<image>\\n<instruction>"` -> caption), id = the file stem;
- `sft.json`, mix665k style: 32 samples: 28 over 14 images under `coco/train2017/`, `gqa/images/`,
  `ocr_vqa/images/`, `textvqa/train_images/`, `vg/VG_100K/`, `vg/VG_100K_2/` (each image used by two
  samples, and their ids repeat, as in mix665k), multi-turn, `<image>` at the start or at the end of the
  first human turn; plus 4 text-only samples with no `image` key.

Images are crops and resizes in varied sizes and aspect ratios (one 6.4:1 wide, one 1:5.8 tall, one 9:1
strip), colour and greyscale JPEGs, one RGBA PNG, and two JPEGs whose EXIF orientation (6 and 8) must be
applied to see them upright; captions and answers describe the upright view and were written by hand.

Default location: `bundled_sample_dir()` materialises it as `embedded:sample` under the embedded home
(`$DFC_EMBEDDED_HOME`, see `stages.embedded`), never relative to the working directory; callers that
want it elsewhere pass their own root to `ensure_sample`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from stages.embedded import materialize, register_embedded, resolve_model
from stages.embedded.sample_content import INSTRUCTIONS, PRETRAIN, SFT, SFT_IMAGES, SampleImage

__all__ = ["VERSION", "SamplePaths", "ensure_sample", "bundled_sample_dir", "sample_paths", "photo"]

VERSION = 2
# EXIF orientation -> the transpose that stores an upright image so that `ImageOps.exif_transpose` undoes it.
_STORE_TRANSPOSE = {6: "ROTATE_90", 8: "ROTATE_270"}


@dataclass(frozen=True)
class SamplePaths:
    """Where the sample lives: image keys in both JSON files are relative to `image_root`."""

    image_root: Path
    pretrain_json: Path
    sft_json: Path


def sample_paths(root: Path) -> SamplePaths:
    """The file layout under a sample root (does not create anything)."""
    root = Path(root)
    return SamplePaths(image_root=root / "images", pretrain_json=root / "pretrain.json",
                       sft_json=root / "sft.json")


def photo(source: str):
    """A scikit-image sample photo as a PIL image (only files shipped in the wheel; no pooch download)."""
    import numpy as np
    import skimage.data
    from PIL import Image

    if source == "motorcycle":
        return Image.fromarray(skimage.data.stereo_motorcycle()[0])
    pixels = getattr(skimage.data, source)()
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    return Image.fromarray(pixels)


def _clear_outside_circle(im):
    """Transparent black outside the inscribed circle: the usual RGBA edge case (alpha 0, colour 0)."""
    import numpy as np
    from PIL import Image

    pixels = np.array(im)  # (H, W, 4)
    h, w = pixels.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    outside = (xx + 0.5 - w / 2) ** 2 + (yy + 0.5 - h / 2) ** 2 > (0.48 * min(w, h)) ** 2
    pixels[outside] = 0
    return Image.fromarray(pixels, mode="RGBA")


def _write_image(spec: SampleImage, image_root: Path) -> None:
    from PIL import Image

    im = photo(spec.source)
    w, h = im.size
    left, top, right, bottom = spec.box
    im = im.crop((round(left * w), round(top * h), round(right * w), round(bottom * h)))
    im = im.convert(spec.mode).resize(spec.size, Image.Resampling.BICUBIC)
    if spec.clear_outside_circle:
        im = _clear_outside_circle(im)
    path = image_root / spec.key
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        im.save(path, format="PNG")
        return
    exif = Image.Exif()
    if spec.orientation != 1:
        im = im.transpose(getattr(Image.Transpose, _STORE_TRANSPOSE[spec.orientation]))
        exif[0x0112] = spec.orientation  # Orientation
    im.save(path, format="JPEG", quality=90, exif=exif.tobytes())


def _turns(rounds: tuple[tuple[str, str], ...], *, image: bool, image_last: bool) -> list[dict[str, str]]:
    turns = []
    for i, (human, gpt) in enumerate(rounds):
        if i == 0 and image:
            human = f"{human}\n<image>" if image_last else f"<image>\n{human}"
        turns += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return turns


def _records() -> tuple[list[dict], list[dict]]:
    pretrain = [
        {"id": Path(spec.key).stem, "image": spec.key,
         "conversations": _turns(((INSTRUCTIONS[i % len(INSTRUCTIONS)], caption),), image=True,
                                 image_last=False)}
        for i, (spec, caption) in enumerate(PRETRAIN)
    ]
    sft = []
    for conv in SFT:
        if conv.image is None:
            record: dict = {"id": conv.text_id}
        else:
            key = SFT_IMAGES[conv.image].key
            record = {"id": Path(key).stem, "image": key}
        has_image = conv.image is not None
        record["conversations"] = _turns(conv.rounds, image=has_image, image_last=conv.image_last)
        sft.append(record)
    return pretrain, sft


def _build(root: Path) -> None:
    paths = sample_paths(root)
    for spec in [spec for spec, _ in PRETRAIN] + list(SFT_IMAGES.values()):
        _write_image(spec, paths.image_root)
    pretrain, sft = _records()
    for path, records in ((paths.pretrain_json, pretrain), (paths.sft_json, sft)):
        path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def ensure_sample(root: Path) -> SamplePaths:
    """Write the sample under `root` unless a complete copy is there; return its paths.

    `root` may be missing or an empty directory; a non-empty directory without the completion
    manifest is refused (see `stages.embedded.materialize`).
    """
    materialize(Path(root), _build)
    return sample_paths(root)


def bundled_sample_dir() -> Path:
    """Root of the default sample, materialised once as `embedded:sample` under the embedded home.

    `ensure_sample(bundled_sample_dir())` gives its paths; nothing is written relative to the CWD.
    """
    return Path(resolve_model("embedded:sample"))


register_embedded("sample", version=VERSION, build_fn=_build)
