"""The vision modes: one table from `vision.mode` to what that mode reads and how it fuses.

Every question about a mode is answered here — config validation (`train.config.VisionConfig`), the
arrays a batch needs (`train.conditioning.required_arrays`), the token count the LLM sees and whether
SD guidance applies (`train.cli.prepare`), the adapter (`train.fusion.build_adapter`) — so a new mode is
one entry (plus, for a new way of fusing, one builder in `train.fusion.FUSIONS`).

This module is pure (no torch): `train.config` validates modes at parse time, and `train.fusion` (which
imports `train.config`) holds the torch builders, so an entry names its builder (`fusion`) instead of
holding it — the one way to keep both without an import cycle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

__all__ = ["ROLES", "VisionMode", "VISION_MODES"]

ROLES = ("sd", "clip")  # array roles; `VisionConfig.<role>_array` names the store array of each


@dataclass(frozen=True)
class VisionMode:
    """`reads`: array roles in the order the fusion takes them; the first one's token count is what the
    adapter outputs (concat needs equal counts, xattn takes its queries from it). `fusion`: the
    `train.fusion.FUSIONS` builder. `equal_tokens`: every array read must have the same token count."""

    reads: tuple[str, ...]
    fusion: str
    equal_tokens: bool = False

    def __post_init__(self) -> None:
        if not self.reads or not set(self.reads) <= set(ROLES):
            raise ValueError(f"vision mode reads {self.reads}; roles are {ROLES}")

    @property
    def tokens(self) -> str:
        """The role whose token count the LLM sees."""
        return self.reads[0]

    @property
    def guided(self) -> bool:
        """SD guidance (X_u + s·(X_c − X_u)) applies: the mode reads an SD array."""
        return "sd" in self.reads


VISION_MODES: Mapping[str, VisionMode] = {
    "sd": VisionMode(reads=("sd",), fusion="single"),
    "clip": VisionMode(reads=("clip",), fusion="single"),
    "sd+clip-concat": VisionMode(reads=("sd", "clip"), fusion="concat", equal_tokens=True),
    "sd+clip-xattn": VisionMode(reads=("clip", "sd"), fusion="xattn"),  # CLIP queries attend to SD tokens
}
