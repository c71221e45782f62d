"""Builders of every accepted benchmark layout, from the embedded fixtures' items: the layouts their publishers
and lmms-eval ship, and the ways such folders reach a disk (`save_to_disk`, a hub-cache repository folder,
LLaVA's playground, symlinks). Tests load each and compare with the fixture; `write_lmms_parquet` also builds
the datasets lmms-eval's tasks read (`datasets.load_dataset("parquet", data_files=...)` or a hub cache).

Column names follow what lmms-eval's tasks read (lmms_eval/tasks/<task>/*.yaml and utils.py) and the Hub
datasets' cards; `docs/evaluation.md` lists them. The writers take items as a loader returned them, with
their images under `image_root` (`image_root / item.image`).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from llava_eval.benchmarks import EvalItem
from llava_eval.benchmarks.blink import DISCLAIMER
from llava_eval.benchmarks.coco import CAPTION_PROMPT
from llava_eval.benchmarks.coco_layouts import CAPTIONS_VAL, KARPATHY_TEST, cocoid_of
from llava_eval.benchmarks.fixtures import hub_image, photo_jpeg, write_parquet
from llava_eval.benchmarks.hf_local import split_of
from llava_eval.benchmarks.naturalbench import SUFFIXES

__all__ = ["write_lmms_parquet", "LMMS_DATASETS", "save_to_disk", "hub_cache", "write_coco_captions_val",
           "write_coco_blip_test", "write_coco_karpathy_parquet"]

Rows = dict[str, list[dict[str, Any]]]  # parquet file (relative path) -> its rows


def _image(image_root: Path, item: EvalItem) -> dict[str, Any]:
    return hub_image((image_root / item.image).read_bytes(), Path(item.image).name)


def _mmvp(items: Sequence[EvalItem], image_root: Path) -> Rows:
    """lmms-lab-eval/MMVP: Index, Question, Options, Correct Answer (corrected), image."""
    return {"data/train-00000-of-00001.parquet": [
        {"Index": int(item.id), "Question": item.prompt.split("\n")[0],
         "Options": " ".join(f"({mark}) {text}" for mark, text in zip("ab", item.meta["options"])),
         "Correct Answer": f"({item.answer.lower()})", "image": _image(image_root, item)} for item in items]}


def _naturalbench(items: Sequence[EvalItem], image_root: Path) -> Rows:
    """BaiqiL/NaturalBench-lmms-eval: one row per question and image, Index = 4 × sample + 2 × question + image."""
    return {"data/test-00000-of-00001.parquet": [
        {"Index": 4 * int(item.meta["sample"]) + 2 * item.meta["question"] + item.meta["image"],
         "Image": _image(image_root, item), "Question": item.prompt.removesuffix(" " + SUFFIXES[item.meta["type"]]),
         "Question_Type": item.meta["type"], "answer": item.answer} for item in items]}


def _blink(items: Sequence[EvalItem], image_root: Path) -> Rows:
    """BLINK-Benchmark/BLINK (which lmms-eval reads), one image per question: a composite stays one image."""
    rows: Rows = {}
    for item in items:
        rows.setdefault(f"{item.meta['subtask']}/val-00000-of-00001.parquet", []).append(
            {"idx": item.id, "sub_task": item.meta["subtask"], "image_1": _image(image_root, item), "image_2": None,
             "image_3": None, "image_4": None, "choices": list(item.meta["choices"]), "answer": f"({item.answer})",
             "prompt": item.prompt.removeprefix(DISCLAIMER)})
    return rows


def _gqa(items: Sequence[EvalItem], image_root: Path) -> Rows:
    """lmms-lab/GQA's testdev_balanced configs: instructions (one row per question) and images (one per image)."""
    images = {Path(item.image).stem: item for item in items}
    return {
        "testdev_balanced_instructions/testdev-00000-of-00001.parquet": [
            {"id": item.id, "imageId": Path(item.image).stem, "question": item.prompt.split("\n")[0],
             "answer": item.answer, "fullAnswer": item.answer, "isBalanced": True,
             "types": {"structural": item.meta["structural"], "semantic": "", "detailed": ""}} for item in items],
        "testdev_balanced_images/testdev-00000-of-00001.parquet": [
            {"id": image_id, "image": _image(image_root, item)} for image_id, item in images.items()]}


def _coco(items: Sequence[EvalItem], image_root: Path) -> Rows:
    """lmms-lab/COCO-Caption, split val: question_id (the file name), image, question, answer (references)."""
    return {"data/val-00000-of-00001.parquet": [
        {"question_id": Path(item.id).name, "image": _image(image_root, item), "question": CAPTION_PROMPT,
         "answer": list(item.answer), "id": item.meta["cocoid"], "file_name": Path(item.id).name}
        for item in items]}


def _llava_bench(items: Sequence[EvalItem], image_root: Path) -> Rows:
    """lmms-lab/llava-bench-in-the-wild: question_id, question, image, caption, gpt_answer, category."""
    return {"data/train-00000-of-00001.parquet": [
        {"question_id": item.meta["question_id"], "question": item.prompt, "image": _image(image_root, item),
         "caption": "", "gpt_answer": item.answer, "category": item.meta["category"],
         "image_id": Path(item.image).stem} for item in items]}


