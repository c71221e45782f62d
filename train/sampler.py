"""Deterministic, rank-sharded, resumable samplers.

Both samplers first build one global order for the epoch (from `seed` and `epoch` only, so every
rank computes the same one), padded to a multiple of `world_size`, cut into micro-batches of
`micro_batch` consecutive positions, and rank `r` takes micro-batches `r, r + world_size, ...` (whole
rounds of `world_size` only). So the micro-batches of one optimizer step on `w` ranks with accumulation
`a` are those one rank reads with accumulation `a·w`: the same samples in the same micro-batches, and
(up to float summation order) the same losses. With `micro_batch=1` rank `r` takes positions `r, r +
world_size, ...`. A sampler yields the indices of its rank only; `state_dict(consumed=)`
records how far into this order the trainer got, and after `load_state_dict` iteration continues
exactly there (mid-epoch resume).

`ModalityLengthGroupedSampler` follows LLaVA's `get_modality_length_grouped_indices`: image samples
(length > 0) and text-only samples (length < 0) are shuffled separately, cut into megabatches of the
global batch size, each sorted longest first, and the full megabatches of both modalities shuffled
together. Unlike LLaVA, the two incomplete megabatches are not merged into one mixed batch: they come
last, image then text, each on its own, so every megabatch holds one modality. With a megabatch being
one optimizer step's samples, and rank `r` taking every `world_size`-th of a length-sorted
megabatch, all ranks see similar lengths and each micro-batch groups similar lengths. Padding: a
megabatch whose size is not a multiple of `world_size` repeats its first samples (as torch's
`DistributedSampler` does), so every rank takes the same number of samples.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from stages.config import ConfigError
from train.config import TrainConfig

if TYPE_CHECKING:
    from train.data import LlavaDataset

__all__ = ["ModalityLengthGroupedSampler", "SeededRandomSampler", "make_sampler"]


def _pad_to_multiple(order: np.ndarray, multiple: int) -> np.ndarray:
    pad = -len(order) % multiple
    return np.concatenate([order, np.resize(order, pad)]) if pad else order


def _order_identity(state: dict[str, Any]) -> dict[str, Any]:
    """The settings that fix a rank's order: seed, dataset size, world size and, on several ranks, the
    micro-batch (states written before it was recorded sharded single samples: micro-batch 1)."""
    world = state.get("world_size")
    return {"seed": state.get("seed"), "num_samples": state.get("num_samples"), "world_size": world,
            "micro_batch": state.get("micro_batch", 1) if world != 1 else 1}


class _ShardedSampler(Sampler[int]):
    """Shared sharding, epoch and resume logic; subclasses build the global order."""

    def __init__(self, num_samples: int, *, seed: int, epoch: int = 0, world_size: int = 1, rank: int = 0,
                 micro_batch: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        self.num_samples, self.seed, self.world_size, self.rank = num_samples, seed, world_size, rank
        self.micro_batch = micro_batch
        self.epoch, self.start = epoch, 0
        self._order: list[int] = []
        self._order_epoch: int | None = None  # the epoch `_order` belongs to

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def _global_order(self) -> np.ndarray:
        raise NotImplementedError

    def rank_order(self) -> list[int]:
        """This rank's whole order for the current epoch (ignoring `start`); computed once per epoch."""
        if self._order_epoch != self.epoch:
            order, size = self._global_order(), self.micro_batch
            rounds = len(order) // (size * self.world_size)  # micro-batches per rank
            chunks = order[:rounds * size * self.world_size].reshape(rounds, self.world_size, size)
            self._order = chunks[:, self.rank].reshape(-1).tolist()
            self._order_epoch = self.epoch
        return self._order

    def set_epoch(self, epoch: int) -> None:
        """Move to another epoch from its start; setting the current epoch keeps a resumed position."""
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_order()[self.start:])

    def __len__(self) -> int:
        return len(self.rank_order()) - self.start

    def state_dict(self, *, consumed: int) -> dict[str, int]:
        """Position after `consumed` samples of this rank's order for this epoch (counted from the
        epoch start, including those before a resume). The trainer passes it: DataLoader workers
        prefetch, so the sampler cannot know what was trained on."""
        if not 0 <= consumed <= len(self.rank_order()):
            raise ValueError(f"consumed={consumed} is outside this rank's epoch of {len(self.rank_order())}")
        return {"seed": self.seed, "epoch": self.epoch, "start": consumed, "num_samples": self.num_samples,
                "world_size": self.world_size, "micro_batch": self.micro_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine, theirs = _order_identity(self.state_dict(consumed=0)), _order_identity(state)
        if theirs != mine:
            differ = ", ".join(f"{k} {theirs[k]} (checkpoint) vs {mine[k]} (this run)" for k in mine
                               if theirs[k] != mine[k])
            raise ConfigError(f"sampler state does not match this run: {differ}; resuming with another seed, "
                              "dataset, world size or micro-batch would change the order. A checkpoint resumes on "
                              "the world size that wrote it (its ZeRO partitions and RNG states are per rank)")
        self.epoch, self.start = int(state["epoch"]), int(state["start"])


class SeededRandomSampler(_ShardedSampler):
    """A seeded random permutation per epoch (pretrain)."""

    def _global_order(self) -> np.ndarray:
        return _pad_to_multiple(self._rng().permutation(self.num_samples), self.world_size)


class ModalityLengthGroupedSampler(_ShardedSampler):
    """LLaVA's `group_by_modality_length`: single-modality, length-grouped megabatches (SFT).

    `lengths[i]` > 0 for an image sample, < 0 for a text-only one, magnitude a length estimate.
    `batch_size` is the global batch: per-device batch x world size x gradient accumulation.
    """

    def __init__(
        self, lengths: Sequence[int], *, batch_size: int, seed: int, epoch: int = 0, world_size: int = 1,
        rank: int = 0, micro_batch: int = 1,
    ) -> None:
        if any(length == 0 for length in lengths):
            raise ValueError("lengths must be non-zero: positive for image samples, negative for text-only")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of world_size ({world_size})")
        super().__init__(len(lengths), seed=seed, epoch=epoch, world_size=world_size, rank=rank,
                         micro_batch=micro_batch)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size

    def megabatches(self) -> list[np.ndarray]:
        """The epoch's megabatches in order, before padding (each one modality, longest first)."""
        rng = self._rng()
        full, partial = [], []
        for indices in (np.flatnonzero(self.lengths > 0), np.flatnonzero(self.lengths < 0)):
            shuffled = indices[rng.permutation(len(indices))]
            for begin in range(0, len(shuffled), self.batch_size):
                chunk = shuffled[begin:begin + self.batch_size]
                chunk = chunk[np.argsort(-np.abs(self.lengths[chunk]), kind="stable")]
                (full if len(chunk) == self.batch_size else partial).append(chunk)
        return [full[i] for i in rng.permutation(len(full))] + partial

    def _global_order(self) -> np.ndarray:
        parts = [_pad_to_multiple(chunk, self.world_size) for chunk in self.megabatches()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def make_sampler(config: TrainConfig, dataset: "LlavaDataset", *, world_size: int,
                 rank: int) -> ModalityLengthGroupedSampler | SeededRandomSampler:
    """Rank `rank`'s sampler of a world of `world_size`, sharding whole micro-batches."""
    if config.data.group_by_modality_length:
        batch = config.per_device_batch_size * config.gradient_accumulation_steps * world_size  # one optimizer step
        return ModalityLengthGroupedSampler(dataset.modality_lengths, batch_size=batch, seed=config.seed,
                                            world_size=world_size, rank=rank, micro_batch=config.per_device_batch_size)
    return SeededRandomSampler(len(dataset), seed=config.seed, world_size=world_size, rank=rank,
                               micro_batch=config.per_device_batch_size)
