"""Where a reader finds a shard file on local disk: the store's own file (`DirectFiles`, a POSIX store) or
a copy downloaded from an object store into a size-limited local cache (`ShardCache`).

`ShardCache` keeps each shard file under the sha256 its completion record names (`<dir>/<ab>/<sha256>`):
a copy is downloaded whole, checked against the record's size and sha256 before it is renamed into
place (a flipped byte in the object is a `CorruptDownload`), and is the shard as recorded for as long as it
exists. Every read of it is checked again by the reader (crc32c and identity digest of each sample).
Over `limit` bytes the least recently used copies are evicted (`atime` is set on each use); a copy
being read is pinned with a shared `flock` and never evicted, across threads and DataLoader worker
processes alike, and a download holds an exclusive `flock` on `<copy>.lock` so two processes fetch a shard
once. `prefetch` downloads shards ahead of the reader in a background thread while they fit under the
limit (it never evicts).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import obstore

from stages.config import ConfigError
from stages.store.objects import ObjectPath
from stages.store.records import CompletionRecord

__all__ = ["ShardCache", "DirectFiles", "CorruptDownload", "DEFAULT_CACHE_DIR", "files_for", "parse_size"]

DEFAULT_CACHE_DIR = Path("~/.cache/diffusion-feature-cache/shards").expanduser()
_CHUNK = 8 << 20
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*$", re.IGNORECASE)


def parse_size(text: str, *, setting: str) -> int | None:
    """`"200GB"`, `"1.5GiB"`, `"1000000"` as bytes; `""` as None (no limit). `ConfigError` naming `setting`."""
    if not str(text).strip():
        return None
    found = _SIZE.match(str(text))
    if found is None:
        raise ConfigError(f"{setting}={text!r} is not a size; write e.g. 200GB, 1.5GiB or a number of bytes")
    return int(float(found.group(1)) * _UNITS[(found.group(2) or "").upper()])


class CorruptDownload(OSError):
    """A downloaded shard whose size or sha256 is not its completion record's."""


class DirectFiles:
    """A POSIX store's shard files are read where they are."""

    @contextlib.contextmanager
    def pinned(self, remote: Path, record: CompletionRecord) -> Iterator[Path]:
        yield remote

    def missing_bytes(self, records: Sequence[CompletionRecord]) -> int:
        return 0

    def prefetch(self, shards: Sequence[tuple[Path, CompletionRecord]]) -> None:
        """Nothing to fetch."""


class ShardCache:
    """Local copies of shard files of object stores, at most `limit` bytes (None: no limit) under `directory`."""

    def __init__(self, directory: str | Path = DEFAULT_CACHE_DIR, *, limit: int | None = None) -> None:
        self.directory, self.limit = Path(directory).expanduser(), limit
        self.downloaded = 0  # bytes this process downloaded
        self.evicted = 0  # copies this process evicted
        self._prefetcher: threading.Thread | None = None

    @classmethod
    def from_settings(cls, directory: str, limit: str, *, setting: str) -> "ShardCache":
        """From a config's `cache_dir` ("" = the default) and `cache_limit` (`parse_size`)."""
        return cls(directory or DEFAULT_CACHE_DIR, limit=parse_size(limit, setting=setting))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_prefetcher": None}  # each DataLoader worker prefetches for itself

    def _copy(self, record: CompletionRecord) -> Path:
        return self.directory / record.sha256[:2] / record.sha256

    # ---- reading --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def pinned(self, remote: ObjectPath, record: CompletionRecord) -> Iterator[Path]:
        """The local copy of `remote` (downloaded now if absent), never evicted while the block runs."""
        path = self._copy(record)
        while (fd := self._pin(path)) is None:
            self._download(remote, record, path, evict=True)
        try:
            yield path
        finally:
            os.close(fd)

    @staticmethod
    def _pin(path: Path) -> int | None:
        """A descriptor holding a shared lock on the copy, or None when there is none (or it was just evicted)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd).st_nlink == 0:  # evicted between open and lock
            os.close(fd)
            return None
        os.utime(path, ns=(time.time_ns(), os.fstat(fd).st_mtime_ns))  # atime: most recently used
        return fd

    def missing_bytes(self, records: Sequence[CompletionRecord]) -> int:
        """Bytes a read of these shards would download now (the dry run's egress)."""
        return sum(r.nbytes for r in {r.sha256: r for r in records}.values() if not self._copy(r).is_file())

    # ---- downloading ----------------------------------------------------------------------------
    def _download(self, remote: ObjectPath, record: CompletionRecord, path: Path, *, evict: bool) -> bool:
        """Download `remote` to `path` unless another process did meanwhile; whether it is there now.
        Without `evict`, only when it fits under the limit."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.is_file():
                return True
            if not self._make_room(record.nbytes, evict=evict):
                return False
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                digest, size = hashlib.sha256(), 0
                with tmp.open("wb") as fh:
                    for chunk in obstore.get(remote.store, remote.key).stream(min_chunk_size=_CHUNK):
                        fh.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                if (size, digest.hexdigest()) != (record.nbytes, record.sha256):
                    raise CorruptDownload(f"downloaded {size} bytes with sha256 {digest.hexdigest()[:12]}…, its "
                                          f"completion record says {record.nbytes} bytes, {record.sha256[:12]}…")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            self.downloaded += size
            return True

    def _entries(self) -> list[tuple[float, int, Path]]:
        found = []
        for path in self.directory.glob("??/*"):
            if not path.name.endswith((".lock", ".tmp")):
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    found.append((stat.st_atime, stat.st_size, path))
        return sorted(found)

    def _make_room(self, nbytes: int, *, evict: bool) -> bool:
        """Evict least recently used copies not in use until `nbytes` more fit under the limit. With `evict`
        False, only say whether they fit as it is. A download the pinned copies leave no room for still
        goes ahead (the limit is exceeded, never a read refused)."""
        if self.limit is None:
            return True
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._entries()
            total = sum(size for _, size, _ in entries)
            if not evict:
                return total + nbytes <= self.limit
            for _, size, path in entries:
                if total + nbytes <= self.limit:
                    break
                if self._evict(path):
                    total -= size
        return True

    def _evict(self, path: Path) -> bool:
        """Remove a copy unless it is being read (someone holds its shared lock)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
        self.evicted += 1
        return True

    def prefetch(self, shards: Sequence[tuple[ObjectPath, CompletionRecord]]) -> None:
        """Download `shards` in order in a background thread while they fit under the limit (without evicting);
        a shard read before its turn is downloaded by the read. Errors are left for the read to raise."""
        if self._prefetcher is not None and self._prefetcher.is_alive():
            return

        def run() -> None:
            for remote, record in shards:
                try:
                    if not self._download(remote, record, self._copy(record), evict=False):
                        return
                except (OSError, CorruptDownload):
                    continue

        self._prefetcher = threading.Thread(target=run, daemon=True, name="shard prefetch")
        self._prefetcher.start()

    def wait(self) -> None:
        """Until the prefetch thread is done (benchmarks and tests)."""
        if self._prefetcher is not None:
            self._prefetcher.join()


def files_for(root: Path | ObjectPath, cache: ShardCache | None) -> DirectFiles | ShardCache:
    """Where a reader of the store at `root` finds shard files: a POSIX store's own, an object store's local
    copies (in `cache`, or the default cache without a limit)."""
    if isinstance(root, ObjectPath):
        return cache if cache is not None else ShardCache()
    return DirectFiles()
