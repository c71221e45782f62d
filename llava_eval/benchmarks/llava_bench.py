"""LLaVA-Bench (In-the-Wild) (Liu et al., LLaVA-1.5): 60 open questions over 24 images in three categories,
conversation ("conv"), detailed description ("detail") and complex reasoning ("complex").

Layouts:
- LLaVA's (the Hub dataset liuhaotian/llava-bench-in-the-wild, as downloaded or extracted to LLaVA's
  `playground/data/eval/llava-bench-in-the-wild`, docs/Evaluation.md): `questions.jsonl` (`question_id,
  image, text, category`), `context.jsonl` (`image, caption`, the judge's view of each image),
  `answers_gpt4.jsonl` (the reference answers, `question_id, text, ...`) and `images/`;
- lmms-eval's copy, the Hub dataset lmms-lab/llava-bench-in-the-wild (split `train`), one row per question:
  columns `question_id`, `question`, `image` (embedded), `caption` (the judge's context), `gpt_answer`
  (the reference answer) and `category` (lmms-eval's llava-in-the-wild/utils.py).
The prompt is the question as is; answers may be long, so up to 1024 new tokens (llava/eval/model_vqa.py).

Its score needs a judge this project does not have: GPT-4 rates the reference and the model's answer to
each question, and the relative score is the ratio of their mean ratings. So `score` reports that no
judge ran, and the scoring happens in LLaVA's own tools:
1. `write_answer_file` writes the model's answers as llava/eval/model_vqa.py does (one JSON line per
   question, in the order of questions.jsonl, which the judge script relies on);
2. LLaVA's llava/eval/eval_gpt_review_bench.py (an OpenAI key) writes a review file from questions.jsonl,
   context.jsonl, answers_gpt4.jsonl and that answer file (scripts/v1_5/eval/llavabench.sh);
3. `summarize_reviews` turns review files into the relative score per category, as
   llava/eval/summarize_gpt_review.py prints it.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from llava_eval.benchmarks.base import Benchmark, BenchmarkLayoutError, EvalItem
from llava_eval.benchmarks.fixtures import photo_jpeg
from llava_eval.benchmarks.hf_local import iter_rows
from llava_eval.benchmarks.layouts import Found, ImageFiles, Layout, data_files_with, first_file

__all__ = ["LlavaBench", "write_answer_file", "summarize_reviews", "QUESTIONS", "CONTEXT", "REFERENCE_ANSWERS",
           "CATEGORIES", "REVIEW_CATEGORY"]

QUESTIONS = "questions.jsonl"
CONTEXT = "context.jsonl"
REFERENCE_ANSWERS = "answers_gpt4.jsonl"
IMAGES = "images"
_LMMS_COLUMNS = ("question_id", "question", "image", "caption", "gpt_answer", "category")
CATEGORIES = ("conv", "detail", "complex")  # questions.jsonl's `category`
REVIEW_CATEGORY = "llava_bench_{}"  # a category as eval_gpt_review_bench.py names it in its review files
_UNPARSED = [-1.0, -1.0]  # what eval_gpt_review_bench.py's parse_score records when the judge's reply is odd

# The fixture: (image, photo, caption, [(question id, category, question, reference answer)]), true of the
# photos; the reference answers are hand-written, not GPT-4's.
_FIXTURE = (
    ("001.jpg", "astronaut", "A smiling woman astronaut in an orange spacesuit poses for an official portrait. "
     "An American flag hangs on the left and a white model of the space shuttle stands behind her.", (
         (0, "conv", "What is the person in the image wearing?",
          "She is wearing an orange spacesuit with a mission patch on the chest."),)),
    ("002.jpg", "rocket", "A white rocket stands on a launch pad at dusk, surrounded by four tall lightning "
     "towers; lights glow along the base of the pad under a deep blue sky.", (
         (1, "detail", "Describe this photo in detail.",
          "The photo shows a white rocket standing upright on its launch pad in the evening. Four tall "
          "metal lightning towers surround it, and bright lights along the pad glow under a deep blue sky."),
         (2, "complex", "What is likely to happen next, and why are the towers there?",
          "The rocket is probably being prepared for launch. The tall towers are lightning masts: they draw "
          "lightning strikes away from the fuelled rocket while it waits on the pad."))),
)


def _read_jsonl(path: Path, *, what: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise BenchmarkLayoutError(f"llava-bench: {path} does not exist ({what})")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise BenchmarkLayoutError(f"llava-bench: {path} line {number} is not JSON ({exc})") from None
    return rows


def _find_llava(root: Path) -> Found:
    first_file(root, (QUESTIONS,))  # the others are refused by name when read
    return Found(root, tuple(root / name for name in (QUESTIONS, CONTEXT, REFERENCE_ANSWERS)))


ANSWER_FILE = "llava-bench-answers.jsonl"  # beside the run's result file


class LlavaBench(Benchmark):
    name = "llava-bench"
    folder_names = ("llava-bench-in-the-wild",)
    max_new_tokens = 1024

    def layouts(self) -> tuple[Layout, ...]:
        return (Layout("LLaVA's liuhaotian/llava-bench-in-the-wild", _find_llava,
                       self._read_llava),
                Layout("lmms-eval's lmms-lab/llava-bench-in-the-wild",
                       data_files_with(_LMMS_COLUMNS, splits=("train",)), self._read_lmms, embedded=True))

    def _read_llava(self, found: Found, images: ImageFiles) -> list[EvalItem]:
        """The questions in the order of questions.jsonl, each with its reference answer."""
        root = found.root
        questions = _read_jsonl(root / QUESTIONS, what="LLaVA-Bench needs questions.jsonl, context.jsonl, "
                                "answers_gpt4.jsonl and images/")
        described = {row.get("image") for row in _read_jsonl(root / CONTEXT, what="the judge's image captions")}
        references = {row.get("question_id"): row.get("text")
                      for row in _read_jsonl(root / REFERENCE_ANSWERS, what="the reference answers")}
        items = []
        for question in questions:
            missing = [name for name in ("question_id", "image", "text", "category") if name not in question]
            if missing:
                raise BenchmarkLayoutError(f"llava-bench: {root / QUESTIONS}: a question has no {missing[0]!r}")
            qid, image = question["question_id"], question["image"]
            key = images.file(root / IMAGES / image, what=f"the image of question {qid}")
            if image not in described:
                raise BenchmarkLayoutError(f"llava-bench: {root / CONTEXT} has no caption of {image}")
            if references.get(qid) is None:
                raise BenchmarkLayoutError(f"llava-bench: {root / REFERENCE_ANSWERS} has no answer to "
                                           f"question {qid}")
            items.append(self._item(qid, key, question["text"], references[qid], question["category"]))
        return items

    def _read_lmms(self, found: Found, images: ImageFiles) -> list[EvalItem]:
        return [self._item(row["question_id"], images.embedded(row["image"], where=f"llava-bench: question "
                                                                                   f"{row['question_id']}"),
                           row["question"], row["gpt_answer"], row["category"]) for row in iter_rows(found.files)]

    def _item(self, qid: Any, image: str, question: str, reference: str, category: str) -> EvalItem:
        return EvalItem(id=str(qid), image=image, prompt=question, answer=reference,
                        meta={"question_id": qid, "category": category})

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> dict[str, Any]:
        """No number: the relative score needs the GPT-4 judge (see the module doc)."""
        return {
            "judge": "not run",
            "questions": len(items),
            "questions_per_category": dict(Counter(item.meta["category"] for item in items)),
            "answered": sum(bool(predictions[item.id].strip()) for item in items),
            "how": f"judge {ANSWER_FILE} with LLaVA's llava/eval/eval_gpt_review_bench.py, then "
                   "`just llava-bench-score REVIEW --run RUN` (docs/evaluation.md)",
        }

    def write_outputs(self, items: Sequence[EvalItem], predictions: Mapping[str, str], folder: Path, *,
                      model_id: str) -> list[Path]:
        """The answer file LLaVA's judge script reads."""
        return [write_answer_file(Path(folder) / ANSWER_FILE, items, predictions, model_id=model_id)]

    def write_fixture(self, root: Path) -> None:
        root = Path(root)
        (root / IMAGES).mkdir(parents=True, exist_ok=True)
        questions, context, answers = [], [], []
        for image, photo, caption, asked in _FIXTURE:
            (root / IMAGES / image).write_bytes(photo_jpeg(photo))
            context.append({"id": Path(image).stem, "image": image, "caption": caption})
            for qid, category, text, answer in asked:
                questions.append({"image": image, "text": text, "category": category, "question_id": qid})
                answers.append({"question_id": qid, "prompt": text, "text": answer,
                                "answer_id": _answer_id("hand-written", qid, answer),
                                "model_id": "hand-written", "metadata": {}})
        for name, rows in ((QUESTIONS, questions), (CONTEXT, context), (REFERENCE_ANSWERS, answers)):
            (root / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _answer_id(model_id: str, question_id: Any, text: str) -> str:
    """A content hash in place of model_vqa.py's random shortuuid, so a rerun writes the same file."""
    return hashlib.sha256(json.dumps([model_id, question_id, text]).encode()).hexdigest()[:22]


def write_answer_file(path: Path, items: Sequence[EvalItem], predictions: Mapping[str, str], *,
                      model_id: str) -> Path:
    """The model's answers in LLaVA's answer-file format (llava/eval/model_vqa.py: `question_id, prompt,
    text, answer_id, model_id, metadata`, the text stripped), one line per item in the items' order
    (= questions.jsonl's). Written to a temp file and renamed."""
    lines = []
    for item in items:
        text = predictions[item.id].strip()
        qid = item.meta["question_id"]
        lines.append(json.dumps({"question_id": qid, "prompt": item.prompt, "text": text,
                                 "answer_id": _answer_id(model_id, qid, text), "model_id": model_id,
                                 "metadata": {}}) + "\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path


def summarize_reviews(review_files: Sequence[Path]) -> dict[str, dict[str, dict[str, float]]]:
    """Per review file, per category and "all": what llava/eval/summarize_gpt_review.py prints.

    Each review line holds `tuple` = [reference rating, model rating] (or `score`, older files) and,
    for LLaVA-Bench, `category` = "llava_bench_<conv|detail|complex>". The ratings of a category are
    averaged and rounded to 3 decimals; then `relative` = round(100 * model / reference, 1) (the paper's
    number), `reference` and `model` = round(10 * rating, 1). Lines the judge's reply could not be parsed
    for ([-1, -1]) are averaged in as LLaVA does, and counted in `unparsed`.
    """
    import numpy as np

    summaries = {}
    for review_file in review_files:
        review_file = Path(review_file)
        ratings: dict[str, list[list[float]]] = {}
        for number, review in enumerate(_read_jsonl(review_file, what="a judge's review file"), start=1):
            pair = review.get("tuple", review.get("score"))
            if not (isinstance(pair, list) and len(pair) == 2):
                raise BenchmarkLayoutError(f"llava-bench: {review_file} review {number} has no rating pair "
                                           "('tuple': [reference, model])")
            categories = [review["category"], "all"] if "category" in review else ["all"]
            for category in categories:
                ratings.setdefault(category, []).append([float(x) for x in pair])
        summary = {}
        for category, pairs in sorted(ratings.items()):
            reference, model = (round(x, 3) for x in np.asarray(pairs).mean(0).tolist())
            summary[category] = {"relative": round(model / reference * 100, 1),
                                 "reference": round(reference * 10, 1), "model": round(model * 10, 1),
                                 "reviews": len(pairs), "unparsed": sum(pair == _UNPARSED for pair in pairs)}
        summaries[str(review_file)] = summary
    return summaries
