"""GQA testdev-balanced (Hudson & Manning, CVPR 2019): 12,578 compositional questions over 398 images, the
split LLaVA-1.5 reports.

Layouts:
- the official download (cs.stanford.edu/people/dorarad/gqa/download.html): the questions JSON
  `testdev_balanced_questions.json`, `{question id: {imageId, question, answer, isBalanced, types, ...}}`,
  and the images `images/<imageId>.jpg`; in the folder or under its `data/`, where LLaVA's playground
  keeps them (`playground/data/eval/gqa/data/`, docs/Evaluation.md);
- lmms-eval's copy, the Hub dataset lmms-lab/GQA (`hf_local`), its two configs of split `testdev`:
  `testdev_balanced_instructions/` (columns `id, imageId, question, answer, isBalanced, types`, one row per
  question) and `testdev_balanced_images/` (columns `id, image`, one row per image, joined on `imageId`).

Prompt: the question, then "\\nAnswer the question using a single word or phrase." (LLaVA-1.5's
response-format prompt for GQA, as in its llava_gqa_testdev_balanced.jsonl). Predictions are normalised
as LLaVA does before the official scorer sees them: the decoded text is stripped of surrounding
whitespace (haotian-liu/LLaVA llava/eval/model_vqa_loader.py), then of trailing periods and lower-cased
(scripts/convert_gqa_for_eval.py: `rstrip('.').lower()`).

Scoring follows the official eval.py (v1.1, cs.stanford.edu/people/dorarad/gqa/evaluate.html, with the
testdev changes LLaVA's docs/Evaluation.md links to): only questions with `isBalanced` count; a question
scores 1 when the normalised prediction equals the gold `answer` string exactly (no further processing);
accuracy is the mean. "open" and "binary" split the same scores by `types.structural == "query"`.
eval.py prints percentages; here they are fractions like the other benchmarks'.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from llava_eval.benchmarks.base import Benchmark, BenchmarkLayoutError, EvalItem
from llava_eval.benchmarks.fixtures import photo_jpeg
from llava_eval.benchmarks.hf_local import iter_rows, require_columns
from llava_eval.benchmarks.layouts import Found, ImageFiles, Layout, data_files_with, first_file

__all__ = ["GQA", "SHORT_ANSWER", "QUESTIONS", "normalize_prediction"]

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
QUESTIONS = "testdev_balanced_questions.json"
IMAGES = "images"
_FIELDS = ("imageId", "question", "answer", "isBalanced", "types")  # what eval.py reads
INSTRUCTIONS, IMAGE_ROWS = "testdev_balanced_instructions", "testdev_balanced_images"  # lmms-lab/GQA configs
_find_instructions = data_files_with(("id", *_FIELDS), splits=("testdev",), under=INSTRUCTIONS)
_find_image_rows = data_files_with(("id", "image"), splits=("testdev",), under=IMAGE_ROWS)

# The fixture: (photo, imageId, [(question id, question, answer, structural type)]); answers true of the photos.
_FIXTURE = (
    ("astronaut", "n100001", (("20100001", "What color is the spacesuit?", "orange", "query"),
                              ("20100002", "Is there a flag in the picture?", "yes", "verify"))),
    ("chelsea", "n100002", (("20100003", "Which animal is this?", "cat", "query"),
                            ("20100004", "Are the cat's eyes green or blue?", "green", "choose"))),
    ("coffee", "n100003", (("20100005", "What color is the saucer?", "red", "query"),
                           ("20100006", "Is the cup empty?", "no", "verify"))),
)


def normalize_prediction(text: str) -> str:
    """LLaVA's GQA post-processing of a generated answer (see the module doc)."""
    return text.strip().rstrip(".").lower()


