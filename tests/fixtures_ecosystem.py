"""Fixture trees in the layouts users download (issue 22): small, generated, real photos (scikit-image, the
bundled sample's `photo`), so every image is decoded for real.

`build_llava_tree(root)` writes the two LLaVA-1.5 data sets as they are published and set up:

    root/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json      558k style: keys `00000/000000010.jpg`, id = stem
    root/LLaVA-Pretrain/images/00000/000000010.jpg ...
    root/playground/data/llava_v1_5_mix665k.json         mix665k style: every image source, text-only rows
                                                        (no `image` key), int ids, multi-turn, a
                                                        conversation ending on a human turn
    root/playground/data/coco -> root/shared/coco        source folders linked to folders kept elsewhere
    root/playground/data/gqa -> root/shared/gqa
    root/playground/data/ocr_vqa/images/...              one PNG under a `.jpg` name (as in OCR-VQA)
    root/playground/data/textvqa/train_images/...
    root/playground/data/vg/VG_100K/..., vg/VG_100K_2 -> root/shared/vg2   (a link one level down)

`add_hostile_json(tree)` writes a data file of keys a data file must not be allowed to use,
`add_unusable_json(tree)` one whose images cannot be extracted (a file that does not decode, a file that does
not exist), and `extract_mix665k` runs the extraction over all three (`tests/conftest.py`: `llava_tree`). Add
a layout by writing its files with `write_photo` and `link_folder` and returning paths the tests read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.embedded.sample import photo

__all__ = ["LlavaTree", "build_llava_tree", "write_photo", "link_folder", "add_hostile_json", "add_unusable_json",
           "extract_mix665k", "HOSTILE", "PRETRAIN_IMAGES", "MIX665K_IMAGES", "LINKED_FOLDERS", "PNG_AS_JPG",
           "TRAILING_HUMAN_ID", "UNDECODABLE", "ABSENT"]

# key -> (scikit-image photo, (w, h)); small, varied aspect ratios
PRETRAIN_IMAGES = {
    "00000/000000010.jpg": ("astronaut", (40, 40)),
    "00000/000000012.jpg": ("coffee", (48, 32)),
    "00001/000010044.jpg": ("chelsea", (30, 44)),
}
MIX665K_IMAGES = {
    "coco/train2017/000000033471.jpg": ("astronaut", (44, 36)),
    "coco/train2017/000000052846.jpg": ("rocket", (36, 48)),
    "gqa/images/2354786.jpg": ("coffee", (40, 30)),
    "ocr_vqa/images/140031996.jpg": ("camera", (32, 40)),
    "textvqa/train_images/0a0bc91825468c45.jpg": ("chelsea", (40, 40)),
    "vg/VG_100K/2.jpg": ("motorcycle", (48, 36)),
    "vg/VG_100K_2/1.jpg": ("astronaut", (36, 36)),
}
PNG_AS_JPG = "ocr_vqa/images/140031996.jpg"  # PNG bytes under a .jpg name
LINKED_FOLDERS = {"coco": "shared/coco", "gqa": "shared/gqa", "vg/VG_100K_2": "shared/vg2"}  # link -> target
TRAILING_HUMAN_ID = 1  # the mix665k record whose conversation ends on a human turn (an int id)
UNDECODABLE, ABSENT = "coco/train2017/000000099999.jpg", "gqa/images/404.jpg"  # add_unusable_json's images
# keys a data file must not use, with the cause the manifest gives; `{image_root}` is filled in
HOSTILE = {
    "../LLaVA-Pretrain/images/00000/000000010.jpg": "'..' in the path",
    "coco/../gqa/images/2354786.jpg": "'..' in the path",
    "{image_root}/gqa/images/2354786.jpg": "absolute path",
    "/etc/passwd": "absolute path",
}


@dataclass(frozen=True)
class LlavaTree:
    """Where `build_llava_tree` wrote things: each data set's JSON and image root."""

    root: Path
    pretrain_json: Path
    pretrain_root: Path
    sft_json: Path
    sft_root: Path


