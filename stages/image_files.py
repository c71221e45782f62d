"""User image files: safe paths under an image root, and which bytes a file held when its features were
computed (DESIGN §8). Light on purpose (no PIL, no torch): the store's records and planning use it.

`safe_image_path` refuses keys that escape the image root (`ImageError`, a reason the caller records).

A store row is keyed by (fingerprint, image key), and a key is a path: the same path can later hold
another picture (an image replaced in place, a second `image_root` or `eval_root` with the same file
names). So the extraction records, per key, the sha256 of the bytes it decoded, with the file's size
and mtime. `unchanged` answers as make and rsync do, cheaply: equal size and mtime mean unchanged;
otherwise the sha256 of the file's bytes now decides (a copied tree keeps its bytes, not its mtimes).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from stages.errors import UserError

__all__ = ["ImageError", "ImageStamp", "safe_image_path", "unchanged", "changed_keys"]


class ImageError(UserError, ValueError):
    """An image that cannot be used: escaping path, missing, unreadable, truncated or too large.
    `stamp`: its bytes' stamp when they could be read."""

    def __init__(self, message: str, *, stamp: ImageStamp | None = None) -> None:
        super().__init__(message)
        self.stamp = stamp


NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems


def _shown(key: str) -> str:
    return repr(key) if len(key) <= 80 else f"{key[:60]!r}...({len(key)} characters)"


def safe_image_path(root: str | Path, key: str) -> Path:
    """`root/key`, refusing absolute keys, `..`, symlinks that resolve outside `root`, and keys no file
    system has a file for (a NUL byte, a component over `NAME_MAX` bytes, text that is not UTF-8)."""
    if "\x00" in key:
        raise ImageError(f"image path {_shown(key)} contains a NUL byte, which no file name can hold")
    try:
        longest = max((len(part.encode("utf-8")) for part in key.split("/")), default=0)
    except UnicodeEncodeError as exc:  # a lone surrogate (an escaped `\ud800` in the JSON)
        raise ImageError(f"image path {_shown(key)} is not valid Unicode text ({exc.reason})") from None
    if longest > NAME_MAX:
        raise ImageError(f"image path {_shown(key)} has a component of {longest} bytes; file names are at most "
                         f"{NAME_MAX} bytes")
    if not key or os.path.isabs(key) or key.startswith("~") or ".." in Path(key).parts:
        raise ImageError(f"image path {key!r} escapes the image root")
    root_real = Path(root).resolve()
    path = root_real / key
    real = path.resolve()
    if real != root_real and root_real not in real.parents:
        raise ImageError(f"image path {key!r} resolves outside the image root ({real})")
    return path


@dataclass(frozen=True)
class ImageStamp:
    """An image file as it was read: the sha256 of its bytes, its size and mtime."""

    sha256: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, data: bytes, stat: os.stat_result) -> "ImageStamp":
        """The stamp of `data`, read from a file whose `stat` was taken before reading it."""
        return cls(sha256=hashlib.sha256(data).hexdigest(), size=stat.st_size, mtime_ns=stat.st_mtime_ns)

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "ImageStamp":
        return cls(sha256=str(value["sha256"]), size=int(value["size"]), mtime_ns=int(value["mtime_ns"]))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def unchanged(path: Path, stamp: ImageStamp) -> bool:
    """Whether `path` still holds the bytes `stamp` recorded (a file that is gone cannot be compared:
    True; the run that needs it reports it missing)."""
    try:
        stat = path.stat()
    except OSError:
        return True
    if (stat.st_size, stat.st_mtime_ns) == (stamp.size, stamp.mtime_ns):
        return True
    if stat.st_size != stamp.size:
        return False
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest() == stamp.sha256


def changed_keys(image_root: str | Path, keys: Iterable[str], stamps: Mapping[str, ImageStamp]) -> list[str]:
    """Those of `keys` with a stamp whose file under `image_root` no longer holds the stamped bytes."""
    return [k for k in keys if k in stamps and not unchanged(safe_image_path(image_root, k), stamps[k])]