def _read_questions(path: Path) -> dict[str, dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        questions = json.load(fh)
    if not isinstance(questions, dict):
        raise BenchmarkLayoutError(f"gqa: {path} must map question ids to questions, as the official file does")
    for qid, question in questions.items():
        missing = [name for name in _FIELDS if name not in question]
        if missing:
            raise BenchmarkLayoutError(f"gqa: {path}: question {qid} has no {missing[0]!r}")
    return questions


def _find_official(root: Path) -> Found:
    path = first_file(root, (QUESTIONS, f"data/{QUESTIONS}"))
    return Found(path.parent, (path,))


def _find_hub(root: Path) -> Found:
    return Found(root, _find_instructions(root).files + _find_image_rows(root).files)


class GQA(Benchmark):
    name = "gqa"
    # GQA answers are a few tokens long, so no 16-token output can equal one that a longer budget (LLaVA's
    # loader allows 128) would have produced: the scores do not depend on it.
    max_new_tokens = 16

    def layouts(self) -> tuple[Layout, ...]:
        return (Layout("official GQA testdev-balanced", _find_official, self._read_official),
                Layout("lmms-eval's lmms-lab/GQA", _find_hub, self._read_hub, embedded=True))

    def _read_official(self, found: Found, images: ImageFiles) -> list[EvalItem]:
        questions = _read_questions(found.files[0])
        return self._items(questions, lambda image_id: images.file(found.root / IMAGES / f"{image_id}.jpg",
                                                                   what=f"named by {QUESTIONS}"))

    def _read_hub(self, found: Found, images: ImageFiles) -> list[EvalItem]:
        instructions = [p for p in found.files if INSTRUCTIONS in p.relative_to(found.root).parts]
        image_rows = [p for p in found.files if p not in instructions]
        for path in instructions:
            require_columns(path, ("id", *_FIELDS), benchmark=self.name)
        questions = {str(row["id"]): row for row in iter_rows(instructions)}
        wanted = {q["imageId"] for q in questions.values() if q["isBalanced"]}
        keys = {str(row["id"]): images.embedded(row["image"], where=f"gqa: image {row['id']}")
                for row in iter_rows(image_rows) if str(row["id"]) in wanted}

        def image_key(image_id: str) -> str:
            if image_id not in keys:
                raise BenchmarkLayoutError(f"gqa: no row of {found.root / IMAGE_ROWS} holds image {image_id}")
            return keys[image_id]
        return self._items(questions, image_key)

    def _items(self, questions: Mapping[str, Mapping[str, Any]], image_key: Callable[[str], str]) -> list[EvalItem]:
        """The balanced questions (all of testdev_balanced), in the file's order."""
        balanced = {qid: q for qid, q in questions.items() if q["isBalanced"]}
        keys = {image_id: image_key(image_id) for image_id in dict.fromkeys(q["imageId"] for q in balanced.values())}
        return [EvalItem(id=qid, image=keys[q["imageId"]], prompt=q["question"] + SHORT_ANSWER, answer=q["answer"],
                         meta={"structural": (q["types"] or {}).get("structural")})
                for qid, q in balanced.items()]

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> dict[str, Any]:
        """Accuracy (fraction) over the balanced questions, overall and split into open and binary."""
        right = {item.id: normalize_prediction(predictions[item.id]) == item.answer for item in items}
        is_open = {item.id: item.meta["structural"] == "query" for item in items}
        return {
            "accuracy": _mean(right.values()),
            "open": _mean(right[i] for i in right if is_open[i]),
            "binary": _mean(right[i] for i in right if not is_open[i]),
            "questions": len(items),
        }

    def write_fixture(self, root: Path) -> None:
        root = Path(root)
        (root / IMAGES).mkdir(parents=True, exist_ok=True)
        questions = {}
        for photo, image_id, asked in _FIXTURE:
            (root / IMAGES / f"{image_id}.jpg").write_bytes(photo_jpeg(photo))
            for qid, question, answer, structural in asked:
                questions[qid] = {"imageId": image_id, "question": question, "answer": answer,
                                  "isBalanced": True, "types": {"structural": structural}}
        (root / QUESTIONS).write_text(json.dumps(questions, indent=1) + "\n", encoding="utf-8")


def _mean(values) -> float:
    """eval.py's `avg`: 0 for no values."""
    values = list(values)
    return sum(values) / len(values) if values else 0.0
