"""Errors of an extraction run (a module of its own: the driver and the Ray job both raise them)."""
from __future__ import annotations

__all__ = ["ExtractionError"]


class ExtractionError(RuntimeError):
    """A worker failed in a way that stops the run (e.g. the model cannot be loaded in an actor)."""
