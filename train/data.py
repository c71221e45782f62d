"""A map-style dataset over a LLaVA JSON whose image features come from a feature store.

Records are LLaVA's: `{"id": ..., "image": "coco/train2017/x.jpg" (optional), "conversations": [...]}`.
The image key is the `image` string exactly as written (DESIGN §3). Features are read through a
`stages.serving.FeatureSource` (the feature-serving room: the cache stores, or the images computed), one
sample at a time, as float32.
Text is tokenized lazily in `__getitem__` (cheap, and it keeps start-up fast on 665k records), but
every conversation's structure is checked against the template up front (string work, no tokenizer),
as is membership of every image key in the store. The data policy (docs/training.md): malformed data
fails before training starts; a sample whose image the store cannot serve (never extracted, failed to
decode, in an unfinished shard) is skipped and counted by cause (`missing="skip"`, the default) or
stops the run naming what fixes it (`missing="error"`); a trailing human turn is dropped and counted.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from stages.config import ConfigError
from stages.errors import UserError
from stages.llava import PROMPT_TEXT, QUESTION, DataError
from stages.serving.source import NO_IMAGE_FILE
from stages.store.reader import FAILED, INCOMPLETE, NOT_EXTRACTED
from train.batch import Sample
from train.config import MISSING_POLICIES
from train.conversation import (IMAGE_TOKEN_INDEX, ends_on_human_turn, first_human_text, get_template,
                                tokenize_conversation)

if TYPE_CHECKING:
    from stages.serving import FeatureSource

__all__ = ["MissingImageError", "DataReport", "LlavaDataset", "FIXES"]

# what makes a missing image servable, by `MissingKey.cause`
FIXES = {
    NOT_EXTRACTED: "run `just extract` on the data file that holds it, with the run's extraction config",
    INCOMPLETE: "run the same `just extract` again to complete its shard",
    FAILED: "the failure is recorded in the store: fix or replace the image file, then run `just extract` on "
            "its data file with retry_failed=true",
    NO_IMAGE_FILE: "put the image file under the image root",
}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _fix(cause: str) -> str:
    return FIXES.get(cause, "extract the image")


class MissingImageError(UserError, KeyError):
    """An image sample whose key is not in the feature store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class DataReport:
    """What reading the data dropped: samples skipped for their image (`skipped`: cause -> sample count;
    `first`: cause -> the first such sample's reason) and trailing human turns (`trailing_human_turns`)."""

    skipped: Mapping[str, int] = field(default_factory=dict)
    first: Mapping[str, str] = field(default_factory=dict)
    trailing_human_turns: int = 0

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def render(self) -> str:
        """`3 samples skipped for their image (2 failed to extract, 1 not extracted), 1 trailing human turn
        dropped`; "" when nothing was dropped."""
        parts = []
        if self.skipped:
            causes = ", ".join(f"{n} {cause}" for cause, n in self.skipped.items())
            parts.append(f"{_count(self.num_skipped, 'sample')} skipped for their image ({causes})")
        if self.trailing_human_turns:
            parts.append(f"{_count(self.trailing_human_turns, 'trailing human turn')} dropped")
        return ", ".join(parts)

    def explain(self) -> str:
        """`render()`, then per cause the first sample's reason and what fixes it."""
        fixes = "".join(f"; {cause}: {self.first[cause]}; to fix: {_fix(cause)}" for cause in self.skipped)
        return f"{self.render() or 'the data holds no samples'}{fixes}"

    def as_dict(self) -> dict[str, Any]:
        return {"skipped_samples": dict(self.skipped), "trailing_human_turns": self.trailing_human_turns}


def _word_count(record: Mapping[str, Any]) -> int:
    return sum(len(turn.get("value", "").split()) for turn in record["conversations"])


