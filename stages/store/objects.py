"""`ObjectPath`: a place in an object store (`s3://`, `gs://`, `az://`, `memory://`, `file://`, any URL obstore
opens), with the read side of `pathlib.Path` that the store code uses, so one code path reads both.

Object stores have no directories, renames, appends or links: a "directory" exists while some object has it
as a prefix, `is_symlink` is always False, and writes go through `stages.store.location` (whole objects,
each PUT atomic). Credentials and endpoints come from the usual environment (`AWS_ACCESS_KEY_ID`,
`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, `GOOGLE_APPLICATION_CREDENTIALS`, `AZURE_STORAGE_ACCOUNT_NAME`, ...),
read by obstore when the store is first used in a process; `docs/store.md` lists them.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import io
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Iterator
from urllib.parse import urlsplit

import obstore
from obstore.store import MemoryStore, from_url

__all__ = ["ObjectPath", "is_url", "as_location"]

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://")


def is_url(value: str | os.PathLike) -> bool:
    """Whether `value` names an object store (`scheme://...`) rather than a local path."""
    return isinstance(value, (str, ObjectPath)) and bool(_URL.match(str(value)))


def as_location(value: "str | os.PathLike | ObjectPath") -> "Path | ObjectPath":
    """A cache root or store as the store code takes it: an `ObjectPath` for a URL, a `Path` otherwise."""
    if isinstance(value, (Path, ObjectPath)):
        return value
    return ObjectPath.from_url(str(value)) if is_url(value) else Path(value)


@functools.lru_cache(maxsize=None)
def _bucket(base: str) -> Any:
    """One obstore store per bucket and process (a `memory://` store lives as long as the process)."""
    return MemoryStore() if base == "memory://" else from_url(base + ("/" if base.startswith("file:") else ""))


class _Readable(io.RawIOBase):
    """obstore's buffered object reader as a standard binary file (it returns obstore `Bytes`)."""

    def __init__(self, reader: Any) -> None:
        super().__init__()
        self._reader = reader

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = memoryview(self._reader.read(len(buffer)))
        buffer[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._reader.seek(offset, whence)

    def tell(self) -> int:
        return self._reader.tell()

    def close(self) -> None:
        self._reader.close()
        super().close()


class _Stat:
    def __init__(self, meta: dict[str, Any]) -> None:
        self.st_size = int(meta["size"])
        modified: dt.datetime = meta["last_modified"]
        self.st_mtime_ns = int(modified.timestamp() * 1e9)
        self.e_tag = meta.get("e_tag")


class ObjectPath:
    """`<base>/<key>`: `base` is `scheme://bucket` (`file://`, `memory://` have none), `key` the object's path."""

    __slots__ = ("base", "key")

    def __init__(self, base: str, key: str) -> None:
        self.base, self.key = base, key.strip("/")

    @classmethod
    def from_url(cls, url: str) -> "ObjectPath":
        parts = urlsplit(url)
        if parts.scheme in ("file", "memory"):
            return cls(f"{parts.scheme}://", (parts.netloc + parts.path).strip("/"))
        return cls(f"{parts.scheme}://{parts.netloc}", parts.path)

    @property
    def store(self) -> Any:
        return _bucket(self.base)

    # ---- pure path arithmetic ---------------------------------------------------------------
    def __truediv__(self, other: str | os.PathLike) -> "ObjectPath":
        return ObjectPath(self.base, f"{self.key}/{os.fspath(other)}" if self.key else os.fspath(other))

    def __str__(self) -> str:
        return f"{self.base}/{self.key}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and (self.base, self.key) == (other.base, other.key)

    def __hash__(self) -> int:
        return hash((self.base, self.key))

    def __lt__(self, other: "ObjectPath") -> bool:
        return (self.base, self.key) < (other.base, other.key)

    def __reduce__(self) -> tuple[Any, ...]:
        return ObjectPath, (self.base, self.key)

    @property
    def _pure(self) -> PurePosixPath:
        return PurePosixPath("/" + self.key)

    @property
    def name(self) -> str:
        return self._pure.name

    @property
    def stem(self) -> str:
        return self._pure.stem

    @property
    def suffix(self) -> str:
        return self._pure.suffix

    @property
    def parent(self) -> "ObjectPath":
        return ObjectPath(self.base, str(self._pure.parent))

    @property
    def parents(self) -> list["ObjectPath"]:
        return [ObjectPath(self.base, str(p)) for p in self._pure.parents]

    def with_name(self, name: str) -> "ObjectPath":
        return self.parent / name

    def relative_to(self, other: "ObjectPath") -> PurePosixPath:
        return self._pure.relative_to(other._pure)

    def as_posix(self) -> str:
        return str(self)

    def resolve(self) -> "ObjectPath":
        return self

    # ---- reading --------------------------------------------------------------------------------
    def stat(self) -> _Stat:
        return _Stat(obstore.head(self.store, self.key))

    def is_file(self) -> bool:
        try:
            self.stat()
        except FileNotFoundError:
            return False
        return True

    def _children(self) -> tuple[list[str], list[dict[str, Any]]]:
        listed = obstore.list_with_delimiter(self.store, self.key or None)
        return listed["common_prefixes"], listed["objects"]

    def is_dir(self) -> bool:
        prefixes, objects = self._children()
        return bool(prefixes or objects)

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def is_symlink(self) -> bool:
        return False  # object stores have no links

    def iterdir(self) -> Iterator["ObjectPath"]:
        prefixes, objects = self._children()
        for key in sorted([*prefixes, *(o["path"] for o in objects)]):
            yield ObjectPath(self.base, key)

    def walk_objects(self) -> Iterator[dict[str, Any]]:
        """Every object under this prefix (obstore's metadata: path, size, e_tag, last_modified)."""
        for batch in obstore.list(self.store, self.key or None, chunk_size=1000):
            yield from batch

    def glob(self, pattern: str) -> Iterator["ObjectPath"]:
        """Objects and prefixes matching `pattern` (`fnmatch` per path segment, no `**`)."""
        depth = pattern.count("/") + 1
        found = set()
        for meta in self.walk_objects():
            rel = meta["path"][len(self.key) + 1 if self.key else 0:].split("/")
            if len(rel) >= depth and fnmatch.fnmatchcase("/".join(rel[:depth]), pattern):
                found.add("/".join(rel[:depth]))
        for rel in sorted(found):
            yield self / rel

    def rglob(self, pattern: str) -> Iterator["ObjectPath"]:
        """Objects under this prefix whose name matches `pattern`."""
        for meta in self.walk_objects():
            if fnmatch.fnmatchcase(meta["path"].rsplit("/", 1)[-1], pattern):
                yield ObjectPath(self.base, meta["path"])

    def read_bytes(self) -> bytes:
        return obstore.get(self.store, self.key).bytes().to_bytes()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def open(self, mode: str = "r", encoding: str | None = None) -> Any:
        if mode not in ("r", "rb"):
            raise OSError(f"{self}: objects are written whole (stages.store.location), not opened with {mode!r}")
        if mode == "r":
            return io.StringIO(self.read_text(encoding or "utf-8"))
        return io.BufferedReader(_Readable(obstore.open_reader(self.store, self.key, buffer_size=8 << 20)), 1 << 20)

    # ---- the writes a path can make by itself (the store's protocol is in stages.store.location) --------
    def write_bytes(self, data: bytes) -> None:
        obstore.put(self.store, self.key, data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        if not missing_ok and not self.is_file():
            raise FileNotFoundError(str(self))
        obstore.delete(self.store, self.key)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: a prefix exists once an object is under it."""
