"""Sampler order: deterministic, sharded without loss, single-modality megabatches, exact resume."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from train.sampler import ModalityLengthGroupedSampler, SeededRandomSampler


def mixed_lengths(n_image: int = 37, n_text: int = 13, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    lengths = [int(x) for x in rng.integers(1, 500, n_image)] + [-int(x) for x in rng.integers(1, 500, n_text)]
    return [lengths[i] for i in rng.permutation(len(lengths))]  # modalities interleaved in the JSON


def grouped(lengths, **kwargs) -> ModalityLengthGroupedSampler:
    return ModalityLengthGroupedSampler(lengths, **{"batch_size": 8, "seed": 3, **kwargs})


def test_grouped_order_depends_only_on_seed_and_epoch():
    lengths = mixed_lengths()
    assert list(grouped(lengths)) == list(grouped(lengths))
    assert list(grouped(lengths)) != list(grouped(lengths, seed=4))
    assert list(grouped(lengths)) != list(grouped(lengths, epoch=1))
    moved = grouped(lengths)
    moved.set_epoch(1)
    assert list(moved) == list(grouped(lengths, epoch=1))


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_grouped_megabatches_are_single_modality_and_longest_first(world_size):
    lengths = np.asarray(mixed_lengths())
    sampler = grouped(lengths.tolist(), world_size=world_size)
    batches = sampler.megabatches()
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for batch in batches:
        signs = set(np.sign(lengths[batch]).tolist())
        assert len(signs) == 1
        assert np.all(np.diff(np.abs(lengths[batch])) <= 0)
    full = [b for b in batches if len(b) == 8]
    assert len(full) == 37 // 8 + 13 // 8 and all(len(b) < 8 for b in batches[len(full):])


@pytest.mark.parametrize("world_size", [2, 4])
def test_each_rank_step_share_is_single_modality(world_size):
    lengths = np.asarray(mixed_lengths())
    per_rank_step = 8 // world_size  # per-device batch x accumulation
    for rank in range(world_size):
        order = grouped(lengths.tolist(), world_size=world_size, rank=rank).rank_order()
        full_steps = (37 // 8 + 13 // 8) * per_rank_step
        for begin in range(0, full_steps, per_rank_step):
            assert len(set(np.sign(lengths[order[begin:begin + per_rank_step]]).tolist())) == 1


@pytest.mark.parametrize("make", [
    lambda n, **kw: grouped(mixed_lengths(n - n // 3, n // 3), **kw),
    lambda n, **kw: SeededRandomSampler(n, seed=3, **kw),
], ids=["grouped", "random"])
@pytest.mark.parametrize(("n", "world_size"), [(50, 1), (50, 2), (50, 4), (49, 4), (7, 4)])
def test_ranks_together_cover_every_sample_once_up_to_padding(make, n, world_size):
    orders = [list(make(n, world_size=world_size, rank=r)) for r in range(world_size)]
    assert len({len(o) for o in orders}) == 1, "every rank must take the same number of steps"
    counts = Counter(i for order in orders for i in order)
    assert set(counts) == set(range(n))
    padding = sum(len(order) for order in orders) - n
    assert sum(c - 1 for c in counts.values()) == padding
    assert padding < 2 * world_size  # at most two partial megabatches (one for the random sampler)


@pytest.mark.parametrize("make", [
    lambda **kw: grouped(mixed_lengths(), **kw),
    lambda **kw: SeededRandomSampler(50, seed=3, **kw),
], ids=["grouped", "random"])
@pytest.mark.parametrize("consumed", [0, 5, 12, 25])
def test_resume_yields_exactly_the_remaining_order(make, consumed):
    first = make(world_size=2, rank=1, epoch=2)
    full = list(first)
    state = first.state_dict(consumed=consumed)
    resumed = make(world_size=2, rank=1)  # a fresh process starts at epoch 0
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the trainer's epoch loop sets the same epoch again: the position stays
    assert len(resumed) == len(full) - consumed
    assert list(resumed) == full[consumed:]
    resumed.set_epoch(3)
    assert list(resumed) == list(make(world_size=2, rank=1, epoch=3))


def test_resume_with_another_seed_or_world_size_is_refused():
    state = grouped(mixed_lengths()).state_dict(consumed=3)
    for other in (grouped(mixed_lengths(), seed=9), grouped(mixed_lengths(), world_size=2)):
        with pytest.raises(ValueError, match="does not match"):
            other.load_state_dict(state)
    with pytest.raises(ValueError, match="outside"):
        grouped(mixed_lengths()).state_dict(consumed=51)


def test_single_modality_data_still_groups_by_length():
    lengths = mixed_lengths(40, 0)
    batches = grouped(lengths).megabatches()
    assert [len(b) for b in batches] == [8] * 5
    assert all(np.all(np.diff(np.abs(np.asarray(lengths)[b])) <= 0) for b in batches)


def test_zero_lengths_and_bad_batch_sizes_are_rejected():
    with pytest.raises(ValueError, match="non-zero"):
        grouped([3, 0, -2])
    with pytest.raises(ValueError, match="multiple of world_size"):
        grouped([3, 1, -2], batch_size=6, world_size=4)
