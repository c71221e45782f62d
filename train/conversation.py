"""Conversation templates and label masking by segments.

A template turns a LLaVA conversation (`[{"from": "human"|"gpt", "value": str}, ...]`) into a list of
segments, each either masked or supervised. Every text segment is tokenized on its own (no special
tokens; special-token strings inside the data stay plain text), the ids are concatenated, bos is
prepended once and the image placeholder becomes exactly one `IMAGE_TOKEN_INDEX`. Labels are the ids
of supervised segments and `IGNORE_INDEX` elsewhere, so they line up with the ids by construction —
unlike LLaVA, which tokenizes the whole prompt and re-derives the mask from round lengths, and drops
the whole sample when the two disagree.

Templates (LLaVA-1.5 conventions, `llava/conversation.py` and `llava/train/train.py`; a leading gpt turn
and a trailing human turn are dropped first):
- `plain` (pretrain): `<image>` + caption + "\\n"; the human turn's text is dropped and only the
  caption and "\\n" are supervised. Exactly one human and one gpt turn, and an image.
- `v1` (Vicuna v1, SFT): `{system} USER: {q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>`;
  only each ` {a}` and its `</s>` (the tokenizer's eos id) are supervised. With an image, `<image>`
  is removed from the turns holding it (those, and only those, are stripped of surrounding whitespace,
  as in LLaVA) and put at the front of the first human turn followed by "\\n".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

__all__ = [
    "IGNORE_INDEX", "IMAGE_TOKEN_INDEX", "IMAGE_PLACEHOLDER", "VICUNA_V1_SYSTEM", "Segment",
    "TokenizedSample", "TEMPLATES", "get_template", "first_human_text", "ends_on_human_turn", "tokenize_conversation",
    "tokenize_prompt",
]

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
IMAGE_PLACEHOLDER = "<image>"
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_HUMAN, _GPT = "human", "gpt"


@dataclass(frozen=True)
class Segment:
    """One piece of a formatted conversation: text, the image slot, or the eos token."""

    kind: Literal["text", "image", "eos"]
    supervised: bool
    text: str = ""


@dataclass(frozen=True)
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]


Template = Callable[[Sequence[Mapping[str, Any]], bool], list[Segment]]


def _exchanges(conversations: Sequence[Mapping[str, Any]]) -> tuple[list[tuple[str, str]], bool]:
    """Validated (role, text) pairs as LLaVA trains on them, and whether a trailing human turn was dropped.

    A leading gpt turn is dropped, as LLaVA does. So is a trailing human turn (nothing answers it): LLaVA's
    `preprocess_v1` keeps it in the prompt, where its round check then masks the whole sample ("tokenization
    mismatch", no loss at all); here the answered turns before it still train."""
    turns = []
    for i, turn in enumerate(conversations):
        role, value = turn.get("from"), turn.get("value")
        if role not in (_HUMAN, _GPT) or not isinstance(value, str):
            raise ValueError(f"turn {i} must be {{'from': 'human'|'gpt', 'value': str}}, got {dict(turn)!r}")
        turns.append((role, value))
    if turns and turns[0][0] == _GPT:
        turns = turns[1:]
    trailing = len(turns) % 2 == 1 and turns[-1][0] == _HUMAN
    if trailing:
        turns = turns[:-1]
    expected = [_HUMAN if i % 2 == 0 else _GPT for i in range(len(turns))]
    if not turns or [role for role, _ in turns] != expected:
        raise ValueError("a conversation must alternate human/gpt turns, starting with human, with at least one "
                         f"gpt turn; got roles {[turn.get('from') for turn in conversations]}")
    return turns, trailing


def _turns(conversations: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    return _exchanges(conversations)[0]


def ends_on_human_turn(conversations: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the templates drop a trailing human turn of this (valid) conversation."""
    return _exchanges(conversations)[1]


def first_human_text(conversations: Sequence[Mapping[str, Any]]) -> str:
    """The first human turn without the image placeholder, stripped (the question for conditioning)."""
    return _turns(conversations)[0][1].replace(IMAGE_PLACEHOLDER, "").strip()


def _text_with_image(text: str, *, supervised: bool) -> list[Segment]:
    """Split text at the placeholder into text segments around one image segment."""
    before, found, after = text.partition(IMAGE_PLACEHOLDER)
    segments = [Segment("text", supervised, before)]
    if found:
        segments += [Segment("image", False), Segment("text", supervised, after)]
    return [s for s in segments if s.kind != "text" or s.text]


def _plain(conversations: Sequence[Mapping[str, Any]], has_image: bool) -> list[Segment]:
    turns = _turns(conversations)
    if not has_image or len(turns) != 2:
        raise ValueError("the plain template needs an image sample with exactly one human and one gpt turn; "
                         f"got has_image={has_image} and {len(turns)} turns")
    caption = turns[1][1]
    if IMAGE_PLACEHOLDER in caption:
        raise ValueError(f"the caption contains {IMAGE_PLACEHOLDER!r}: {caption!r}")
    return [Segment("image", False), Segment("text", True, caption + "\n")]


def _check_placeholders(turns: list[tuple[str, str]], has_image: bool) -> None:
    if not has_image and any(IMAGE_PLACEHOLDER in text for _, text in turns):
        raise ValueError(f"a text-only sample (no image) contains {IMAGE_PLACEHOLDER!r}")
    if any(IMAGE_PLACEHOLDER in text for role, text in turns if role == _GPT):
        raise ValueError(f"an assistant turn contains {IMAGE_PLACEHOLDER!r}")


def _vicuna_v1(conversations: Sequence[Mapping[str, Any]], has_image: bool) -> list[Segment]:
    turns = _turns(conversations)
    _check_placeholders(turns, has_image)
    if has_image:  # LLaVA's preprocess_multimodal strips only the turns holding `<image>`; it leads turn 0
        turns = [(role, text.replace(IMAGE_PLACEHOLDER, "").strip() if IMAGE_PLACEHOLDER in text else text)
                 for role, text in turns]
        turns[0] = (_HUMAN, f"{IMAGE_PLACEHOLDER}\n{turns[0][1]}".strip())
    segments: list[Segment] = []
    prefix = VICUNA_V1_SYSTEM + " "  # sep " " after the system prompt; none after "</s>"
    for (_, question), (_, answer) in zip(turns[0::2], turns[1::2]):
        segments += _text_with_image(f"{prefix}USER: {question} ASSISTANT:", supervised=False)
        segments += [Segment("text", True, f" {answer}"), Segment("eos", True)]
        prefix = ""
    return segments


TEMPLATES: Mapping[str, Template] = {"plain": _plain, "v1": _vicuna_v1}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown conversation template {name!r}; valid: {sorted(TEMPLATES)}") from None


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def tokenize_conversation(
    conversations: Sequence[Mapping[str, Any]], *, template: str, tokenizer: Any, has_image: bool,
) -> TokenizedSample:
    """Format with `template`, tokenize segment by segment and mask everything not supervised."""
    segments = get_template(template)(conversations, has_image)
    if tokenizer.eos_token_id is None and any(s.kind == "eos" for s in segments):
        raise ValueError(f"template {template!r} ends replies with eos, but the tokenizer has no eos token")
    input_ids: list[int] = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    labels: list[int] = [IGNORE_INDEX] * len(input_ids)
    for segment in segments:
        if segment.kind == "image":
            ids = [IMAGE_TOKEN_INDEX]
        elif segment.kind == "eos":
            ids = [tokenizer.eos_token_id]
        else:
            ids = _encode(tokenizer, segment.text)
        input_ids += ids
        labels += ids if segment.supervised else [IGNORE_INDEX] * len(ids)
    return TokenizedSample(input_ids=input_ids, labels=labels)


def tokenize_prompt(question: str, *, template: str, tokenizer: Any, has_image: bool) -> list[int]:
    """The ids a model sees at inference for a one-turn `question`: those of the training conversation
    `[human: "<image>\\n" + question, gpt: reply]` before the reply's first supervised token.

    No template's segments before the first supervised one depend on the reply, and each segment is
    tokenized on its own, so the prefix is the same for any reply (`v1`: bos, system, image, question,
    " ASSISTANT:"; `plain`: bos and the image).
    """
    human = f"{IMAGE_PLACEHOLDER}\n{question}" if has_image else question
    conversation = [{"from": _HUMAN, "value": human}, {"from": _GPT, "value": "reply"}]
    sample = tokenize_conversation(conversation, template=template, tokenizer=tokenizer, has_image=has_image)
    start = next(i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX)
    return sample.input_ids[:start]
