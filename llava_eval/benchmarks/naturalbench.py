"""NaturalBench (Li et al., NeurIPS 2024): 1,900 samples of two images x two questions, built so that a
question's answer flips between the images and an image's answer flips between the questions.

Layout: the Hub dataset BaiqiL/NaturalBench saved locally, its parquet files (`data/train-*.parquet`)
or a `Dataset.save_to_disk` folder (`data-*.arrow`), anywhere under the benchmark folder. Columns
`Index, Image_0, Image_1, Question_0, Question_1, Image_<i>_Question_<j>` (answers `Yes`/`No` or `A`/`B`)
and the question type (`Question_Type`; earlier card versions `Question Type`): `yes_no` or
`multiple_choice`. The embedded images are written once to `images/<Index>_<i>.<ext>`.

Everything below follows the official scorer (Baiqi-Li/NaturalBench naturalbench_vqa.py, the same code in
lmms-eval lmms_eval/tasks/naturalbench/utils.py):
- prompt: the question, a space (lmms-eval's join), then "Please answer Yes or No." or "Please output the
  letter corresponding to the correct option.";
- answer extraction: whichever of the two answers (`yes`/`no`, or `A`/`B`) occurs first as a whole word,
  case-insensitively (so an article "a" counts as `A`, as officially); neither is no answer (wrong);
- per sample, with q_j/i_i right or wrong: Q-Acc counts each question right on both images, I-Acc each
  image right on both questions (each out of 2 per sample), Acc the four answers (out of 4), G-Acc the
  samples with all four right. The official code compares the extracted answer with the fixed pattern
  q0_i0 = yes/A, q0_i1 = no/B, q1_i0 = no/B, q1_i1 = yes/A; the dataset's answers follow it, and
  comparing with the stored answers is the same and stays right for data that does not.
The official scorer reports these four over all samples; `per_type` adds the same four (the paper's
definitions) over the samples of each question type, `yes_no` and `multiple_choice`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from llava_eval.benchmarks.base import Benchmark, BenchmarkLayoutError, EvalItem
from llava_eval.benchmarks.fixtures import hub_image, photo_jpeg, write_parquet
from llava_eval.benchmarks.hf_local import (column_names, image_bytes, image_suffix, iter_rows, require_columns,
                                          write_once)

__all__ = ["NaturalBench", "SUFFIXES", "extract_answer"]

SUFFIXES = {
    "yes_no": "Please answer Yes or No.",
    "multiple_choice": "Please output the letter corresponding to the correct option.",
}
_CANDIDATES = {"yes_no": ("yes", "no"), "multiple_choice": ("a", "b")}  # (first, second) answer
_TYPE_COLUMNS = ("Question_Type", "Question Type")
_COLUMNS = ("Image_0", "Image_1", "Question_0", "Question_1",
            "Image_0_Question_0", "Image_1_Question_0", "Image_0_Question_1", "Image_1_Question_1")
IMAGES = "images"

# The fixture: two samples; every answer is true of the photos.
_FIXTURE = (
    {"Index": 0, "Question_Type": "yes_no", "Source": "fixture", "photos": ("chelsea", "coffee"),
     "Question_0": "Is there a cat in this image?", "Question_1": "Is there a cup of coffee in this image?",
     "answers": ("Yes", "No", "No", "Yes")},
    {"Index": 1, "Question_Type": "multiple_choice", "Source": "fixture", "photos": ("astronaut", "rocket"),
     "Question_0": "What does this image show? Option: A: a person; B: a rocket;",
     "Question_1": "What does this image show? Option: A: a rocket; B: a person;",
     "answers": ("A", "B", "B", "A")},
)
_ANSWER_ORDER = ("Image_0_Question_0", "Image_1_Question_0", "Image_0_Question_1", "Image_1_Question_1")


def extract_answer(text: str, question_type: str) -> str | None:
    """`"yes"`/`"no"` (or `"a"`/`"b"`): the candidate occurring first as a whole word, any case; None if
    neither occurs (the official `extract_answer`, returning the word instead of 1/0/-1)."""
    found = [(m.start(), word) for word in _CANDIDATES[question_type]
             if (m := re.search(rf"\b{word}\b", text, re.IGNORECASE))]
    return min(found)[1] if found else None


def _accuracies(samples: Sequence[Mapping[tuple[int, int], bool]]) -> dict[str, Any]:
    """Q-Acc, I-Acc, Acc and G-Acc (module doc) over samples given as `{(question, image): right}`."""
    n = len(samples)
    return {
        "q_acc": sum(r[j, 0] and r[j, 1] for r in samples for j in (0, 1)) / (2 * n),
        "i_acc": sum(r[0, i] and r[1, i] for r in samples for i in (0, 1)) / (2 * n),
        "acc": sum(sum(r.values()) for r in samples) / (4 * n),
        "g_acc": sum(all(r.values()) for r in samples) / n,
        "samples": n,
    }


def _data_files(root: Path) -> list[Path]:
    parquet = sorted(p for p in root.rglob("*.parquet") if p.is_file())
    files = parquet or sorted(p for p in root.rglob("data-*.arrow") if p.is_file())
    if not files:
        raise BenchmarkLayoutError(
            f"naturalbench: {root} holds no data files: expected the Hugging Face dataset BaiqiL/NaturalBench "
            f"saved locally, as parquet ({root}/data/train-*.parquet) or with save_to_disk (data-*.arrow)")
    return files


class NaturalBench(Benchmark):
    name = "naturalbench"

    def load(self, root: Path) -> list[EvalItem]:
        root = Path(root)
        files = _data_files(root)
        present = column_names(files[0])
        type_column = next((name for name in _TYPE_COLUMNS if name in present), _TYPE_COLUMNS[0])
        for path in files:
            require_columns(path, (*_COLUMNS, type_column), benchmark=self.name)
        items: list[EvalItem] = []
        for position, row in enumerate(iter_rows(files)):
            items.extend(self._sample_items(row, row.get("Index", position), row[type_column], root))
        return items

    def source_files(self, root: Path) -> list[Path]:
        return _data_files(Path(root))

    def _sample_items(self, row: Mapping[str, Any], index: Any, question_type: str,
                      root: Path) -> list[EvalItem]:
        where = f"naturalbench: sample {index}"
        if question_type not in SUFFIXES:
            raise BenchmarkLayoutError(f"{where}: unknown question type {question_type!r} "
                                       f"(expected one of {sorted(SUFFIXES)})")
        keys = []
        for i in (0, 1):
            data = image_bytes(row[f"Image_{i}"], where=f"{where} Image_{i}")
            name = f"{index}_{i}{image_suffix(data, where=f'{where} Image_{i}')}"
            write_once(root / IMAGES / name, data)
            keys.append(f"{self.name}/{IMAGES}/{name}")
        items = []
        for j in (0, 1):
            prompt = f"{row[f'Question_{j}'].rstrip()} {SUFFIXES[question_type]}"
            for i in (0, 1):
                answer = str(row[f"Image_{i}_Question_{j}"]).strip()
                if answer.lower() not in _CANDIDATES[question_type]:
                    raise BenchmarkLayoutError(f"{where}: Image_{i}_Question_{j} is {answer!r}, not one of "
                                               f"{_CANDIDATES[question_type]}")
                items.append(EvalItem(id=f"{index}_q{j}_i{i}", image=keys[i], prompt=prompt, answer=answer,
                                      meta={"sample": index, "question": j, "image": i, "type": question_type}))
        return items

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> dict[str, Any]:
        """Q-Acc, I-Acc, Acc and G-Acc (fractions) over the samples, as the official scorer defines them, and
        the same four over the samples of each question type (`per_type`)."""
        right: dict[Any, dict[tuple[int, int], bool]] = {}
        types: dict[Any, str] = {}
        unanswered = 0
        for item in items:
            picked = extract_answer(predictions[item.id], item.meta["type"])
            unanswered += picked is None
            right.setdefault(item.meta["sample"], {})[item.meta["question"], item.meta["image"]] = \
                picked == item.answer.lower()
            types[item.meta["sample"]] = item.meta["type"]
        incomplete = [sample for sample, answers in right.items() if len(answers) != 4]
        if incomplete:
            raise ValueError(f"naturalbench: sample {incomplete[0]} lacks some of its four questions; "
                             "NaturalBench scores whole samples")
        per_type = {kind: _accuracies([r for sample, r in right.items() if types[sample] == kind])
                    for kind in sorted(set(types.values()))}
        return {**_accuracies(list(right.values())), "unanswered": unanswered, "per_type": per_type}

    def write_fixture(self, root: Path) -> None:
        rows = []
        for sample in _FIXTURE:
            row = {key: value for key, value in sample.items() if key not in ("photos", "answers")}
            for i, photo in enumerate(sample["photos"]):
                row[f"Image_{i}"] = hub_image(photo_jpeg(photo), f"{photo}.jpg")
            row.update(zip(_ANSWER_ORDER, sample["answers"]))
            rows.append(row)
        write_parquet(Path(root) / "data" / "train-00000-of-00001.parquet", rows)
