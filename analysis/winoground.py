"""Winoground (Thrush et al. 2022) in its official layout (the `data/` folder of the release):

    <root>/examples.jsonl   one object per line: id, caption_0, caption_1, image_0, image_1, collapsed_tag, ...
    <root>/images/<image_0>.png, <root>/images/<image_1>.png

Scores `S[text, image]` of an example give the official metrics: text score (each image prefers its own
caption: S00 > S10 and S11 > S01), image score (each caption prefers its own image: S00 > S01 and
S11 > S10) and group score (both), as percentages of examples.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from analysis.matching import BenchmarkLayoutError, MatchBenchmark, MatchGroup, fixture_image, require

__all__ = ["WINOGROUND"]

EXAMPLES = "examples.jsonl"
IMAGES = "images"
_FIELDS = ("id", "caption_0", "caption_1", "image_0", "image_1")
_LAYOUT = {EXAMPLES: "one JSON object per line with " + ", ".join(_FIELDS), f"{IMAGES}/<image_i>.png": "the images"}

# (caption_0, image_0 spec, caption_1, image_1 spec, collapsed_tag): the words swap, the pictures differ
_FIXTURE = (
    ("a horse facing left", dict(source="horse"), "a horse facing right", dict(source="horse", flip=True), "Object"),
    ("a cup on a red saucer", dict(source="coffee"), "a red saucer without a cup",
     dict(source="coffee", box=(0.0, 0.6, 1.0, 1.0)), "Relation"),
    ("a red motorcycle in a grey workshop", dict(source="motorcycle"), "a grey motorcycle in a grey workshop",
     dict(source="motorcycle", grey=True), "Object"),
    ("the cat looks right with its face on the left", dict(source="chelsea", box=(0.0, 0.0, 0.7, 1.0)),
     "the cat looks left with its face on the right", dict(source="chelsea", box=(0.0, 0.0, 0.7, 1.0), flip=True),
     "Both"),
)


class Winoground(MatchBenchmark):
    name = "winoground"
    columns = ("Text", "Image", "Group")

    def load(self, root: Path) -> list[MatchGroup]:
        path = require(Path(root) / EXAMPLES, "Winoground", _LAYOUT)
        groups = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
                missing = [f for f in _FIELDS if f not in example]
            except json.JSONDecodeError as exc:
                raise BenchmarkLayoutError(f"{path}:{number} is not JSON: {exc}") from exc
            if missing:
                raise BenchmarkLayoutError(f"{path}:{number} lacks {missing}")
            images = tuple(f"{IMAGES}/{example[f'image_{i}']}.png" for i in (0, 1))
            for key in images:
                require(Path(root) / key, "Winoground", _LAYOUT)
            groups.append(MatchGroup(id=str(example["id"]), category=str(example.get("collapsed_tag", "")),
                                     images=images, texts=(example["caption_0"], example["caption_1"])))
        return groups

    def metrics(self, groups: Sequence[MatchGroup], scores: np.ndarray) -> dict[str, float]:
        text = (scores[:, 0, 0] > scores[:, 1, 0]) & (scores[:, 1, 1] > scores[:, 0, 1])
        image = (scores[:, 0, 0] > scores[:, 0, 1]) & (scores[:, 1, 1] > scores[:, 1, 0])
        return {"Text": 100.0 * float(text.mean()), "Image": 100.0 * float(image.mean()),
                "Group": 100.0 * float((text & image).mean())}

    def write_fixture(self, root: Path) -> None:
        (Path(root) / IMAGES).mkdir(parents=True, exist_ok=True)
        lines = []
        for i, (caption_0, spec_0, caption_1, spec_1, tag) in enumerate(_FIXTURE):
            names = (f"ex_{i}_img_0", f"ex_{i}_img_1")
            for name, spec in zip(names, (spec_0, spec_1)):
                fixture_image(**spec).save(Path(root) / IMAGES / f"{name}.png", format="PNG")
            lines.append(json.dumps({"id": i, "caption_0": caption_0, "caption_1": caption_1, "image_0": names[0],
                                     "image_1": names[1], "tag": tag, "secondary_tag": "", "num_main_preds": 1,
                                     "collapsed_tag": tag}))
        (Path(root) / EXAMPLES).write_text("\n".join(lines) + "\n", encoding="utf-8")


WINOGROUND = Winoground()
