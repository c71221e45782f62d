"""The analysis commands: name -> module with `HELP`, `configure(parser)` and `run(args) -> RunDir`."""
from __future__ import annotations

from types import ModuleType

from analysis.commands import attention, cka, inspect, itm, pairs, pca

__all__ = ["COMMANDS"]

COMMANDS: dict[str, ModuleType] = {"itm": itm, "pca": pca, "pairs": pairs, "attention": attention, "cka": cka,
                                   "inspect": inspect}
