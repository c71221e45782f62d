"""A benchmark's images as a LLaVA-format JSON, so the ordinary extraction fills (or finds) their store:
`just extract config=... data=[that json] image_root=<eval_root>` (DESIGN §7).

Each item with an image becomes one record: `id`, `image` (its key, relative to the eval root) and one
human/gpt exchange. The human turn is `<image>\\n` + the prompt; the gpt turn is the item's reference
caption when it has one, else its answer: the first reply is what caption-guided extraction conditions on
(`stages.llava.first_reply`). Images shared by several items are listed once per item; the extraction
manifest deduplicates them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from llava_eval.benchmarks.base import EvalItem
from stages.store.layout import write_json_atomic

__all__ = ["llava_records", "write_llava_json"]


def _as_text(answer: Any) -> str:
    return answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)


def llava_records(items: Sequence[EvalItem]) -> list[dict[str, Any]]:
    """The LLaVA records of the items that have an image, in item order."""
    return [{"id": item.id, "image": item.image,
             "conversations": [{"from": "human", "value": f"<image>\n{item.prompt}"},
                               {"from": "gpt", "value": item.caption if item.caption is not None
                                else _as_text(item.answer)}]}
            for item in items if item.image is not None]


def write_llava_json(items: Sequence[EvalItem], path: Path) -> Path:
    """Write `llava_records(items)` to `path` atomically; returns `path`."""
    path = Path(path)
    write_json_atomic(path, llava_records(items))
    return path
