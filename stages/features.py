"""The feature-name grammar of DESIGN §2: `<Stage>-L<level>-R<repeat>[-B<block>]-<Kind>`.

A `FeatureName` parses, validates against a concrete `UNet2DConditionModel` (real or tiny), prints
back to its canonical string, and resolves to the module whose output is the feature. An *array id*
adds the timestep and, for conditioned features, the prompt source: `U-L1-R1-B0-Cross-Q@t50:caption`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Iterator

from torch import nn

from stages.errors import UserError

__all__ = ["FeatureName", "FeatureNameError", "ArrayId", "LATENTS", "valid_feature_names", "conditioned_id"]

LATENTS = "latents"  # the array id of the VAE latents an SD store keeps beside its features

_STAGES = {"D": "down_blocks", "U": "up_blocks", "M": "mid_block"}
# kind -> (needs a transformer block index, path below the block/attention, tensor layout)
_KINDS = {
    "Cross-Q": (True, "attn2.to_q", "tokens"),
    "Self-Q": (True, "attn1.to_q", "tokens"),
    "Out": (True, "", "tokens"),
    "Vit-Out": (False, "", "map"),
    "Res-Out": (False, "", "map"),
}
_PATTERN = re.compile(
    r"^(?P<stage>[DUM])(?:-L(?P<level>\d+))?-R(?P<repeat>\d+)(?:-B(?P<block>\d+))?-(?P<kind>[A-Za-z-]+)$"
)
_ARRAY_ID = re.compile(r"^(?P<name>[^@]+)@t(?P<t>\d+)(?::(?P<source>[A-Za-z0-9_-]+))?$")


class FeatureNameError(UserError, ValueError):
    """An unknown, malformed or out-of-range feature name."""


@dataclass(frozen=True, order=True)
class FeatureName:
    stage: str  # "D", "U" or "M"
    level: int | None  # None for the mid block
    repeat: int
    block: int | None  # transformer block inside the attention; None for Res-Out / Vit-Out
    kind: str

    @classmethod
    def parse(cls, text: str) -> "FeatureName":
        match = _PATTERN.match(text.strip())
        if not match or match["kind"] not in _KINDS:
            raise FeatureNameError(
                f"{text!r} is not a feature name: expected <D|U>-L<level>-R<repeat>[-B<block>]-<Kind> or "
                f"M-R<repeat>[-B<block>]-<Kind> with Kind in {sorted(_KINDS)} (e.g. U-L1-R1-B0-Cross-Q)"
            )
        stage, kind = match["stage"], match["kind"]
        level = None if match["level"] is None else int(match["level"])
        block = None if match["block"] is None else int(match["block"])
        if (stage == "M") != (level is None):
            raise FeatureNameError(f"{text!r}: D/U names need -L<level>, M names take none")
        if _KINDS[kind][0] != (block is not None):
            need = "needs" if _KINDS[kind][0] else "takes no"
            raise FeatureNameError(f"{text!r}: kind {kind} {need} a -B<block> part")
        return cls(stage, level, int(match["repeat"]), block, kind)

    def __str__(self) -> str:
        level = "" if self.level is None else f"-L{self.level}"
        block = "" if self.block is None else f"-B{self.block}"
        return f"{self.stage}{level}-R{self.repeat}{block}-{self.kind}"

    @property
    def layout(self) -> str:
        """'tokens' for `[B, HW, C]` outputs, 'map' for `[B, C, H, W]` outputs."""
        return _KINDS[self.kind][2]

    @property
    def module_path(self) -> str:
        """Dotted path inside the U-Net, e.g. `up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_q`."""
        parent = _STAGES[self.stage] if self.level is None else f"{_STAGES[self.stage]}.{self.level}"
        if self.kind == "Res-Out":
            return f"{parent}.resnets.{self.repeat}"
        path = f"{parent}.attentions.{self.repeat}"
        if self.block is not None:
            path += f".transformer_blocks.{self.block}"
        suffix = _KINDS[self.kind][1]
        return f"{path}.{suffix}" if suffix else path

    def resolve(self, unet: nn.Module) -> nn.Module:
        """The module whose forward output is this feature; a helpful error if `unet` has none."""
        try:
            return unet.get_submodule(self.module_path)
        except AttributeError:
            valid = ", ".join(valid_feature_names(unet))
            raise FeatureNameError(
                f"{self} does not exist in this U-Net (no module {self.module_path}); valid names: {valid}"
            ) from None


def _candidates(unet: nn.Module) -> Iterator[FeatureName]:
    stages = [("D", i, b) for i, b in enumerate(unet.down_blocks)]
    stages += [("M", None, unet.mid_block)] if getattr(unet, "mid_block", None) is not None else []
    stages += [("U", i, b) for i, b in enumerate(unet.up_blocks)]
    for stage, level, block in stages:
        for r, _ in enumerate(getattr(block, "resnets", [])):
            yield FeatureName(stage, level, r, None, "Res-Out")
        for r, attention in enumerate(getattr(block, "attentions", None) or []):
            yield FeatureName(stage, level, r, None, "Vit-Out")
            for b, _ in enumerate(getattr(attention, "transformer_blocks", [])):
                for kind in ("Self-Q", "Cross-Q", "Out"):
                    yield FeatureName(stage, level, r, b, kind)


def valid_feature_names(unet: nn.Module) -> list[str]:
    """Every name this U-Net can produce, in block order."""
    return [str(name) for name in _candidates(unet)]


@dataclass(frozen=True)
class ArrayId:
    """Identity of one array in a store: feature @ timestep [: prompt source]."""

    feature: FeatureName
    timestep: int
    source: str | None = None  # None = unconditional (empty prompt)

    @classmethod
    def parse(cls, text: str) -> "ArrayId":
        match = _ARRAY_ID.match(text)
        if not match:
            raise FeatureNameError(f"{text!r} is not an array id like U-L1-R1-B0-Cross-Q@t50[:caption]")
        return cls(FeatureName.parse(match["name"]), int(match["t"]), match["source"])

    def __str__(self) -> str:
        source = "" if self.source is None else f":{self.source}"
        return f"{self.feature}@t{self.timestep}{source}"


def conditioned_id(array_id: str, source: str) -> str:
    """`NAME@tT:SOURCE`: the id of `array_id`'s feature and timestep conditioned on prompt source `source`."""
    return str(replace(ArrayId.parse(array_id), source=source))
