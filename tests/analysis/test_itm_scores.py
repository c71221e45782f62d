"""The ITM score's arithmetic on constructed score tensors, and the token sets it sums over."""
import math

import numpy as np
import pytest
import torch

from analysis.itm import itm_score, lse_score
from analysis.text import token_ids, token_mask, words

L4 = math.log(4)


def constructed():
    """(B=2, heads=2, HW=3, L=4): sample 0 all zeros; sample 1 head 0 rows [0,1,2,3], head 1 all 3."""
    scores = torch.zeros(2, 2, 3, 4)
    scores[1, 0] = torch.arange(4.0)
    scores[1, 1] = 3.0
    return scores


def test_lse_score_is_the_mean_over_heads_and_pixels_of_the_logsumexp_over_tokens():
    everything = torch.ones(2, 4, dtype=torch.bool)
    got = lse_score(constructed(), everything)
    lse_ramp = math.log(1 + math.e + math.e**2 + math.e**3)
    assert got.tolist() == pytest.approx([L4, (lse_ramp + 3 + L4) / 2], rel=1e-6)
    content = torch.tensor([[False, True, True, False]] * 2)  # tokens 1 and 2 only
    got = lse_score(constructed(), content)
    assert got.tolist() == pytest.approx([math.log(2), (math.log(math.e + math.e**2) + 3 + math.log(2)) / 2], rel=1e-6)


def test_itm_score_averages_layers_within_a_pass_then_passes():
    mask = torch.ones(1, 4, dtype=torch.bool)
    a = torch.full((1, 1, 2, 4), 1.0)  # layer A: lse = 1 + log 4
    b = torch.full((1, 3, 5, 4), -2.0)  # layer B (other heads and pixels): lse = -2 + log 4
    passes = [{"A": a, "B": b}, {"A": a + 2.0, "B": b + 4.0}]  # second pass: +2 and +4 -> mean +3
    expected = ((1 + L4 + -2 + L4) / 2 + (3 + L4 + 2 + L4) / 2) / 2
    assert itm_score(passes, mask).item() == pytest.approx(expected, rel=1e-6)


def test_content_tokens_lie_between_the_start_token_and_the_first_end_token(tiny_sd):
    tok = tiny_sd.tokenizer
    ids = token_ids(tok, ["a cat", "a spacesuit, hello!"])
    assert ids.shape == (2, 77)
    mask = token_mask(ids, eos_token_id=tok.eos_token_id, tokens="content")
    n_content = [len(tok(t).input_ids) - 2 for t in ["a cat", "a spacesuit, hello!"]]
    assert mask.sum(1).tolist() == n_content
    assert not mask[:, 0].any() and mask[0, 1:3].all() and not mask[0, 3:].any()
    assert token_mask(ids, eos_token_id=tok.eos_token_id, tokens="all").all()
    with pytest.raises(ValueError, match="no content tokens"):
        token_mask(token_ids(tok, [""]), eos_token_id=tok.eos_token_id, tokens="content")


def test_bpe_tokens_merge_back_into_words(tiny_sd):
    tok = tiny_sd.tokenizer
    merged = words(tok, token_ids(tok, ["A smiling astronaut in an orange spacesuit, hello!"])[0])
    assert [w.text for w in merged] == ["a", "smiling", "astronaut", "in", "an", "orange", "spacesuit", ",", "hello",
                                        "!"]
    assert merged[0].positions == (1,)
    assert len(merged[6].positions) > 1  # "spacesuit" is several BPE tokens
    assert [p for w in merged for p in w.positions] == list(range(1, 1 + sum(len(w.positions) for w in merged)))


def test_diffusion_scores_depend_on_the_pair_not_on_batching_and_noise_follows_the_image_key(tiny_sd):
    from analysis.itm import DiffusionITM, ITMOptions

    z0 = {k: torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(i)) for i, k in enumerate(["a", "b"])}
    z0["a-copy"] = z0["a"]

    def latents(keys):
        return torch.stack([z0[k] for k in keys])

    pairs = [("a", "a red cup"), ("b", "a grey horse"), ("a", "a grey horse"), ("a-copy", "a red cup")]
    one = DiffusionITM(tiny_sd, ITMOptions(timesteps=(189, 789), trials=2, batch_size=3), latents)
    forward = one.score([k for k, _ in pairs], [t for _, t in pairs])
    other = DiffusionITM(tiny_sd, ITMOptions(timesteps=(189, 789), trials=2, batch_size=1), latents)
    backward = other.score([k for k, _ in pairs[::-1]], [t for _, t in pairs[::-1]])[::-1]
    np.testing.assert_allclose(forward, backward, rtol=1e-5)
    assert forward[0] != forward[2]  # the text matters
    assert abs(forward[0] - forward[3]) > 1e-6  # same latents, another key: other noise
