"""Greedy generation against an argmax loop without KV cache, and inference prompts against training ids.

The reference loop below builds each prompt's embeddings by hand (text embeddings with the adapter's
image tokens in the placeholder's place), runs the whole sequence through the LLM at every step, one
prompt at a time, without attention mask or position ids — no splice, no padding, no cache. The tiny
LLM has random weights and picks varied tokens; an eos of -1 is never produced (full `max_new_tokens`),
and an eos taken from a reference row's output checks stopping: each row's tokens before its first eos.
"""
from __future__ import annotations

import functools
import itertools

import pytest
import torch

from llava_eval.generate import generate
from train.config import VisionConfig
from train.conversation import (
    IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX, tokenize_conversation, tokenize_prompt,
)
from train.fusion import AdapterConfig
from train.model import LlavaModel, load_llm, load_tokenizer
from train.vision_modes import VISION_MODES

SD, CLIP = "U-L1-R1-B0-Cross-Q@t50", "CLIP-L-2"
NEW_TOKENS = 10
NEVER = -1  # an eos id the LLM cannot produce
SHARPEN = 8.0
QUESTIONS = [  # (question, has_image): different lengths, two text-only
    ("What is in the image?", True),
    ("How many people are in the picture? Answer the question using a single word or phrase.", False),
    ("Describe the image concisely.", True),
    ("Is it raining?", False),
    ("What color is the bus? Answer with the option's letter from the given choices directly.", True),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices gain nothing from intra-op threads; on a busy 2-core machine they made this module
    about 9x slower (151 s against 17 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("embedded:tiny-llm")


@pytest.fixture(scope="module")
def llm():
    """The tiny LLM with query and key weights scaled by SHARPEN: at their init scale attention is nearly
    uniform and the logits barely depend on positions or masks, so wrong ones would go unnoticed."""
    model = load_llm("embedded:tiny-llm").eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(SHARPEN)
            layer.self_attn.k_proj.weight.mul_(SHARPEN)
    return model


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    return [tokenize_prompt(q, template="v1", tokenizer=tokenizer, has_image=img) for q, img in QUESTIONS]


def _model_and_features(llm, mode: str) -> tuple[LlavaModel, dict[str, torch.Tensor]]:
    """Seeded random adapter for `mode` and random features for the three images of QUESTIONS (SD and CLIP
    with different token and channel counts unless the mode fuses token by token)."""
    shapes = {SD: (4 if VISION_MODES[mode].equal_tokens else 6, 12), CLIP: (4, 10)}
    vision = VisionConfig(mode=mode, sd_array=SD, clip_array=CLIP, xattn_heads=2)
    torch.manual_seed(0)
    config = AdapterConfig(vision=vision, feature_dims={a: c for a, (_, c) in shapes.items()},
                           hidden_size=llm.config.hidden_size)
    adapter = config.build()
    features = {a: torch.randn(sum(img for _, img in QUESTIONS), *shape) for a, shape in shapes.items()}
    return LlavaModel(llm=llm, adapter=adapter, adapter_config=config, max_length=16), features


@torch.no_grad()
def _uncached_argmax(model: LlavaModel, prompt: list[int], image: dict[str, torch.Tensor] | None) -> list[int]:
    """`NEW_TOKENS` greedy tokens (no eos stop)."""
    embed = model.llm.get_input_embeddings()
    parts = [model.adapter(image)[0] if i == IMAGE_TOKEN_INDEX else embed(torch.tensor([i])) for i in prompt]
    sequence = torch.cat(parts)[None]  # (1, L, H)
    tokens: list[int] = []
    while len(tokens) < NEW_TOKENS:
        token = int(model.llm(inputs_embeds=sequence, use_cache=False).logits[0, -1].argmax())
        tokens.append(token)
        sequence = torch.cat([sequence, embed(torch.tensor([[token]]))], dim=1)
    return tokens


def _images(features: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor] | None]:
    """Each prompt's own feature rows (None for text-only prompts)."""
    out, row = [], 0
    for _, has_image in QUESTIONS:
        out.append({a: x[row:row + 1] for a, x in features.items()} if has_image else None)
        row += has_image
    return out


def _generate(model, prompts, features, *, eos: int = NEVER, new_tokens: int = NEW_TOKENS) -> list[list[int]]:
    return generate(model, prompts, features, max_new_tokens=new_tokens, eos_token_id=eos, pad_token_id=0)


@pytest.fixture(scope="module")
def case(llm, prompts):
    """`case(mode)` -> (model, features, each prompt's reference tokens), built once per mode."""
    @functools.cache
    def build(mode: str):
        model, features = _model_and_features(llm, mode)
        return model, features, [_uncached_argmax(model, p, image) for p, image in zip(prompts, _images(features))]
    return build


@pytest.mark.parametrize("mode", sorted(VISION_MODES))
def test_generate_equals_uncached_argmax_loop_one_prompt_at_a_time(case, prompts, mode):
    model, features, full = case(mode)
    for prompt, image, expected in zip(prompts, _images(features), full):
        assert len(expected) == NEW_TOKENS and len(set(expected)) > 3  # varied tokens, not a constant
        assert _generate(model, [prompt], image or {}) == [expected]


@pytest.mark.parametrize("mode", sorted(VISION_MODES))
def test_batched_left_padded_generation_equals_one_by_one(case, prompts, mode):
    model, features, full = case(mode)
    assert len({len(p) for p in prompts}) == len(prompts)  # every row padded differently
    assert _generate(model, prompts, features) == full
    # an eos that stops row 0 early while another row never produces it (runs on, the stopped row padded)
    stop, eos = next((k, t) for k, t in enumerate(full[0]) if k > 0 and t not in full[0][:k]
                     and any(t not in row for row in full[1:]))
    expected = [row[:row.index(eos)] if eos in row else row for row in full]  # each stops before its eos
    assert len(expected[0]) == stop and any(len(row) == NEW_TOKENS for row in expected)
    assert _generate(model, prompts, features, eos=eos) == expected


def test_generate_zero_new_tokens_and_rejects_an_empty_prompt(case, prompts):
    model, features, _ = case("sd")
    assert _generate(model, prompts, features, new_tokens=0) == [[]] * len(prompts)
    with pytest.raises(ValueError, match="empty prompt"):
        _generate(model, [[]], {})


ANSWERS = ["Yes", "A. red", " two dogs\nand a ball.", "The sign says \"Stop\" </s> USER: more?"]


@pytest.mark.parametrize("template,has_image", [("v1", True), ("v1", False), ("plain", True)])
def test_inference_prompt_is_the_training_prefix_up_to_the_first_supervised_label(tokenizer, template,
                                                                                  has_image):
    question = "What is the man holding?\nA. umbrella\nB. phone"
    prompt = tokenize_prompt(question, template=template, tokenizer=tokenizer, has_image=has_image)
    human = f"{IMAGE_PLACEHOLDER}\n{question}" if has_image else question
    for answer in ANSWERS:
        sample = tokenize_conversation([{"from": "human", "value": human}, {"from": "gpt", "value": answer}],
                                       template=template, tokenizer=tokenizer, has_image=has_image)
        assert sample.input_ids[:len(prompt)] == prompt
        assert set(sample.labels[:len(prompt)]) == {IGNORE_INDEX}
        assert sample.labels[len(prompt)] != IGNORE_INDEX
    assert prompt[0] == tokenizer.bos_token_id and prompt.count(tokenizer.bos_token_id) == 1
    assert prompt.count(IMAGE_TOKEN_INDEX) == has_image
    if template == "plain":
        assert prompt == [tokenizer.bos_token_id, IMAGE_TOKEN_INDEX]
    else:
        text = "".join(IMAGE_PLACEHOLDER if is_image else tokenizer.decode(list(run), skip_special_tokens=True)
                       for is_image, run in itertools.groupby(prompt, key=lambda i: i == IMAGE_TOKEN_INDEX))
        assert text.endswith(f"USER: {human} ASSISTANT:")
