"""Greedy decoding (temperature 0) with a KV cache over a `train.model.LlavaModel`.

Prompts are token ids with one `IMAGE_TOKEN_INDEX` per image (`train.conversation.tokenize_prompt`).
They are spliced the training way (`splice_image_tokens` on right-padded ids), then every row is shifted
right by its padding, so the batch is left padded: all rows end at the last column and one next-token
column serves the whole batch. Position ids come from the attention mask as in training, so a row's
positions — and its tokens — do not depend on the rows batched with it.
"""
from __future__ import annotations

import sys
from typing import Mapping, Sequence

import torch
from torch import Tensor

from train.model import LlavaModel, position_ids

__all__ = ["left_padded_inputs", "generate"]


def left_padded_inputs(model: LlavaModel, prompts: Sequence[Sequence[int]],
                       features: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The prompts as the LLM reads them: (inputs_embeds (B, L, H), attention_mask (B, L) bool), left padded.

    `features`: `{array_id: (N_img, T, C)}`, the images of the prompts holding one, in prompt order.
    """
    if not prompts or not all(prompts):
        raise ValueError("generation needs at least one prompt, and no empty prompt")
    device = model.llm.get_input_embeddings().weight.device
    lengths = torch.tensor([len(p) for p in prompts], device=device)  # (B,)
    width = int(lengths.max())
    input_ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)  # (B, L), right padded
    for row, prompt in enumerate(prompts):
        input_ids[row, :len(prompt)] = torch.as_tensor(prompt, dtype=torch.long)
    mask = torch.arange(width, device=device) < lengths[:, None]  # (B, L)
    embeds, _, mask = model.embed_inputs(input_ids=input_ids, labels=input_ids, attention_mask=mask,
                                         features={a: x.to(device) for a, x in features.items()},
                                         max_length=sys.maxsize)  # never cut a prompt (training cuts)
    length = mask.shape[1]
    source = (torch.arange(length, device=device) - (length - mask.sum(dim=1))[:, None]) % length  # (B, L')
    return embeds.gather(1, source[..., None].expand_as(embeds)), mask.gather(1, source)


@torch.inference_mode()
def generate(model: LlavaModel, prompts: Sequence[Sequence[int]], features: Mapping[str, Tensor], *,
             max_new_tokens: int, eos_token_id: int, pad_token_id: int) -> list[list[int]]:
    """Greedy new tokens per prompt, without eos, each stopped at eos or after `max_new_tokens`.

    One prefill pass over the left-padded batch, then one token per step from the KV cache; a finished
    row is fed `pad_token_id` until every row has finished.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    model.eval()
    embeds, mask = left_padded_inputs(model, prompts, features)
    positions = position_ids(mask)  # (B, L): 0 at each row's first token
    step_inputs: dict[str, Tensor] = {"inputs_embeds": embeds}
    cache = None
    done = torch.zeros(len(prompts), dtype=torch.bool, device=mask.device)  # (B,)
    columns: list[Tensor] = []
    for _ in range(max_new_tokens):
        out = model.llm(**step_inputs, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                        logits_to_keep=1)
        cache = out.cache
        next_ids = out.logits[:, -1].argmax(dim=-1).masked_fill(done, pad_token_id)  # (B,)
        columns.append(next_ids)
        done |= next_ids == eos_token_id
        if bool(done.all()):
            break
        step_inputs = {"input_ids": next_ids[:, None]}
        mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)  # (B, L + step)
        positions = positions[:, -1:] + 1  # (B, 1)
    rows = torch.stack(columns, dim=1).tolist() if columns else [[] for _ in prompts]
    return [row[:row.index(eos_token_id)] if eos_token_id in row else row for row in rows]
