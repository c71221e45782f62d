"""MMVP (Tong et al., "Eyes Wide Shut?", CVPR 2024): 300 two-option questions in 150 pairs of CLIP-blind
images, the same question asked of both images of a pair with opposite answers.

Layouts:
- the official one (tsb0601/MMVP README; the Hub dataset MMVP/MMVP, an image folder; LLaVA-style
  `playground/data/eval/MMVP`): `Questions.csv` with the columns `Index, Question, Options, Correct Answer`
  (`1,Are the butterfly's wings closer to being open or closed?,(a) Open (b) Closed,(a)`) and
  `MMVP Images/<Index>.jpg`;
- lmms-eval's copy, the Hub dataset lmms-lab-eval/MMVP (split `train`, `data/train-*.parquet`): the same
  four columns and `image`, the photo embedded (lmms-eval's mmvp/utils.py also accepts the lower-case
  `question`, `options`, `answer`, `index`; so does this reader). Its answers already carry the
  corrections below.

Prompt: LLaVA's multiple-choice convention (its `--single-pred-prompt` evaluations), the options
rewritten as `A. Open\\nB. Closed`, then "Answer with the option's letter from the given choices
directly." The paper's number is the pair accuracy: a pair (questions 1-2, 3-4, ...) counts when both
are right, as tsb0601/MMVP scripts/gpt_grader.py counts consecutive answers two by two.

Ground-truth corrections (`corrected=True`, the default): two pairs of the released CSV carry swapped
answers — 99/100 (elephant tusks; the CSV says (a) Long, (b) Short) and 279/280 (elderly person; the CSV
says (a) Standing, (b) Sitting). The corrected answers are 99 (b), 100 (a), 279 (b), 280 (a), as reported
in tsb0601/MMVP issues #14 and #30 and applied by lmms-eval (EvolvingLMMs-Lab/lmms-eval,
lmms_eval/tasks/mmvp/utils.py, issue #1018). They are set, not toggled, so a CSV already fixed stays right.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from llava_eval.benchmarks.base import Benchmark, BenchmarkLayoutError, EvalItem
from llava_eval.benchmarks.choices import extract_choice, format_options, option_letters
from llava_eval.benchmarks.fixtures import photo_jpeg
from llava_eval.benchmarks.hf_local import iter_rows
from llava_eval.benchmarks.layouts import Found, ImageFiles, Layout, data_files_with, first_file

__all__ = ["MMVP", "CORRECTED_ANSWERS", "INSTRUCTION"]

INSTRUCTION = "Answer with the option's letter from the given choices directly."
CORRECTED_ANSWERS = {99: "B", 100: "A", 279: "B", 280: "A"}  # CSV Index -> right letter (see module doc)
QUESTIONS = "Questions.csv"
IMAGES = "MMVP Images"
_COLUMNS = ("Index", "Question", "Options", "Correct Answer")
_HUB_COLUMNS = {"Question": ("Question", "question"), "Options": ("Options", "options"),  # lmms-eval's spellings
                "Correct Answer": ("Correct Answer", "answer"), "Index": ("Index", "index", "idx")}
_OPTION_MARK = re.compile(r"\(([a-zA-Z])\)\s*")
_ANSWER = re.compile(r"\(?([a-zA-Z])\)?")

# The fixture: 4 pairs, each question asked of two photos with opposite answers, true of the photos.
_FIXTURE = (
    ("Is the picture in colour or in black and white?", ("Colour", "Black and white"),
     (("chelsea", "A"), ("camera", "B"))),
    ("Is there a cat in the image?", ("Yes", "No"), (("chelsea", "A"), ("coffee", "B"))),
    ("Does the image show a rocket or a cup of coffee?", ("A rocket", "A cup of coffee"),
     (("rocket", "A"), ("coffee", "B"))),
    ("Does the image show coins or the moon?", ("Coins", "The moon"), (("moon", "B"), ("coins", "A"))),
)


def _parse_options(text: str | list[str], *, where: str) -> list[str]:
    """`(a) Open (b) Closed` (or a list of the texts) -> `["Open", "Closed"]`."""
    if isinstance(text, list) and len(text) >= 2 and all(isinstance(o, str) and o.strip() for o in text):
        return [option.strip() for option in text]
    parts = _OPTION_MARK.split(str(text).strip())  # ["", "a", "Open ", "b", "Closed"]
    marks, options = [p.lower() for p in parts[1::2]], [p.strip() for p in parts[2::2]]
    if parts[0].strip() or len(options) < 2 or marks != list(option_letters(len(options)).lower()) \
            or not all(options):
        raise BenchmarkLayoutError(f"{where}: Options {text!r} is not of the form '(a) ... (b) ...'")
    return options


def _parse_answer(text: str, n_options: int, *, where: str) -> str:
    """`(a)` -> `A`."""
    match = _ANSWER.fullmatch(text.strip())
    if not match or match.group(1).upper() not in option_letters(n_options):
        raise BenchmarkLayoutError(f"{where}: Correct Answer {text!r} is not one of the options' letters")
    return match.group(1).upper()


def _read_questions(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        header = [name.strip() for name in reader.fieldnames or ()]
        missing = [name for name in _COLUMNS if name not in header]
        if missing:
            raise BenchmarkLayoutError(f"mmvp: {path} has no column {missing[0]!r} (header: {header})")
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def _find_official(root: Path) -> Found:
    return Found(root, (first_file(root, (QUESTIONS,)),))


_HUB_FILES = data_files_with(["image", *(_HUB_COLUMNS[name] for name in _COLUMNS[1:])], splits=("train",))


def _hub_row(row: Mapping[str, Any], position: int) -> dict[str, Any]:
    """A row of lmms-eval's copy with the CSV's column names; no index column: the row's position."""
    named = {name: next((row[k] for k in spellings if k in row), None) for name, spellings in _HUB_COLUMNS.items()}
    return {**named, "Index": str(named["Index"] if named["Index"] is not None else position)}


