"""A map-style dataset over a LLaVA JSON whose image features come from a feature store.

Records are LLaVA's: `{"id": ..., "image": "coco/train2017/x.jpg" (optional), "conversations": [...]}`.
The image key is the `image` string exactly as written (DESIGN §3). Features are read through a
`stages.serving.FeatureSource` (the feature-serving room: the cache stores, or the images computed), one
sample at a time, as float32.
Text is tokenized lazily in `__getitem__` (cheap, and it keeps start-up fast on 665k records), but
every conversation's structure is checked against the template up front (string work, no tokenizer),
as is membership of every image key in the store, so malformed data or a missing image fails before
training starts (`missing="error"`) or is dropped and counted (`missing="skip"`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from stages.config import ConfigError
from stages.errors import UserError
from stages.llava import PROMPT_TEXT, QUESTION, DataError
from train.batch import Sample
from train.conversation import IMAGE_TOKEN_INDEX, first_human_text, get_template, tokenize_conversation

if TYPE_CHECKING:
    from stages.serving import FeatureSource

__all__ = ["MissingImageError", "LlavaDataset"]


class MissingImageError(UserError, KeyError):
    """An image sample whose key is not in the feature store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


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
        missing: Literal["error", "skip"] = "error",
    ) -> None:
        format_conversation = get_template(template)  # fail on a bad name now, not in a worker
        if missing not in ("error", "skip"):
            raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
        if num_image_tokens < 1 or max_length < num_image_tokens + 1:
            raise ConfigError(f"max_length ({max_length}) must exceed num_image_tokens ({num_image_tokens})")
        if feature_source is not None and not array_ids:
            raise ValueError("array_ids must name at least one array to read from the feature source")
        self.template, self.tokenizer, self.feature_source = template, tokenizer, feature_source
        self.max_length, self.num_image_tokens = max_length, num_image_tokens
        self.array_ids = tuple(array_ids)
        self.records, self.skipped_keys = self._check_images(records, missing)
        for i, record in enumerate(self.records):  # string work only: malformed data fails before training
            try:
                if "image" in record and not isinstance(record["image"], str):
                    raise ValueError(f"its 'image' is not a string: {record['image']!r}")
                format_conversation(record["conversations"], record.get("image") is not None)
            except (ValueError, TypeError, AttributeError) as exc:
                raise DataError(f"record {i} (id {record.get('id')!r}) does not fit the {template!r} "
                                f"template: {exc}") from exc

    def _check_images(self, records: Sequence[Mapping[str, Any]], missing: str) -> tuple[list, tuple[str, ...]]:
        if self.feature_source is None:
            return list(records), ()
        kept, skipped = [], []
        for i, record in enumerate(records):
            key = record.get("image")
            if key is None or key in self.feature_source:
                kept.append(record)
            elif missing == "skip":
                skipped.append(key)
            else:
                why = self.feature_source.why_missing(key)
                fix = ("extracting again does not retry a failed image:" if " failed: " in why
                       else "extract it first (`just extract` with its data file) or")
                raise MissingImageError(f"image {key!r} (record {i}, id {record.get('id')!r}) cannot be read from "
                                        f"{self.feature_source!r}: {why}; {fix} pass data.missing=skip to drop "
                                        "such samples")
        return kept, tuple(skipped)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_keys)

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