def write_photo(path: Path, source: str, size: tuple[int, int], *, fmt: str = "JPEG") -> Path:
    """A scikit-image photo resized to `size` (w, h), saved in `fmt` whatever `path`'s suffix says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(source).convert("RGB").resize(size).save(path, format=fmt)
    return path


def link_folder(link: Path, target: Path) -> None:
    """`link` -> `target` (created): a folder the user keeps elsewhere, linked into a data root."""
    target.mkdir(parents=True, exist_ok=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)


def _turns(*values: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def _mix665k_records() -> list[dict[str, Any]]:
    short = "\nAnswer the question using a single word or phrase."
    return [
        {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
         "conversations": _turns("<image>\nWho is in the picture?", "An astronaut in a white suit.",
                                 "What is behind the person?", "A flag.")},
        {"id": "000000052846", "image": "coco/train2017/000000052846.jpg",
         "conversations": _turns("What is shown in the image?\n<image>", "A rocket on its launch pad.")},
        {"id": "2354786", "image": "gqa/images/2354786.jpg",
         "conversations": _turns(f"<image>\nIs there a cup?{short}", "Yes", f"What is in the cup?{short}", "Coffee")},
        {"id": "140031996", "image": PNG_AS_JPG,
         "conversations": _turns("<image>\nWho wrote this book?", "Unknown", "Is this a photo?", "Yes")},
        {"id": "0a0bc91825468c45", "image": "textvqa/train_images/0a0bc91825468c45.jpg",
         "conversations": _turns("<image>\nProvide a one-sentence caption for the provided image.",
                                 "A cat lying on a blanket.")},
        {"id": 2, "image": "vg/VG_100K/2.jpg",
         "conversations": _turns("<image>\nProvide a short description for this region: [0.1, 0.2, 0.5, 0.9]",
                                 "A red motorcycle.")},
        {"id": TRAILING_HUMAN_ID, "image": "vg/VG_100K_2/1.jpg",
         "conversations": _turns("<image>\nWhat is the person wearing?", "A space suit.", "And the helmet?")},
        {"id": "i6IyJda_0", "model": "",
         "conversations": _turns("Write a haiku about caching.", "Features once computed / read again.")},
        {"id": 7, "conversations": _turns("What is 2 + 2?", "4.")},
    ]


def build_llava_tree(root: Path) -> LlavaTree:
    """The LLaVA-558k and mix665k layouts under `root` (see the module docstring)."""
    pretrain_root, sft_root = root / "LLaVA-Pretrain" / "images", root / "playground" / "data"
    for key, (source, size) in PRETRAIN_IMAGES.items():
        write_photo(pretrain_root / key, source, size)
    for link, target in LINKED_FOLDERS.items():
        link_folder(sft_root / link, root / target)
    for key, (source, size) in MIX665K_IMAGES.items():
        write_photo(sft_root / key, source, size, fmt="PNG" if key == PNG_AS_JPG else "JPEG")
    pretrain = [{"id": Path(key).stem, "image": key,
                 "conversations": _turns("<image>\nRender a clear and concise summary of the photo.", f"photo {i}")}
                for i, key in enumerate(PRETRAIN_IMAGES)]
    pretrain_json = root / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json"
    sft_json = sft_root / "llava_v1_5_mix665k.json"
    pretrain_json.write_text(json.dumps(pretrain))
    sft_json.write_text(json.dumps(_mix665k_records()))
    return LlavaTree(root=root, pretrain_json=pretrain_json, pretrain_root=pretrain_root, sft_json=sft_json,
                     sft_root=sft_root)


def add_hostile_json(tree: LlavaTree) -> tuple[Path, dict[str, str]]:
    """A data file over `tree.sft_root` holding the `HOSTILE` keys and one key through a linked folder:
    (its path, key -> the cause each hostile key is refused for)."""
    hostile = {key.format(image_root=tree.sft_root): cause for key, cause in HOSTILE.items()}
    records = [{"id": i, "image": key, "conversations": _turns("<image>\nWhat is it?", "A picture.")}
               for i, key in enumerate([*hostile, "coco/train2017/000000033471.jpg"])]
    path = tree.root / "hostile.json"
    path.write_text(json.dumps(records))
    return path, hostile


def add_unusable_json(tree: LlavaTree) -> Path:
    """mix665k's records plus one whose image does not decode (`UNDECODABLE`, written) and one whose image
    does not exist (`ABSENT`)."""
    (tree.sft_root / UNDECODABLE).write_bytes(b"\xff\xd8\xff\xe0 not a JPEG after all" * 4)
    records = [*json.loads(tree.sft_json.read_text()),
               *({"id": f"unusable-{i}", "image": key, "conversations": _turns("<image>\nWhat is it?", "A thing.")}
                 for i, key in enumerate((UNDECODABLE, ABSENT)))]
    path = tree.root / "mix665k-unusable.json"
    path.write_text(json.dumps(records))
    return path


def extract_mix665k(tree: LlavaTree, data: list[Path], *, spec_fields: dict[str, Any], cache_root: Path):
    """`just extract` of `data` over the mix665k image root, in this process (`runner=sequential`): (the run's
    `pipeline.progress.Summary`, the extraction YAML that finds its store)."""
    import yaml

    from pipeline.config import split_config
    from pipeline.driver import run_extract

    values = {**spec_fields, "data": [str(p) for p in data], "image_root": str(tree.sft_root),
              "cache_root": str(cache_root), "shard_size": 4, "batch_size": 4, "device": "cpu", "precision": "fp32",
              "write_webdataset": False}
    extract_yaml = tree.root / "extract.yaml"
    extract_yaml.write_text(yaml.safe_dump(values))
    return run_extract(split_config({**values, "runner": "sequential"}), show_progress=False), extract_yaml
