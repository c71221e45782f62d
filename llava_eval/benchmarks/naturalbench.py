"""NaturalBench (Li et al., NeurIPS 2024): 1,900 samples of two images x two questions, built so that a
question's answer flips between the images and an image's answer flips between the questions.

Layouts (`hf_local`: parquet files, a `save_to_disk` folder or a hub-cache folder, anywhere under the
benchmark folder):
- the Hub dataset BaiqiL/NaturalBench (split `train`, `data/train-*.parquet`), one row per sample: columns
  `Index, Image_0, Image_1, Question_0, Question_1, Image_<i>_Question_<j>` (answers `Yes`/`No` or `A`/`B`)
  and the question type (`Question_Type`; earlier card versions `Question Type`): `yes_no` or
  `multiple_choice`;
- lmms-eval's copy, BaiqiL/NaturalBench-lmms-eval (split `test`), one row per question and image: columns
  `Index` (4 × sample + k, k = 0..3 for q0_i0, q0_i1, q1_i0, q1_i1, the order lmms-eval's aggregation
  assumes), `Image`, `Question`, `Question_Type` and `answer`.

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
from llava_eval.benchmarks.hf_local import column_names, iter_rows, require_columns
from llava_eval.benchmarks.layouts import Found, ImageFiles, Layout, data_files_with

__all__ = ["NaturalBench", "SUFFIXES", "extract_answer"]

SUFFIXES = {
    "yes_no": "Please answer Yes or No.",
    "multiple_choice": "Please output the letter corresponding to the correct option.",
}
_CANDIDATES = {"yes_no": ("yes", "no"), "multiple_choice": ("a", "b")}  # (first, second) answer
_TYPE_COLUMNS = ("Question_Type", "Question Type")
_COLUMNS = ("Image_0", "Image_1", "Question_0", "Question_1",
            "Image_0_Question_0", "Image_1_Question_0", "Image_0_Question_1", "Image_1_Question_1")
_LMMS_COLUMNS = ("Index", "Image", "Question", "Question_Type", "answer")

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


class NaturalBench(Benchmark):
    name = "naturalbench"
    folder_names = ("NaturalBench",)

    def layouts(self) -> tuple[Layout, ...]:
        return (Layout("official BaiqiL/NaturalBench", data_files_with((*_COLUMNS, _TYPE_COLUMNS), splits=("train",)),
                       self._read_samples, embedded=True),
                Layout("lmms-eval's BaiqiL/NaturalBench-lmms-eval", data_files_with(_LMMS_COLUMNS, splits=("test",)),
                       self._read_questions, embedded=True))

    def _read_samples(self, found: Found, images: ImageFiles) -> list[EvalItem]:
        present = column_names(found.files[0])
        type_column = next(name for name in _TYPE_COLUMNS if name in present)
        for path in found.files:
            require_columns(path, (*_COLUMNS, type_column), benchmark=self.name)
        items: list[EvalItem] = []
        for position, row in enumerate(iter_rows(found.files)):
            index = row.get("Index", position)
            where = f"naturalbench: sample {index}"
            keys = [images.embedded(row[f"Image_{i}"], where=f"{where} Image_{i}") for i in (0, 1)]
            items += [self._item(index, j, i, image=keys[i], question=row[f"Question_{j}"],
                                 answer=row[f"Image_{i}_Question_{j}"], question_type=row[type_column])
                      for j in (0, 1) for i in (0, 1)]
        return items

    def _read_questions(self, found: Found, images: ImageFiles) -> list[EvalItem]:
        for path in found.files:
            require_columns(path, _LMMS_COLUMNS, benchmark=self.name)
        items = []
        for row in iter_rows(found.files):
            sample, k = divmod(int(row["Index"]), 4)
            image = images.embedded(row["Image"], where=f"naturalbench: question {row['Index']} Image")
            items.append(self._item(sample, k // 2, k % 2, image=image, question=row["Question"],
                                    answer=row["answer"], question_type=row["Question_Type"]))
        return items

    def _item(self, sample: Any, j: int, i: int, *, image: str, question: str, answer: Any,
              question_type: str) -> EvalItem:
        where = f"naturalbench: sample {sample}"
        if question_type not in SUFFIXES:
            raise BenchmarkLayoutError(f"{where}: unknown question type {question_type!r} "
                                       f"(expected one of {sorted(SUFFIXES)})")
        answer = str(answer).strip()
        if answer.lower() not in _CANDIDATES[question_type]:
            raise BenchmarkLayoutError(f"{where}: Image_{i}_Question_{j} is {answer!r}, not one of "
                                       f"{_CANDIDATES[question_type]}")
        return EvalItem(id=f"{sample}_q{j}_i{i}", image=image, prompt=f"{question.rstrip()} {SUFFIXES[question_type]}",
                        answer=answer, meta={"sample": sample, "question": j, "image": i, "type": question_type})

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