class LlavaDataset(Dataset):
    """Tokenized LLaVA samples with their cached image features.

    `max_length` bounds the sequence the LLM sees after the image placeholder is replaced by
    `num_image_tokens` tokens, so image samples keep `max_length - num_image_tokens + 1` text ids.
    `feature_source=None` reads no features (`features` is None; the caller computes them from
    `image_key`). Items are `Sample`s; their prompts are the question (the first human turn without
    `<image>`, stripped; None for text-only) and the texts of the sources `just extract` stores
    (`stages.llava.PROMPT_TEXT`: the caption, the first gpt turn).
    """

    def __init__(
        self, records: Sequence[Mapping[str, Any]], *, template: str, tokenizer: Any, max_length: int,
        num_image_tokens: int, feature_source: FeatureSource | None, array_ids: Sequence[str],
        missing: Literal["skip", "error"] = "skip",
    ) -> None:
        format_conversation = get_template(template)  # fail on a bad name now, not in a worker
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
        if num_image_tokens < 1 or max_length < num_image_tokens + 1:
            raise ConfigError(f"max_length ({max_length}) must exceed num_image_tokens ({num_image_tokens})")
        if feature_source is not None and not array_ids:
            raise ValueError("array_ids must name at least one array to read from the feature source")
        self.template, self.tokenizer, self.feature_source = template, tokenizer, feature_source
        self.max_length, self.num_image_tokens = max_length, num_image_tokens
        self.array_ids = tuple(array_ids)
        self.records, skipped, first = self._check_images(records, missing)
        trailing = 0
        for i, record in enumerate(self.records):  # string work only: malformed data fails before training
            try:
                if "image" in record and not isinstance(record["image"], str):
                    raise ValueError(f"its 'image' is not a string: {record['image']!r}")
                format_conversation(record["conversations"], record.get("image") is not None)
                trailing += ends_on_human_turn(record["conversations"])
            except (ValueError, TypeError, AttributeError) as exc:
                raise DataError(f"record {i} (id {record.get('id')!r}) does not fit the {template!r} "
                                f"template: {exc}") from exc
        self.report = DataReport(skipped=dict(skipped.most_common()), first=first, trailing_human_turns=trailing)

    def _check_images(self, records: Sequence[Mapping[str, Any]], missing: str
                      ) -> tuple[list, Counter[str], dict[str, str]]:
        """(records kept, skipped samples by cause, the first skipped sample's reason by cause)."""
        if self.feature_source is None:
            return list(records), Counter(), {}
        kept, skipped, first = [], Counter(), {}
        for i, record in enumerate(records):
            key = record.get("image")
            if not isinstance(key, str) or key in self.feature_source:  # no image, or one the next check refuses
                kept.append(record)
                continue
            why = self.feature_source.why_missing(key)
            where = f"image {key!r} (record {i}, id {record.get('id')!r})"
            if missing == "error":
                raise MissingImageError(f"{where} cannot be read from {self.feature_source!r}: {why}; "
                                        f"{_fix(why.cause)}; or set data.missing=skip (the "
                                        "default) to skip such samples and count them")
            skipped[why.cause] += 1
            first.setdefault(why.cause, f"{where}: {why}")
        return kept, skipped, first

    @property
    def num_skipped(self) -> int:
        return self.report.num_skipped

    @property
    def modality_lengths(self) -> list[int]:
        """Word-count length estimates: positive for image samples, negative for text-only (LLaVA's sign)."""
        return [max(1, _word_count(r)) * (1 if r.get("image") is not None else -1) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def _features(self, key: str) -> dict[str, torch.Tensor]:
        arrays = self.feature_source.read([key], list(self.array_ids))
        if set(arrays) != set(self.array_ids):
            raise KeyError(f"feature store {self.feature_source!r} returned arrays {sorted(arrays)} for "
                           f"{key!r}, expected {sorted(self.array_ids)}")
        return {name: torch.from_numpy(np.asarray(arrays[name][0])).float() for name in self.array_ids}  # (T, C)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        conversations = record["conversations"]
        key = record.get("image")
        try:
            sample = tokenize_conversation(conversations, template=self.template, tokenizer=self.tokenizer,
                                           has_image=key is not None)
        except ValueError as exc:
            raise ValueError(f"sample {record.get('id')!r} (image {key!r}): {exc}") from exc
        limit = self.max_length - self.num_image_tokens + 1 if key is not None else self.max_length
        input_ids, labels = sample.input_ids[:limit], sample.labels[:limit]
        if key is not None and IMAGE_TOKEN_INDEX not in input_ids:
            raise ValueError(f"sample {record.get('id')!r}: max_length {self.max_length} truncates the image "
                             "placeholder away; raise max_length")
        prompts = {QUESTION: first_human_text(conversations) if key is not None else None,
                   **{source: text(record) for source, text in PROMPT_TEXT.items()}}
        return Sample(input_ids=torch.tensor(input_ids, dtype=torch.long),
                      labels=torch.tensor(labels, dtype=torch.long), image_key=key, prompts=prompts,
                      features=self._features(key) if key is not None and self.feature_source is not None else None)
