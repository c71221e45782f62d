"""The store's locks: exclusive locks named by files under the store root (`Location.exclusive`: `flock`
on a POSIX file system, a lease object on an object store, `stages.store.leases`).

Metadata changes (planning keys, creating, resizing and removing arrays, rewriting index files) hold the
store lock (`.lock`); everything that writes one shard's files (its zarr shard files, records and tar)
holds that shard's lock (`locks/NNNNNN.lock`), so two jobs writing the same shard take turns while
different shards are written at once. Across nodes `flock` needs a file system that honours it
(docs/pipeline.md, "Shared cache directories").
"""
from __future__ import annotations

import contextlib

from stages.store.layout import StorePath, StorePaths
from stages.store.location import StoreLockError, location

__all__ = ["StoreLockError", "store_lock", "shard_lock"]


def _exclusive(path: StorePath) -> contextlib.AbstractContextManager[None]:
    return location(path).exclusive(path)


def store_lock(paths: StorePaths) -> contextlib.AbstractContextManager[None]:
    """The exclusive lock for metadata changes."""
    return _exclusive(paths.lock)


def shard_lock(paths: StorePaths, shard: int) -> contextlib.AbstractContextManager[None]:
    """The exclusive lock on one shard's files."""
    return _exclusive(paths.root / "locks" / f"{shard:06d}.lock")
