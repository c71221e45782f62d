"""`StoreDamaged`, at the bottom of the store package so that every module may raise it."""
from __future__ import annotations

from stages.errors import UserError

__all__ = ["StoreDamaged"]


class StoreDamaged(UserError):
    """A store whose metadata is damaged: it cannot be opened, planned into, or an array of it read until
    it is repaired. The message names the file and field, and the fix."""
