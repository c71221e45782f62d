"""The store's locks: `flock` locks on files under the store root.

Metadata changes (planning keys, creating, resizing and removing arrays, rewriting index files) hold the
store lock (`.lock`); everything that writes one shard's files (its zarr shard files, records and tar)
holds that shard's lock (`locks/NNNNNN.lock`), so two jobs writing the same shard take turns while
different shards are written at once. Across nodes `flock` needs a file system that honours it
(docs/pipeline.md, "Shared cache directories").
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

from stages.errors import UserError
from stages.store.layout import StorePaths
from stages.store.meta import StoreDamaged

__all__ = ["StoreLockError", "store_lock", "shard_lock"]


class StoreLockError(UserError, OSError):
    """The store's file system refuses `flock` (Lustre mounted without `-o flock`, NFS with `nolock`)."""


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An exclusive `flock` on `path` (created if absent, never through a link) for the block."""
    path.parent.mkdir(exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise StoreDamaged(f"{path} is a symbolic link; a store holds no links (writes through one land outside "
                           "the cache root): remove it") from None
    with os.fdopen(fd, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            raise StoreLockError(f"cannot lock {path} ({exc.strerror}): the cache root's file system does not "
                                 "support flock; on Lustre mount it with -o flock, on NFS without nolock or "
                                 "local_lock (docs/pipeline.md, \"Shared cache directories\")") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def store_lock(paths: StorePaths) -> contextlib.AbstractContextManager[None]:
    """The exclusive lock for metadata changes."""
    return _exclusive(paths.lock)


def shard_lock(paths: StorePaths, shard: int) -> contextlib.AbstractContextManager[None]:
    """The exclusive lock on one shard's files."""
    return _exclusive(paths.root / "locks" / f"{shard:06d}.lock")
