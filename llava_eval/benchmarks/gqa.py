"""GQA testdev-balanced (Hudson & Manning, CVPR 2019): 12,578 compositional questions over 398 images, the
split LLaVA-1.5 reports.

Layout (the official download, cs.stanford.edu/people/dorarad/gqa/download.html): the questions JSON
`testdev_balanced_questions.json`, `{question id: {imageId, question, answer, isBalanced, types, ...}}`,
and the images `images/<imageId>.jpg`.

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
from typing import Any, Mapping, Sequence

from llava_eval.benchmarks.base import Benchmark, BenchmarkLayoutError, EvalItem
from llava_eval.benchmarks.fixtures import photo_jpeg

__all__ = ["GQA", "SHORT_ANSWER", "QUESTIONS", "normalize_prediction"]

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
QUESTIONS = "testdev_balanced_questions.json"
IMAGES = "images"
_FIELDS = ("imageId", "question", "answer", "isBalanced", "types")  # what eval.py reads

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
    if not path.is_file():
        raise BenchmarkLayoutError(f"gqa: {path} does not exist (GQA testdev-balanced needs {QUESTIONS} "
                                   f"and '{IMAGES}/')")
    with path.open(encoding="utf-8") as fh:
        questions = json.load(fh)
    if not isinstance(questions, dict):
        raise BenchmarkLayoutError(f"gqa: {path} must map question ids to questions, as the official file does")
    for qid, question in questions.items():
        missing = [name for name in _FIELDS if name not in question]
        if missing:
            raise BenchmarkLayoutError(f"gqa: {path}: question {qid} has no {missing[0]!r}")
    return questions


class GQA(Benchmark):
    name = "gqa"
    # GQA answers are a few tokens long, so no 16-token output can equal one that a longer budget (LLaVA's
    # loader allows 128) would have produced: the scores do not depend on it.
    max_new_tokens = 16

    def load(self, root: Path) -> list[EvalItem]:
        """The balanced questions (all of testdev_balanced), in the file's order."""
        root = Path(root)
        questions = _read_questions(root / QUESTIONS)
        balanced = {qid: q for qid, q in questions.items() if q["isBalanced"]}
        for image_id in dict.fromkeys(q["imageId"] for q in balanced.values()):
            image = root / IMAGES / f"{image_id}.jpg"
            if not image.is_file():
                raise BenchmarkLayoutError(f"gqa: {image} does not exist (named by {QUESTIONS})")
        return [EvalItem(id=qid, image=f"{self.name}/{IMAGES}/{q['imageId']}.jpg",
                         prompt=q["question"] + SHORT_ANSWER, answer=q["answer"],
                         meta={"structural": q["types"].get("structural")})
                for qid, q in balanced.items()]

    def source_files(self, root: Path) -> list[Path]:
        return [Path(root) / QUESTIONS]

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
