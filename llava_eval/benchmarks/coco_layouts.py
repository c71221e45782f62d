"""The COCO Karpathy test images and their reference captions, from each layout COCO is kept in.

Every layout gives the same items: id = the image's path in COCO's own layout (`val2014/COCO_val2014_
000000391895.jpg`), its references in file order, `meta.cocoid`.
- Karpathy's `dataset_coco.json` (cs.stanford.edu/people/karpathy/deepimagesent: `{"images": [{"filepath",
  "filename", "split", "cocoid", "sentences": [{"raw", ...}]}]}`, `split == "test"` read) and the images at
  `<filepath>/<filename>`;
- the test file most captioning code ships, `coco_karpathy_test.json` (salesforce/BLIP's annotation,
  `[{"image": "val2014/<file>", "caption": [...]}]`), and the images it names;
- COCO's own `annotations/captions_val2014.json` (`images[]`: `id`, `file_name`; `annotations[]`:
  `image_id`, `caption`) and `val2014/`, of which the Karpathy test ids (`karpathy_test_ids`) are read;
- lmms-eval's coco2014_cap_val data, the Hub dataset lmms-lab/COCO-Caption, split `val`: columns
  `question_id` (the file name), `image` (embedded) and `answer` (the references), Karpathy test ids read;
- lmms-eval's coco_karpathy_test data, the Hub dataset yerevann/coco-karpathy, split `test`: columns
  `filepath`, `filename`, `split`, `sentences` (the references) and `cocoid`. It holds no images
  (lmms-eval downloads each from its `url`): they are read from `<filepath>/<filename>` under the folder,
  so put the parquet files beside COCO's `val2014/`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

from llava_eval.benchmarks.items import BenchmarkLayoutError, EvalItem
from llava_eval.benchmarks.hf_local import iter_rows
from llava_eval.benchmarks.karpathy_test_ids import KARPATHY_TEST_COCOIDS
from llava_eval.benchmarks.layouts import Found, ImageFiles, Layout, data_files_with, first_file

__all__ = ["KARPATHY", "KARPATHY_TEST", "CAPTIONS_VAL", "caption_layouts", "cocoid_of"]

KARPATHY = "dataset_coco.json"
KARPATHY_TEST = "coco_karpathy_test.json"
CAPTIONS_VAL = "captions_val2014.json"
VAL_IMAGES = "val2014"

Entry = tuple[str, list[str], int]  # (image path under the folder, references, cocoid)
MakeItem = Callable[[str, str, list[str], int], EvalItem]  # (id, image key, references, cocoid) -> item


def cocoid_of(file_name: str) -> int:
    """`COCO_val2014_000000391895.jpg` -> 391895."""
    try:
        return int(Path(file_name).stem.rsplit("_", 1)[-1])
    except ValueError:
        raise BenchmarkLayoutError(f"coco: {file_name!r} is not a COCO image file name "
                                   "(COCO_val2014_<12-digit id>.jpg)") from None


def _json(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def _karpathy(found: Found) -> Iterable[Entry]:
    return [(f"{image['filepath']}/{image['filename']}", [s["raw"] for s in image["sentences"]], image["cocoid"])
            for image in _json(found.files[0])["images"] if image["split"] == "test"]


def _blip(found: Found) -> Iterable[Entry]:
    return [(entry["image"], [entry["caption"]] if isinstance(entry["caption"], str) else list(entry["caption"]),
             cocoid_of(entry["image"])) for entry in _json(found.files[0])]


def _captions_val(found: Found) -> Iterable[Entry]:
    data = _json(found.files[0])
    references: dict[int, list[str]] = {}
    for annotation in data["annotations"]:
        references.setdefault(annotation["image_id"], []).append(annotation["caption"])
    return [(f"{VAL_IMAGES}/{image['file_name']}", references.get(image["id"], []), image["id"])
            for image in data["images"] if image["id"] in KARPATHY_TEST_COCOIDS]


def _coco_karpathy_rows(found: Found) -> Iterable[Entry]:
    return [(f"{row['filepath']}/{row['filename']}", list(row["sentences"]), int(row["cocoid"]))
            for row in iter_rows(found.files) if row["split"] == "test"]


def _find_captions_val(root: Path) -> Found:
    path = first_file(root, (f"annotations/{CAPTIONS_VAL}", CAPTIONS_VAL))
    return Found(root, (path,))


def caption_layouts(make: MakeItem) -> tuple[Layout, ...]:
    """COCO's layouts, most specific first, each reading its test images into items with `make`."""
    def with_files(name: str, find: Callable[[Path], Found], entries: Callable[[Found], Iterable[Entry]]) -> Layout:
        def read(found: Found, images: ImageFiles) -> list[EvalItem]:
            return _items(found, entries, make, lambda path: images.file(
                found.root / path, what="a test image of the Karpathy split"))
        return Layout(name, find, read)

    def read_lmms(found: Found, images: ImageFiles) -> list[EvalItem]:
        embedded = {}  # id -> key, for the Karpathy test rows only (the file holds all of val2014)

        def entries(found: Found) -> Iterable[Entry]:
            for row in iter_rows(found.files):
                cocoid = cocoid_of(row["question_id"])
                if cocoid in KARPATHY_TEST_COCOIDS:
                    path = f"{VAL_IMAGES}/{row['question_id']}"
                    embedded[path] = images.embedded(row["image"], where=f"coco: {row['question_id']}")
                    yield path, list(row["answer"]), cocoid
        return _items(found, entries, make, embedded.__getitem__)

    return (
        with_files(f"Karpathy's {KARPATHY}", lambda root: Found(root, (first_file(root, (KARPATHY,)),)), _karpathy),
        with_files(f"BLIP's {KARPATHY_TEST}", lambda root: Found(root, (first_file(root, (KARPATHY_TEST,)),)), _blip),
        with_files(f"official {CAPTIONS_VAL} + Karpathy test ids", _find_captions_val, _captions_val),
        with_files("lmms-eval's yerevann/coco-karpathy + val2014/ images",
                   data_files_with(("filepath", "filename", "split", "sentences", "cocoid"), splits=("test",)),
                   _coco_karpathy_rows),
        Layout("lmms-eval's lmms-lab/COCO-Caption + Karpathy test ids",
               data_files_with(("question_id", "image", "answer"), splits=("val",)), read_lmms, embedded=True),
    )


def _items(found: Found, entries: Callable[[Found], Iterable[Entry]], make: MakeItem,
           image_key: Callable[[str], str]) -> list[EvalItem]:
    """Items of the test images `entries(found)` lists; refuses a file of another layout and an empty split."""
    try:
        items = [make(path, image_key(path), references, cocoid) for path, references, cocoid in entries(found)]
    except (KeyError, TypeError) as exc:
        raise BenchmarkLayoutError(f"coco: {found.files[0]} is not laid out as its kind is "
                                   f"({type(exc).__name__}: {exc})") from None
    if not items:
        raise BenchmarkLayoutError(f"coco: {found.files[0]} holds none of the Karpathy test split's images")
    return items

