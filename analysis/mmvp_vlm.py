"""MMVP-VLM (Tong et al. 2024) in its official layout:

    <root>/Questions.csv              columns: Question ID, Type, Statement (header row first)
    <root>/MLLM_VLM Images/<Type>/<Question ID>.jpg

Consecutive rows form a pair; statement `i` describes image `<i>.jpg`. The text scored is
`"a photo of " + statement`, as the official `evaluate_vlm.py` does. A pair counts when each statement picks
its own image: statement 1 picks image 1 when `S(img1) > S(img2)`, otherwise image 2 (the official rule,
ties go to image 2). Reported per category (the Type column; 15 pairs each in the release) and averaged
over categories, laid out like the paper's Table 1.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from analysis.matching import BenchmarkLayoutError, MatchBenchmark, MatchGroup, fixture_image, require

__all__ = ["MMVP_VLM", "CATEGORIES", "TEXT_PREFIX"]

IMAGES = "MLLM_VLM Images"
QUESTIONS = "Questions.csv"
HEADER = ("Question ID", "Type", "Statement")
TEXT_PREFIX = "a photo of "
CATEGORIES = ("Orientation and Direction", "Presence of Specific Features", "State and Condition",
              "Quantity and Count", "Positional and Relational Context", "Color and Appearance",
              "Structural Characteristics", "Texts", "Viewpoint and Perspective")
_LAYOUT = {QUESTIONS: ", ".join(HEADER), f"{IMAGES}/<Type>/<Question ID>.jpg": "one image per statement"}

# category -> ((statement, image spec) x 2): a mirrored, cropped or recoloured bundled photo per statement
_FIXTURE = {
    "Orientation and Direction": (("the horse faces left", dict(source="horse")),
                                  ("the horse faces right", dict(source="horse", flip=True))),
    "Presence of Specific Features": (("there is a flag beside the astronaut", dict(source="astronaut")),
                                      ("there is no flag in the picture",
                                       dict(source="astronaut", box=(0.0, 0.0, 0.55, 1.0)))),
    "State and Condition": (("the cup is full of coffee", dict(source="coffee")),
                            ("the saucer is seen without the cup", dict(source="coffee", box=(0.0, 0.6, 1.0, 1.0)))),
    "Quantity and Count": (("four rows of coins", dict(source="coins")),
                           ("a single row of coins", dict(source="coins", box=(0.0, 0.0, 1.0, 0.27)))),
    "Positional and Relational Context": (("the cat's face is on the left",
                                           dict(source="chelsea", box=(0.0, 0.0, 0.7, 1.0))),
                                          ("the cat's face is on the right",
                                           dict(source="chelsea", box=(0.0, 0.0, 0.7, 1.0), flip=True))),
    "Color and Appearance": (("a red motorcycle", dict(source="motorcycle")),
                             ("a grey motorcycle", dict(source="motorcycle", grey=True))),
    "Structural Characteristics": (("a wall of long narrow bricks", dict(source="brick")),
                                   ("a ground of small round stones", dict(source="gravel"))),
    "Texts": (("a page with a heading", dict(source="page")),
              ("a page of plain text without a heading", dict(source="page", box=(0.0, 0.5, 1.0, 1.0)))),
    "Viewpoint and Perspective": (("a man with a camera seen from afar", dict(source="camera")),
                                  ("a close view of the camera", dict(source="camera", box=(0.3, 0.1, 0.8, 0.5)))),
}


class MMVPVLM(MatchBenchmark):
    name = "mmvp-vlm"
    columns = (*CATEGORIES, "Average")

    def load(self, root: Path) -> list[MatchGroup]:
        csv_path = require(Path(root) / QUESTIONS, "MMVP-VLM", _LAYOUT)
        with csv_path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        if not rows or tuple(c.strip() for c in rows[0][:3]) != HEADER:
            raise BenchmarkLayoutError(f"{csv_path}: the header must be {', '.join(HEADER)}")
        body = [r for r in rows[1:] if r]
        if len(body) % 2:
            raise BenchmarkLayoutError(f"{csv_path}: {len(body)} statements; MMVP-VLM pairs consecutive rows")
        groups = []
        for first, second in zip(body[::2], body[1::2]):
            (q1, type1, s1), (q2, _, s2) = first[:3], second[:3]
            images = tuple(f"{IMAGES}/{type1}/{int(q)}.jpg" for q in (q1, q2))
            for key in images:
                require(Path(root) / key, "MMVP-VLM", _LAYOUT)
            groups.append(MatchGroup(id=f"{int(q1)}-{int(q2)}", category=type1, images=images,
                                     texts=(TEXT_PREFIX + s1, TEXT_PREFIX + s2)))
        return groups

    def metrics(self, groups: Sequence[MatchGroup], scores: np.ndarray) -> dict[str, float]:
        first_right = scores[:, 0, 0] > scores[:, 0, 1]  # statement 1 picks image 1
        second_right = ~(scores[:, 1, 0] > scores[:, 1, 1])  # statement 2 picks image 2 (ties included)
        correct = first_right & second_right
        order = [c for c in CATEGORIES if any(g.category == c for g in groups)]
        order += list(dict.fromkeys(g.category for g in groups if g.category not in CATEGORIES))
        out = {}
        for category in order:
            rows = [i for i, g in enumerate(groups) if g.category == category]
            out[category] = 100.0 * float(correct[rows].mean())
        out["Average"] = float(np.mean(list(out.values())))
        return out

    def write_fixture(self, root: Path) -> None:
        rows = [HEADER]
        qid = 0
        for category, pair in _FIXTURE.items():
            for statement, image in pair:
                qid += 1
                path = Path(root) / IMAGES / category / f"{qid}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                fixture_image(**image).save(path, format="JPEG", quality=90)
                rows.append((str(qid), category, statement))
        with (Path(root) / QUESTIONS).open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(rows)


MMVP_VLM = MMVPVLM()