class MMVP(Benchmark):
    name = "mmvp"
    folder_names = ("MMVP",)

    def __init__(self, *, corrected: bool = True) -> None:
        self.corrected = corrected

    def layouts(self) -> tuple[Layout, ...]:
        return (Layout("official MMVP/MMVP", _find_official, self._read_official),
                Layout("lmms-eval's lmms-lab-eval/MMVP", _HUB_FILES, self._read_hub, embedded=True))

    def _read_official(self, found: Found, images: ImageFiles) -> list[EvalItem]:
        (csv_path,) = found.files

        def image(index: int) -> str:
            return images.file(found.root / IMAGES / f"{index}.jpg", what=f"the image of question {index}")
        items = [self._item(row, image, where=f"mmvp: {csv_path} row {n}")
                 for n, row in enumerate(_read_questions(csv_path), start=2)]  # row 1 is the header
        return self._paired(items, csv_path)

    def _read_hub(self, found: Found, images: ImageFiles) -> list[EvalItem]:
        items = []
        for position, row in enumerate(iter_rows(found.files), start=1):
            where = f"mmvp: {found.files[0].parent} row {position}"
            items.append(self._item(_hub_row(row, position), lambda _: images.embedded(row["image"], where=where),
                                    where=where))
        return self._paired(items, found.files[0])

    @staticmethod
    def _paired(items: list[EvalItem], source: Path) -> list[EvalItem]:
        pairs: dict[int, int] = {}
        for item in items:
            pairs[item.meta["pair"]] = pairs.get(item.meta["pair"], 0) + 1
        broken = sorted(pair for pair, count in pairs.items() if count != 2)
        if broken:
            first = 2 * broken[0] + 1
            raise BenchmarkLayoutError(f"mmvp: {source}: questions {first} and {first + 1} must both be "
                                       "present, once each (MMVP scores consecutive pairs)")
        return items

    def options(self) -> dict[str, Any]:
        return {"corrected": self.corrected}

    def _item(self, row: Mapping[str, Any], image_key: Callable[[int], str], *, where: str) -> EvalItem:
        if not str(row["Index"]).isdigit() or int(row["Index"]) < 1:
            raise BenchmarkLayoutError(f"{where}: Index {row['Index']!r} is not a positive integer")
        index = int(row["Index"])
        options = _parse_options(row["Options"], where=where)
        given = _parse_answer(str(row["Correct Answer"]), len(options), where=where)
        answer = CORRECTED_ANSWERS.get(index, given) if self.corrected else given
        prompt = f"{str(row['Question']).strip()}\n{format_options(options)}\n{INSTRUCTION}"
        return EvalItem(id=str(index), image=image_key(index), prompt=prompt, answer=answer,
                        meta={"pair": (index - 1) // 2, "options": options, "csv_answer": given})

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> dict[str, Any]:
        """Accuracy over questions and over pairs (both questions right), as fractions."""
        picked = {item.id: extract_choice(predictions[item.id], item.meta["options"]) for item in items}
        right = {item.id: picked[item.id] == item.answer for item in items}
        by_pair: dict[int, list[bool]] = {}
        for item in items:
            by_pair.setdefault(item.meta["pair"], []).append(right[item.id])
        complete = [answers for answers in by_pair.values() if len(answers) == 2]
        return {
            "accuracy": sum(right.values()) / len(items),
            "pair_accuracy": sum(all(answers) for answers in complete) / len(complete) if complete else 0.0,
            "questions": len(items),
            "pairs": len(complete),
            "unanswered": sum(letter is None for letter in picked.values()),
            "corrected": self.corrected,
        }

    def write_fixture(self, root: Path) -> None:
        root = Path(root)
        (root / IMAGES).mkdir(parents=True, exist_ok=True)
        rows, index = [], 0
        for question, options, shots in _FIXTURE:
            for photo, letter in shots:
                index += 1
                (root / IMAGES / f"{index}.jpg").write_bytes(photo_jpeg(photo))
                marked = " ".join(f"({mark}) {text}" for mark, text in zip("ab", options))
                rows.append([index, question, marked, f"({letter.lower()})"])
        with (root / QUESTIONS).open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(_COLUMNS)
            writer.writerows(rows)
