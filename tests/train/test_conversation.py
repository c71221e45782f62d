"""Label masks of the plain and v1 templates, against masks written out per segment, and the tiny LLM."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from stages.embedded import MANIFEST_NAME, resolve_model
from stages.embedded.llm import build_tiny_llm
from train.conversation import (
    IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX, VICUNA_V1_SYSTEM, ends_on_human_turn, first_human_text,
    tokenize_conversation,
)

IGN, IMG = IGNORE_INDEX, IMAGE_TOKEN_INDEX
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    """The registered `embedded:tiny-llm`, materialised under a private embedded home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DFC_EMBEDDED_HOME", str(tmp_path_factory.mktemp("embedded-home")))
        return Path(resolve_model("embedded:tiny-llm"))


@pytest.fixture(scope="module")
def tok(llm_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(llm_dir)


def ids(tok, text: str) -> list[int]:
    """One segment's ids: plain text, no bos."""
    return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def render(tok, token_ids: list[int]) -> str:
    """Decode, writing the image slot as the placeholder and dropping masked positions' IGNORE ids."""
    out, run = [], []
    for i in [*token_ids, None]:
        if i is None or i in (IMG, IGN):
            out.append(tok.decode(run))
            run = []
            out.append(IMAGE_PLACEHOLDER if i == IMG else "")
        else:
            run.append(i)
    return "".join(out)


def turns(*values: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def check(sample, expected_ids, expected_labels):
    assert sample.input_ids == expected_ids
    assert sample.labels == expected_labels
    assert all(label in (IGN, token) for label, token in zip(sample.labels, sample.input_ids))


def test_vicuna_system_prompt_is_llava_conv_vicuna_v1():
    assert VICUNA_V1_SYSTEM == SYSTEM


def test_plain_supervises_only_caption_and_newline(tok):
    conv = turns("<image>\nDescribe the image concisely.", "a cat on a red sofa")
    sample = tokenize_conversation(conv, template="plain", tokenizer=tok, has_image=True)
    caption = ids(tok, "a cat on a red sofa\n")
    bos = tok.bos_token_id
    check(sample, [bos, IMG] + caption, [IGN, IGN] + caption)
    assert render(tok, sample.input_ids) == "<s><image>a cat on a red sofa\n"
    assert render(tok, sample.labels) == "a cat on a red sofa\n"


@pytest.mark.parametrize(("conv", "has_image"), [
    (turns("Describe the image.", "a cat"), False),
    (turns("<image>\nDescribe.", "a cat", "More?", "a red sofa"), True),
])
def test_plain_rejects_text_only_and_multi_turn_samples(tok, conv, has_image):
    with pytest.raises(ValueError, match="plain template"):
        tokenize_conversation(conv, template="plain", tokenizer=tok, has_image=has_image)


def test_v1_single_turn_moves_image_from_end_of_turn_to_front(tok):
    conv = turns("What is in the image?\n<image>", "A cat on a sofa.")
    sample = tokenize_conversation(conv, template="v1", tokenizer=tok, has_image=True)
    head, question, reply = ids(tok, SYSTEM + " USER: "), ids(tok, "\nWhat is in the image? ASSISTANT:"), \
        ids(tok, " A cat on a sofa.")
    bos, eos = tok.bos_token_id, tok.eos_token_id
    check(sample,
          [bos] + head + [IMG] + question + reply + [eos],
          [IGN] * (1 + len(head) + 1 + len(question)) + reply + [eos])
    assert render(tok, sample.input_ids) == (
        f"<s>{SYSTEM} USER: <image>\nWhat is in the image? ASSISTANT: A cat on a sofa.</s>")
    assert render(tok, sample.labels) == " A cat on a sofa.</s>"


def test_v1_multi_turn_with_image_supervises_every_reply_and_its_eos(tok):
    conv = turns("<image>\nWhat color is the bus?", "Yellow.", "How many people?", "There are three people.")
    sample = tokenize_conversation(conv, template="v1", tokenizer=tok, has_image=True)
    head = ids(tok, SYSTEM + " USER: ")
    q1 = ids(tok, "\nWhat color is the bus? ASSISTANT:")
    a1 = ids(tok, " Yellow.")
    q2 = ids(tok, "USER: How many people? ASSISTANT:")
    a2 = ids(tok, " There are three people.")
    bos, eos = tok.bos_token_id, tok.eos_token_id
    check(sample,
          [bos] + head + [IMG] + q1 + a1 + [eos] + q2 + a2 + [eos],
          [IGN] * (2 + len(head) + len(q1)) + a1 + [eos] + [IGN] * len(q2) + a2 + [eos])
    assert render(tok, sample.input_ids) == (
        f"<s>{SYSTEM} USER: <image>\nWhat color is the bus? ASSISTANT: Yellow.</s>"
        "USER: How many people? ASSISTANT: There are three people.</s>")
    assert render(tok, sample.labels) == " Yellow.</s> There are three people.</s>"


def test_v1_image_sample_strips_only_the_turns_that_held_the_placeholder(tok):
    # LLaVA's preprocess_multimodal strips a turn's whitespace only when it contains <image>
    conv = turns(" <image>\nWhat color is the bus? ", " Yellow.", "  How many people? ", "Three. ")
    sample = tokenize_conversation(conv, template="v1", tokenizer=tok, has_image=True)
    assert render(tok, sample.input_ids) == (
        f"<s>{SYSTEM} USER: <image>\nWhat color is the bus? ASSISTANT:  Yellow.</s>"
        "USER:   How many people?  ASSISTANT: Three. </s>")
    assert render(tok, sample.labels) == "  Yellow.</s> Three. </s>"


def test_v1_text_only_multi_turn_has_no_image_slot(tok):
    conv = turns("Who wrote this book?", "An author.", "Why?", "It says so on the cover.")
    sample = tokenize_conversation(conv, template="v1", tokenizer=tok, has_image=False)
    q1, a1 = ids(tok, SYSTEM + " USER: Who wrote this book? ASSISTANT:"), ids(tok, " An author.")
    q2, a2 = ids(tok, "USER: Why? ASSISTANT:"), ids(tok, " It says so on the cover.")
    bos, eos = tok.bos_token_id, tok.eos_token_id
    check(sample,
          [bos] + q1 + a1 + [eos] + q2 + a2 + [eos],
          [IGN] * (1 + len(q1)) + a1 + [eos] + [IGN] * len(q2) + a2 + [eos])
    assert IMG not in sample.input_ids
    assert render(tok, sample.input_ids) == (
        f"<s>{SYSTEM} USER: Who wrote this book? ASSISTANT: An author.</s>USER: Why? ASSISTANT: "
        "It says so on the cover.</s>")


def test_v1_image_sample_without_placeholder_gets_one_at_the_front(tok):
    sample = tokenize_conversation(turns("What is this?", "A cat."), template="v1", tokenizer=tok, has_image=True)
    assert sample.input_ids.count(IMG) == 1
    assert render(tok, sample.input_ids).startswith(f"<s>{SYSTEM} USER: <image>\nWhat is this? ASSISTANT:")


def test_special_token_text_in_data_stays_text_and_is_not_an_eos(tok):
    sample = tokenize_conversation(turns("Say </s>", "Fine </s> done"), template="v1", tokenizer=tok,
                                   has_image=False)
    assert sample.input_ids.count(tok.eos_token_id) == 1  # only the template's own eos
    assert sample.input_ids.count(tok.bos_token_id) == 1
    assert render(tok, sample.labels) == " Fine </s> done</s>"


def test_leading_gpt_turn_is_dropped_like_llava(tok):
    conv = [{"from": "gpt", "value": "Hello."}, *turns("Hi?", "Hi.")]
    expected = tokenize_conversation(turns("Hi?", "Hi."), template="v1", tokenizer=tok, has_image=False)
    assert tokenize_conversation(conv, template="v1", tokenizer=tok, has_image=False) == expected


@pytest.mark.parametrize("template, has_image", [("v1", False), ("v1", True), ("plain", True)])
def test_a_trailing_human_turn_is_dropped_and_reported(tok, template, has_image):
    """A conversation ending on a human turn trains on the exchanges before it (it used to stop the run)."""
    answered = turns("<image>\nWhat?" if has_image else "What?", "A cat.")
    conv = [*answered, {"from": "human", "value": "And the dog?"}]
    expected = tokenize_conversation(answered, template=template, tokenizer=tok, has_image=has_image)
    assert tokenize_conversation(conv, template=template, tokenizer=tok, has_image=has_image) == expected
    assert ends_on_human_turn(conv) and not ends_on_human_turn(answered)


@pytest.mark.parametrize(("conv", "has_image", "message"), [
    (turns("<image>\nWhat?", "A cat."), False, "text-only"),
    (turns("What?", "A <image> cat."), True, "assistant turn"),
    ([*turns("What?"), *turns("And?", "A cat.")], False, "alternate"),
    (turns("What?"), False, "at least one gpt turn"),
    ([{"from": "system", "value": "x"}, *turns("What?", "A cat.")], False, "turn 0"),
])
def test_malformed_conversations_fail_with_a_clear_error(tok, conv, has_image, message):
    with pytest.raises(ValueError, match=message):
        tokenize_conversation(conv, template="v1", tokenizer=tok, has_image=has_image)


def test_unknown_template_lists_valid_ones(tok):
    with pytest.raises(ValueError, match=r"\['plain', 'v1'\]"):
        tokenize_conversation(turns("a", "b"), template="llama_2", tokenizer=tok, has_image=False)


def test_first_human_text_strips_the_placeholder():
    assert first_human_text(turns("  What is this?\n<image> ", "A cat.")) == "What is this?"


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.name != MANIFEST_NAME}


def test_tiny_llm_build_is_byte_identical_and_loads_with_auto_classes(llm_dir, tok, tmp_path):
    from transformers import AutoModelForCausalLM

    build_tiny_llm(tmp_path)
    assert _digest(tmp_path) == _digest(llm_dir)
    model = AutoModelForCausalLM.from_pretrained(llm_dir)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok)
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 0)
    encoded = tok("USER: What is in the image?")["input_ids"]
    assert encoded[0] == tok.bos_token_id and tok.unk_token_id not in encoded
    with torch.no_grad():
        logits = model(torch.tensor([encoded])).logits  # (1, L, V)
    assert logits.shape == (1, len(encoded), len(tok)) and torch.isfinite(logits).all()
