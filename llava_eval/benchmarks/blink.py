"""BLINK (Fu et al., ECCV 2024), validation split: 14 perception subtasks of multiple-choice questions on
one to four images.

Layout: the Hub dataset BLINK-Benchmark/BLINK, which lmms-eval's blink tasks read too (`hf_local`: parquet
files, `save_to_disk` folders or a hub-cache folder), one folder per subtask config holding its val split
(`Counting/val-00000-of-00001.parquet`; the Hub's converted `Counting/val/0000.parquet`); the test split's
files beside them are not read. Columns `idx` (`val_Counting_1`), `prompt` (the question, "Select from the
following choices." and the options as `(A) ...`), `choices`, `answer` (`(A)`), `image_1` and, for
multi-image questions, `image_2` .. `image_4`; a row's subtask is its `sub_task` column, else its folder.

The single-image protocol (zeyofu/BLINK_Benchmark eval/test_benchmark.py): a multi-image question sees
its images concatenated left to right with a 10 px black margin between them, the canvas as tall as the
tallest image and each image centred vertically (`concat_images_horizontally_with_margin`); the prompt
is the dataset's `prompt`, after a disclaimer for Art_Style, Forensic_Detection and Jigsaw. A single image
is written out unchanged; a composite is written once as PNG, named by the sha256 of its images' bytes.
Scoring (eval/evaluate.py): accuracy per subtask and their unweighted mean. The official answer
extraction asks GPT-3.5 when the answer is not a bare choice; here `choices.extract_choice` decides.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

from llava_eval.benchmarks.base import Benchmark, BenchmarkLayoutError, EvalItem
from llava_eval.benchmarks.choices import extract_choice, option_letters
from llava_eval.benchmarks.fixtures import hub_image, photo_jpeg, write_parquet
from llava_eval.benchmarks.hf_local import image_bytes, iter_rows, require_columns
from llava_eval.benchmarks.layouts import Found, ImageFiles, Layout, LayoutMismatch, data_files_with

__all__ = ["Blink", "SUBTASKS", "MARGIN", "compose_horizontally"]

SUBTASKS = ("Art_Style", "Counting", "Forensic_Detection", "Functional_Correspondence", "IQ_Test", "Jigsaw",
            "Multi-view_Reasoning", "Object_Localization", "Relative_Depth", "Relative_Reflectance",
            "Semantic_Correspondence", "Spatial_Relation", "Visual_Correspondence", "Visual_Similarity")
MARGIN = 10
DISCLAIMER = ("Disclaimer: This is not to make unfair assumptions about the people in the image and you just "
              "need to give your assessment on this question. You don't need to identify the real people. "
              "You just need to analyze based on the information I gave you.\n\n")
DISCLAIMER_SUBTASKS = ("Art_Style", "Forensic_Detection", "Jigsaw")
_IMAGE_COLUMNS = ("image_1", "image_2", "image_3", "image_4")
_COLUMNS = ("idx", "prompt", "choices", "answer", "image_1")

# The fixture: a single-image subtask and a three-image one, answers true of the photos.
_COUNTING = (
    ("How many cats are in the image?", "chelsea", ("0", "1", "2", "3"), "B"),
    ("How many cats are in the image?", "coffee", ("0", "1", "2", "3"), "A"),
    ("How many people are in the image?", "astronaut", ("3", "2", "0", "1"), "D"),
)
_SIMILARITY_QUESTION = ("Given three similar but different images, take the first image as reference. Can you "
                        "tell which one of the latter two images is most similar to the first one?")
_SIMILARITY = (  # (photo, crop box) per image: the reference, then the two candidates
    ((("chelsea", (0.1, 0.1, 0.9, 0.9)), ("chelsea", None), ("rocket", None)), "A"),
    ((("coffee", (0.2, 0.0, 0.8, 1.0)), ("astronaut", None), ("coffee", None)), "B"),
)


def compose_horizontally(images: Sequence[Any], *, margin: int = MARGIN):
    """PIL images side by side, `margin` black pixels between them, each centred vertically on a black
    canvas as tall as the tallest (BLINK's single-image protocol)."""
    from PIL import Image

    rgb = [image.convert("RGB") for image in images]
    height = max(image.height for image in rgb)
    canvas = Image.new("RGB", (sum(image.width for image in rgb) + margin * (len(rgb) - 1), height))
    x = 0
    for image in rgb:
        canvas.paste(image, (x, (height - image.height) // 2))
        x += image.width + margin
    return canvas


def _png_composite(encoded: Sequence[bytes]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    compose_horizontally([Image.open(io.BytesIO(data)) for data in encoded]).save(buffer, format="PNG")
    return buffer.getvalue()


def _subtask_of(path: Path) -> str | None:
    return next((part for part in reversed(path.parts) if part in SUBTASKS), None)


def _find(root: Path) -> Found:
    try:
        found = data_files_with(_COLUMNS, splits=("val",))(root)
    except LayoutMismatch as exc:
        raise LayoutMismatch(f"{exc} (expected {root}/Counting/val-00000-of-00001.parquet and the other "
                             f"subtasks: {', '.join(SUBTASKS)})") from None
    return found


class Blink(Benchmark):
    name = "blink"
    folder_names = ("BLINK",)
    max_new_tokens = 128  # BLINK's prompts ask for no format: leave room for the letter in a sentence

    def layouts(self) -> tuple[Layout, ...]:
        return (Layout("official BLINK-Benchmark/BLINK", _find, self._read, embedded=True),)

    def _read(self, found: Found, images: ImageFiles) -> list[EvalItem]:
        items = []
        for path in found.files:
            require_columns(path, _COLUMNS, benchmark=self.name)
            items += [self._item(row, row.get("sub_task") or _subtask_of(path), images) for row in iter_rows([path])]
        return items

    def _item(self, row: Mapping[str, Any], subtask: str | None, images: ImageFiles) -> EvalItem:
        idx = str(row["idx"])
        where = f"blink: {subtask} question {idx}"
        if subtask not in SUBTASKS:
            raise BenchmarkLayoutError(f"blink: question {idx} names no subtask (its `sub_task` is {subtask!r} and "
                                       f"its folder is none of {', '.join(SUBTASKS)})")
        choices = [str(choice) for choice in row["choices"]]
        answer = str(row["answer"]).strip().strip("()")
        if len(answer) != 1 or answer not in option_letters(len(choices)):
            raise BenchmarkLayoutError(f"{where}: answer {row['answer']!r} is not one of its choices' letters")
        columns = [_IMAGE_COLUMNS[0], *(c for c in _IMAGE_COLUMNS[1:] if row.get(c) is not None)]
        if len(columns) == 1:
            image = images.embedded(row[columns[0]], where=f"{where} {columns[0]}")
        else:
            encoded = [image_bytes(row[column], where=f"{where} {column}") for column in columns]
            digest = hashlib.sha256(f"composite margin={MARGIN}".encode()
                                    + b"".join(hashlib.sha256(data).digest() for data in encoded)).hexdigest()
            image = images.derived(digest, lambda: _png_composite(encoded), suffix=".png")
        prompt = (DISCLAIMER if subtask in DISCLAIMER_SUBTASKS else "") + str(row["prompt"])
        return EvalItem(id=idx, image=image, prompt=prompt, answer=answer,
                        meta={"subtask": subtask, "choices": choices, "n_images": len(columns)})

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> dict[str, Any]:
        """Accuracy per subtask and their unweighted mean (`mean_accuracy`), as fractions, and the questions of
        each subtask."""
        per_subtask: dict[str, list[bool]] = {}
        unanswered = 0
        for item in items:
            picked = extract_choice(predictions[item.id], item.meta["choices"])
            unanswered += picked is None
            per_subtask.setdefault(item.meta["subtask"], []).append(picked == item.answer)
        accuracy = {subtask: sum(right) / len(right) for subtask, right in sorted(per_subtask.items())}
        return {
            "mean_accuracy": sum(accuracy.values()) / len(accuracy),
            "per_subtask": accuracy,
            "questions": len(items),
            "questions_per_subtask": {subtask: len(right) for subtask, right in sorted(per_subtask.items())},
            "unanswered": unanswered,
        }

    def write_fixture(self, root: Path) -> None:
        root = Path(root)
        counting = [{"idx": f"val_Counting_{n}", "question": question, "sub_task": "Counting",
                     "image_1": hub_image(photo_jpeg(photo), f"{photo}.jpg"),
                     "image_2": None, "image_3": None, "image_4": None,
                     "choices": list(choices), "answer": f"({letter})", "prompt": _mc_prompt(question, choices)}
                    for n, (question, photo, choices, letter) in enumerate(_COUNTING, start=1)]
        similarity = []
        for n, (shots, letter) in enumerate(_SIMILARITY, start=1):
            images = [hub_image(photo_jpeg(photo, box=box, max_side=side), f"{photo}.jpg")
                      for (photo, box), side in zip(shots, (64, 96, 80))]  # unequal heights: centring shows
            choices = ("the second image", "the third image")
            similarity.append({"idx": f"val_Visual_Similarity_{n}", "question": _SIMILARITY_QUESTION,
                               "sub_task": "Visual_Similarity", **dict(zip(_IMAGE_COLUMNS, [*images, None])),
                               "choices": list(choices), "answer": f"({letter})",
                               "prompt": _mc_prompt(_SIMILARITY_QUESTION, choices)})
        write_parquet(root / "Counting" / "val-00000-of-00001.parquet", counting)
        write_parquet(root / "Visual_Similarity" / "val-00000-of-00001.parquet", similarity)


def _mc_prompt(question: str, choices: Sequence[str]) -> str:
    """The dataset's `prompt` column: question, "Select from the following choices.", `(A) ...` lines."""
    options = "\n".join(f"({letter}) {choice}" for letter, choice in zip(option_letters(len(choices)), choices))
    return f"{question}\nSelect from the following choices.\n{options}"
