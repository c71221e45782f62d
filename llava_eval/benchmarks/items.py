"""A benchmark's unit of evaluation, and the refusal of a folder that does not hold a benchmark; the lowest
floor of `llava_eval.benchmarks` (layouts and readers build on it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from stages.errors import UserError

__all__ = ["EvalItem", "BenchmarkLayoutError"]


class BenchmarkLayoutError(UserError, FileNotFoundError):
    """A benchmark folder in none of its accepted layouts, or with a file missing or malformed (the message
    names it)."""


@dataclass(frozen=True)
class EvalItem:
    id: str  # unique and stable within the benchmark: the key of its prediction
    image: str | None  # image key relative to the image root; None for a text-only question
    prompt: str  # the human turn the model sees (question, options, instruction), without "<image>"
    answer: Any  # JSON-serialisable ground truth (a letter, "yes", reference captions, ...)
    meta: Mapping[str, Any] = field(default_factory=dict)  # JSON-serialisable: category, pair, type, ...
    caption: str | None = None  # a reference caption: the SD prompt of COCO's ground-truth setting
