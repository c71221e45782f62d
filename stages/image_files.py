"""User image files: safe paths under an image root, and which bytes a file held when its features were
computed (DESIGN §8). Light on purpose (no PIL, no torch): the store's records and planning use it.

The data file is not trusted, the file system is: `safe_image_path` refuses keys that could leave the
image root as written (absolute, `..`, `~`; `UnsafeKey`, with a short `cause` and a reason the caller
records), and follows the symlinks the image root holds (LLaVA set-ups link `coco -> /data/coco`).
`find_files` lists a folder the user gave the same way.

A store row is keyed by (fingerprint, image key), and a key is a path: the same path can later hold
another picture (an image replaced in place, a second `image_root` or `eval_root` with the same file
names). So the extraction records, per key, the sha256 of the bytes it decoded, with the file's size
and mtime. `unchanged` answers as make and rsync do, cheaply: equal size and mtime mean unchanged;
otherwise the sha256 of the file's bytes now decides (a copied tree keeps its bytes, not its mtimes).
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from stages.errors import UserError

__all__ = ["ImageError", "UnsafeKey", "ImageStamp", "safe_image_path", "find_files", "unchanged", "changed_keys"]


class ImageError(UserError, ValueError):
    """An image that cannot be used: escaping path, missing, unreadable, truncated or too large.
    `stamp`: its bytes' stamp when they could be read."""

    def __init__(self, message: str, *, stamp: ImageStamp | None = None) -> None:
        super().__init__(message)
        self.stamp = stamp


class UnsafeKey(ImageError):
    """A key no image may have: `cause` says why in a few words (`absolute path`), for counting."""

    def __init__(self, message: str, *, cause: str = "") -> None:  # a default: rebuilt from the message alone
        super().__init__(message)
        self.cause = cause


NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems
_OUTSIDE = "keys are paths under image_root; to use images kept elsewhere, link their folder into image_root"


def _shown(key: str) -> str:
    return repr(key) if len(key) <= 80 else f"{key[:60]!r}...({len(key)} characters)"


def _check_key(key: str) -> None:
    """Refuse a key by its text alone: one that could leave the root as written, or that no file can have."""
    if "\x00" in key:
        raise UnsafeKey(f"image path {_shown(key)} contains a NUL byte, which no file name can hold", cause="NUL byte")
    try:
        longest = max((len(part.encode("utf-8")) for part in key.split("/")), default=0)
    except UnicodeEncodeError as exc:  # a lone surrogate (an escaped `\ud800` in the JSON)
        raise UnsafeKey(f"image path {_shown(key)} is not valid Unicode text ({exc.reason})",
                        cause="not valid Unicode") from None
    if longest > NAME_MAX:
        raise UnsafeKey(f"image path {_shown(key)} has a component of {longest} bytes; file names are at most "
                        f"{NAME_MAX} bytes", cause=f"a name over {NAME_MAX} bytes")
    if not key:
        raise UnsafeKey("image path '' is empty", cause="empty path")
    if os.path.isabs(key):
        raise UnsafeKey(f"image path {_shown(key)} is absolute, which escapes the image root: {_OUTSIDE}",
                        cause="absolute path")
    if key.startswith("~"):
        raise UnsafeKey(f"image path {_shown(key)} starts with '~' (a home folder), which escapes the image root: "
                        f"{_OUTSIDE}", cause="starts with '~'")
    if ".." in Path(key).parts:
        raise UnsafeKey(f"image path {_shown(key)} has a '..' component, which escapes the image root: {_OUTSIDE}",
                        cause="'..' in the path")


def safe_image_path(root: str | Path, key: str) -> Path:
    """`root/key` (root made absolute), refusing keys that could leave `root` as written (absolute, `..`,
    `~`) and keys no file system has a file for (a NUL byte, a component over `NAME_MAX` bytes, text that
    is not UTF-8): `UnsafeKey`. Symlinks under `root` are followed wherever they lead: they are the
    user's own layout, whereas the key comes from a data file."""
    _check_key(key)
    return Path(root).resolve() / key


def find_files(root: str | Path, pattern: str) -> list[Path]:
    """The files under `root` whose name matches `pattern` (`fnmatch`), sorted; symlinked folders are
    followed (pathlib's `rglob` skips them before Python 3.13), each real folder once (a link cycle ends)."""
    found, seen = [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in seen:
            subfolders[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        subfolders.sort()  # which of two links to one folder lists it: the first by name
        found += [Path(folder) / n for n in fnmatch.filter(names, pattern) if os.path.isfile(os.path.join(folder, n))]
    return sorted(found)


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
