"""How a store's files are written and locked where the store lives: one interface, two implementations.

The store code names its files with paths (`stages.store.layout.StorePaths`) and reads them with the
`pathlib` API, which `Path` and `ObjectPath` share. Everything that differs between a POSIX file system and
an object store is a method of `Location`, and `location(path)` is the one place that picks it:

| operation                 | POSIX (`Path`)                                  | object store (`ObjectPath`)               |
|---------------------------|-------------------------------------------------|-------------------------------------------|
| `put_atomic(path, data)`  | temp file + fsync + rename + fsync(dir)         | one PUT (objects are atomic per PUT)      |
| `put_new(path, data)`     | `O_EXCL` temp + `link` (fails if present)       | PUT `If-None-Match: *` (`mode="create"`)  |
| `publish(staged, path)`   | rename a staged temp file into place            | PUT of the staged file, then delete it    |
| `exclusive(path)`         | `flock` on the file                             | a lease object (`stages.store.leases`)    |
| `remove` / `remove_tree`  | unlink / rmtree, then fsync(dir)                | DELETE of the object(s)                   |
| `zarr_group(path, mode)`  | `zarr.storage.LocalStore`                       | `zarr.storage.ObjectStore` (obstore)      |
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

import obstore
import zarr
from obstore.exceptions import AlreadyExistsError
from zarr.storage import LocalStore, ObjectStore

from stages.errors import UserError
from stages.store.damage import StoreDamaged
from stages.store.leases import lease
from stages.store.objects import ObjectPath

__all__ = ["Location", "location", "StoreLockError", "fsync_path", "clear_stale_temps"]

StorePath = Path | ObjectPath


class StoreLockError(UserError, OSError):
    """The store's file system refuses `flock` (Lustre mounted without `-o flock`, NFS with `nolock`)."""


class Location(Protocol):
    def put_atomic(self, path: Any, data: bytes) -> None:
        """Readers see the old content, the new one, or none; never part of it."""

    def put_new(self, path: Any, data: bytes) -> bool:
        """Write `path` only if it does not exist (one of several racing writers wins); whether we wrote it."""

    def staging(self, path: Any) -> Path:
        """A local temp file to write what will become `path` (`publish` moves it there)."""

    def publish(self, staged: Path, path: Any) -> None: ...

    def remove(self, path: Any) -> None:
        """Remove `path` if present, durably."""

    def remove_tree(self, path: Any) -> None: ...

    def exclusive(self, path: Any) -> contextlib.AbstractContextManager[None]:
        """An exclusive lock named `path` for the block, across processes and nodes."""

    def zarr_group(self, path: Any, mode: str) -> zarr.Group: ...

    def create_dir(self, target: Any, files: Mapping[str, bytes]) -> None:
        """Create `target` holding `files` (relative path -> bytes) all at once, unless it exists."""


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (directory entries need their own fsync to be durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clear_stale_temps(path: Path) -> None:
    """Remove `.<name>.<pid>.tmp` siblings of `path` left by a writer killed mid-write. Safe because each
    file has one writer at a time (one per shard; index files under the store lock)."""
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)


class PosixLocation:
    """A local or shared POSIX file system: temp + fsync + rename, `flock`."""

    def staging(self, path: Path) -> Path:
        clear_stale_temps(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def _staged(self, path: Path, data: bytes) -> Path:
        tmp = self.staging(path)
        try:
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def put_atomic(self, path: Path, data: bytes) -> None:
        self.publish(self._staged(path, data), path)

    def put_new(self, path: Path, data: bytes) -> bool:
        tmp = self._staged(path, data)
        try:
            os.link(tmp, path)  # fails with EEXIST when another writer was first
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        fsync_path(path.parent)
        return True

    def publish(self, staged: Path, path: Path) -> None:
        os.replace(staged, path)
        fsync_path(path.parent)

    def remove(self, path: Path) -> None:
        if path.exists():
            path.unlink()
            fsync_path(path.parent)

    def remove_tree(self, path: Path) -> None:
        if path.is_dir():
            shutil.rmtree(path)
            fsync_path(path.parent)

    @contextlib.contextmanager
    def exclusive(self, path: Path) -> Iterator[None]:
        """An exclusive `flock` on `path` (created if absent, never through a link) for the block."""
        path.parent.mkdir(exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise StoreDamaged(f"{path} is a symbolic link; a store holds no links (writes through one land "
                               "outside the cache root): remove it") from None
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

    def zarr_group(self, path: Path, mode: str) -> zarr.Group:
        return zarr.open_group(store=LocalStore(path, read_only=mode == "r"), mode=mode)

    def create_dir(self, target: Path, files: Mapping[str, bytes]) -> None:
        """Built in a hidden temp directory, renamed into place (atomic; a racing creator's rename fails)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{os.getpid()}.{time.time_ns()}.tmp"
        tmp.mkdir()
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        try:
            os.rename(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not target.exists():
                raise
            return
        fsync_path(target.parent)


class ObjectLocation:
    """An object store: whole-object PUTs, conditional PUTs, leases; no renames, no appends."""

    def put_atomic(self, path: ObjectPath, data: bytes) -> None:
        obstore.put(path.store, path.key, data)

    def put_new(self, path: ObjectPath, data: bytes) -> bool:
        try:
            obstore.put(path.store, path.key, data, mode="create")
        except AlreadyExistsError:
            return False
        return True

    def staging(self, path: ObjectPath) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        return Path(name)

    def publish(self, staged: Path, path: ObjectPath) -> None:
        try:
            obstore.put(path.store, path.key, staged)  # a large file goes up in parts, visible once complete
        finally:
            staged.unlink(missing_ok=True)

    def remove(self, path: ObjectPath) -> None:
        path.unlink(missing_ok=True)

    def remove_tree(self, path: ObjectPath) -> None:
        keys = [meta["path"] for meta in path.walk_objects()]
        if keys:
            obstore.delete(path.store, keys)

    def exclusive(self, path: ObjectPath) -> contextlib.AbstractContextManager[None]:
        return lease(path)

    def zarr_group(self, path: ObjectPath, mode: str) -> zarr.Group:
        return zarr.open_group(store=ObjectStore(path.store, read_only=mode == "r"), path=path.key, mode=mode)

    def create_dir(self, target: ObjectPath, files: Mapping[str, bytes]) -> None:
        """Each file created only if absent, in the given order (the caller puts the one that makes the
        directory count as a store last); a racing creator's files are left as they are."""
        for name, data in files.items():
            self.put_new(target / name, data)


_POSIX, _OBJECT = PosixLocation(), ObjectLocation()


def location(path: StorePath) -> Location:
    """Where `path` lives: the one place that tells a POSIX path from an object."""
    return _OBJECT if isinstance(path, ObjectPath) else _POSIX
