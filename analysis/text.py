"""Text tokens as the U-Net's cross-attention sees them: ids (DESIGN §3 tokenizer call), which positions are
content (between the start token and the first end token), and BPE tokens merged back into words."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

__all__ = ["TOKEN_SETS", "Word", "token_ids", "token_mask", "words"]

TOKEN_SETS = ("all", "content")  # ITM LogSumExp over every position / over the prompt's own tokens only


@dataclass(frozen=True)
class Word:
    text: str
    positions: tuple[int, ...]  # token positions (into the 77) that spell it


def token_ids(tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """`(B, L)` ids padded to the tokenizer's max length, as the text encoder receives them."""
    return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def token_mask(ids: torch.Tensor, *, eos_token_id: int, tokens: str) -> torch.Tensor:
    """`(B, L)` bool: every position (`all`) or the content positions 1..first-end-token-1 (`content`)."""
    if tokens not in TOKEN_SETS:
        raise ValueError(f"tokens must be one of {TOKEN_SETS}, got {tokens!r}")
    if tokens == "all":
        return torch.ones_like(ids, dtype=torch.bool)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    is_end = ids == eos_token_id
    first_end = torch.where(is_end.any(1), is_end.int().argmax(1), torch.full_like(ids[:, 0], ids.shape[1]))
    mask = (positions >= 1) & (positions < first_end[:, None])
    if not bool(mask.any(1).all()):
        raise ValueError("a text has no content tokens (empty prompt?); use tokens=all")
    return mask


def words(tokenizer: Any, ids: torch.Tensor) -> list[Word]:
    """The content tokens of one `(L,)` id row merged into words: a word ends at a token ending in `</w>`
    (CLIP's BPE end-of-word mark) or at the end token."""
    mask = token_mask(ids[None], eos_token_id=tokenizer.eos_token_id, tokens="content")[0]
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    out: list[Word] = []
    current: list[int] = []
    for position in mask.nonzero().flatten().tolist():
        current.append(position)
        if tokens[position].endswith("</w>") or position == int(mask.nonzero().max()):
            out.append(Word(tokenizer.decode([int(ids[p]) for p in current]).strip(), tuple(current)))
            current = []
    return out