LMMS_DATASETS: Mapping[str, tuple[str, Callable[[Sequence[EvalItem], Path], Rows]]] = {
    "mmvp": ("lmms-lab-eval/MMVP", _mmvp),
    "naturalbench": ("BaiqiL/NaturalBench-lmms-eval", _naturalbench),
    "blink": ("BLINK-Benchmark/BLINK", _blink),
    "gqa": ("lmms-lab/GQA", _gqa),
    "coco": ("lmms-lab/COCO-Caption", _coco),
    "llava-bench": ("lmms-lab/llava-bench-in-the-wild", _llava_bench),
}  # benchmark -> (the Hub dataset lmms-eval's task reads, its rows)


def write_lmms_parquet(benchmark: str, items: Sequence[EvalItem], folder: Path, *, image_root: Path) -> Path:
    """`items` of `benchmark` as the parquet files of the Hub dataset lmms-eval's task reads (`LMMS_DATASETS`),
    laid out under `folder` as the Hub stores them; returns `folder`."""
    folder = Path(folder)
    for relative, rows in LMMS_DATASETS[benchmark][1](items, Path(image_root)).items():
        write_parquet(folder / relative, rows)
    return folder


def save_to_disk(source: Path, folder: Path) -> Path:
    """The parquet files under `source` as `DatasetDict.save_to_disk` writes each config: `<config>/<split>/
    data-00000-of-00001.arrow` (Arrow IPC stream) with `state.json` and `dataset_info.json`, and the config's
    `dataset_dict.json` (the Hub's `data/` folder is the default config's); returns `folder`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    splits: dict[Path, list[str]] = {}
    for path in sorted(Path(source).rglob("*.parquet")):
        config = path.parent.relative_to(source)
        config = Path() if config == Path("data") else config
        split = split_of(path)
        out = Path(folder) / config / split / "data-00000-of-00001.arrow"
        out.parent.mkdir(parents=True, exist_ok=True)
        table = pq.read_table(path)
        with pa.ipc.new_stream(str(out), table.schema) as writer:
            writer.write_table(table)
        (out.parent / "state.json").write_text(json.dumps(
            {"_data_files": [{"filename": out.name}], "_split": split, "_format_type": None}))
        (out.parent / "dataset_info.json").write_text(json.dumps({"splits": {split: {"num_examples": table.num_rows}}}))
        splits.setdefault(Path(folder) / config, []).append(split)
    for config, names in splits.items():
        (config / "dataset_dict.json").write_text(json.dumps({"splits": names}))
    return Path(folder)


def hub_cache(source: Path, repo: Path, *, revision: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """`source`'s files as huggingface_hub caches a dataset repository: `blobs/<sha256>`, `snapshots/<revision>/
    <path>` relative symlinks to them, `refs/main` naming the revision; returns `repo`
    (`datasets--<org>--<name>`)."""
    snapshot = Path(repo) / "snapshots" / revision
    for path in sorted(p for p in Path(source).rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = Path(repo) / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (Path(repo) / "refs").mkdir(parents=True, exist_ok=True)
    (Path(repo) / "refs" / "main").write_text(revision)
    return Path(repo)


def _coco_images(items: Sequence[EvalItem], image_root: Path, folder: Path) -> None:
    for item in items:
        (folder / item.id).parent.mkdir(parents=True, exist_ok=True)
        (folder / item.id).write_bytes((image_root / item.image).read_bytes())


def write_coco_captions_val(items: Sequence[EvalItem], folder: Path, *, image_root: Path) -> Path:
    """COCO's own `annotations/captions_val2014.json` and `val2014/`, with one more val2014 image that is not
    in the Karpathy test split (it must not be read); returns `folder`."""
    other = {"id": 11169, "file_name": "COCO_val2014_000000011169.jpg"}  # in Karpathy's val split, not in test
    images = [{"id": item.meta["cocoid"], "file_name": Path(item.id).name, "height": 96, "width": 96}
              for item in items] + [other]
    annotations = [{"image_id": item.meta["cocoid"], "id": 10 * n + k, "caption": caption}
                   for n, item in enumerate(items) for k, caption in enumerate(item.answer)]
    annotations.append({"image_id": other["id"], "id": 1, "caption": "A photographer with a camera on a tripod."})
    (folder / "annotations").mkdir(parents=True)
    (folder / "annotations" / CAPTIONS_VAL).write_text(json.dumps(
        {"info": {}, "licenses": [], "images": images, "annotations": annotations}))
    _coco_images(items, image_root, folder)
    (folder / "val2014" / other["file_name"]).write_bytes(photo_jpeg("camera"))
    return folder


def write_coco_blip_test(items: Sequence[EvalItem], folder: Path, *, image_root: Path) -> Path:
    """salesforce/BLIP's `coco_karpathy_test.json` and the images it names; returns `folder`."""
    folder.mkdir(parents=True)
    (folder / KARPATHY_TEST).write_text(json.dumps([{"image": item.id, "caption": list(item.answer)}
                                                    for item in items]))
    _coco_images(items, image_root, folder)
    return folder


def write_coco_karpathy_parquet(items: Sequence[EvalItem], folder: Path, *, image_root: Path) -> Path:
    """yerevann/coco-karpathy's test split (lmms-eval's coco_karpathy_test: no images inside, each row names
    its file), beside COCO's `val2014/`; returns `folder`."""
    write_parquet(folder / "data" / "test-00000-of-00001.parquet", [
        {"filepath": Path(item.id).parent.name, "sentids": list(range(5 * n, 5 * n + len(item.answer))),
         "filename": Path(item.id).name, "imgid": n, "split": "test", "sentences": list(item.answer),
         "cocoid": cocoid_of(item.id), "url": f"http://images.cocodataset.org/{item.id}"}
        for n, item in enumerate(items)])
    _coco_images(items, image_root, folder)
    return folder
