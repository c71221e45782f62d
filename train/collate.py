"""Padding collate for `LlavaDataset` items."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from train.conversation import IGNORE_INDEX

__all__ = ["collate"]


def _stack_features(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """`{array_id: (N_img, T, C)}` over the image samples in batch order; `{}` when none carry features."""
    with_image = [s for s in samples if s["image_key"] is not None]
    carried = [s["features"] is not None for s in with_image]
    if not any(carried):
        return {}
    if not all(carried):
        raise ValueError("some image samples in the batch carry features and some do not")
    names = list(with_image[0]["features"])
    for sample in with_image:
        if list(sample["features"]) != names:
            raise ValueError(f"image {sample['image_key']!r} has arrays {list(sample['features'])}, "
                             f"the batch's first image has {names}")
    stacked = {}
    for name in names:
        shapes = {tuple(s["features"][name].shape) for s in with_image}
        if len(shapes) != 1:
            raise ValueError(f"array {name!r} has different shapes across the batch: {sorted(shapes)}")
        stacked[name] = torch.stack([s["features"][name] for s in with_image]).float()  # (N_img, T, C)
    return stacked


def collate(samples: Sequence[dict[str, Any]], *, pad_token_id: int) -> dict[str, Any]:
    """Right-pad ids with `pad_token_id` and labels with `IGNORE_INDEX`; the mask comes from lengths.

    Returns `input_ids`, `labels` (LongTensor, B x L), `attention_mask` (bool, B x L), `has_image`
    (bool, B), `image_keys`, `questions`, `captions` (lists of B) and `features`.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    lengths = [len(s["input_ids"]) for s in samples]
    width = max(lengths)
    input_ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)  # (B, L)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.bool)  # (B, L)
    for row, (sample, length) in enumerate(zip(samples, lengths)):
        input_ids[row, :length] = sample["input_ids"]
        labels[row, :length] = sample["labels"]
        attention_mask[row, :length] = True
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "has_image": torch.tensor([s["image_key"] is not None for s in samples], dtype=torch.bool),
        "image_keys": [s["image_key"] for s in samples],
        "questions": [s["question"] for s in samples],
        "captions": [s["caption"] for s in samples],
        "features": _stack_features(samples),
    }
