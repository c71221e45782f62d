"""A dataset item (`Sample`), the padded micro-batch the loop trains on (`Batch`), and `collate` between them."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch import Tensor

from train.conversation import IGNORE_INDEX

__all__ = ["Sample", "Batch", "collate"]


@dataclass
class Sample:
    """One `LlavaDataset` item. `prompts`: each prompt source's text for this sample
    (`stages.llava.PROMPT_SOURCES`; the question is None for a text-only sample); `features`:
    `{array_id: float32 (T, C)}`, None for a text-only sample or a dataset without a feature source."""

    input_ids: Tensor  # (L,) long
    labels: Tensor  # (L,) long
    image_key: str | None
    prompts: dict[str, str | None]
    features: dict[str, Tensor] | None


@dataclass
class Batch:
    """B samples right-padded to the longest (`collate`). `prompts`: each prompt source's texts, one per
    sample; `features`: `{array_id: (N_img, T, C) float32}` over the image samples in batch order, `{}` when
    none carry features."""

    input_ids: Tensor  # (B, L) long, padded with the pad token id
    labels: Tensor  # (B, L) long, padded with IGNORE_INDEX
    attention_mask: Tensor  # (B, L) bool
    has_image: Tensor  # (B,) bool
    image_keys: list[str | None]
    prompts: dict[str, list[str | None]]
    features: dict[str, Tensor]

    def __len__(self) -> int:
        return len(self.image_keys)

    def _map_tensors(self, fn: Callable[[Tensor], Tensor]) -> Batch:
        return replace(self, input_ids=fn(self.input_ids), labels=fn(self.labels),
                       attention_mask=fn(self.attention_mask), has_image=fn(self.has_image),
                       features={name: fn(t) for name, t in self.features.items()})

    def to(self, device: torch.device) -> Batch:
        """The batch with its tensors on `device` (copied without blocking)."""
        return self._map_tensors(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> Batch:
        """The batch with its tensors in pinned memory: what `DataLoader(pin_memory=True)` calls."""
        return self._map_tensors(Tensor.pin_memory)


def _stack_features(samples: Sequence[Sample]) -> dict[str, Tensor]:
    """`{array_id: (N_img, T, C)}` over the image samples in batch order; `{}` when none carry features."""
    with_image = [s for s in samples if s.image_key is not None]
    carried = [s.features is not None for s in with_image]
    if not any(carried):
        return {}
    if not all(carried):
        raise ValueError("some image samples in the batch carry features and some do not")
    names = list(with_image[0].features)
    for sample in with_image:
        if list(sample.features) != names:
            raise ValueError(f"image {sample.image_key!r} has arrays {list(sample.features)}, "
                             f"the batch's first image has {names}")
    stacked = {}
    for name in names:
        shapes = {tuple(s.features[name].shape) for s in with_image}
        if len(shapes) != 1:
            raise ValueError(f"array {name!r} has different shapes across the batch: {sorted(shapes)}")
        stacked[name] = torch.stack([s.features[name] for s in with_image]).float()  # (N_img, T, C)
    return stacked


def collate(samples: Sequence[Sample], *, pad_token_id: int) -> Batch:
    """Right-pad ids with `pad_token_id` and labels with `IGNORE_INDEX`; the mask comes from lengths."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    lengths = [len(s.input_ids) for s in samples]
    width = max(lengths)
    input_ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)  # (B, L)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.bool)  # (B, L)
    for row, (sample, length) in enumerate(zip(samples, lengths)):
        input_ids[row, :length] = sample.input_ids
        labels[row, :length] = sample.labels
        attention_mask[row, :length] = True
    return Batch(input_ids=input_ids, labels=labels, attention_mask=attention_mask,
                 has_image=torch.tensor([s.image_key is not None for s in samples], dtype=torch.bool),
                 image_keys=[s.image_key for s in samples],
                 prompts={source: [s.prompts[source] for s in samples] for source in samples[0].prompts},
                 features=_stack_features(samples))
