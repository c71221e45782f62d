"""Where a command will write, checked before it starts: the cache root, a training run's `output_dir`,
a `--plan-json` or `--summary-json` file.

A command that cannot write its outputs says so in one line before any process, store or file exists,
not with a traceback after the work. Permission bits do not answer it (root ignores them; a read-only
mount, `/proc` or `/sys` refuse what `os.access` allows), so the check creates and removes an empty
directory where the command would write: in the target directory when it exists, else in its nearest
existing parent (where the command would create it). The tree's contents are the same afterwards.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from stages.config import ConfigError
from stages.store.objects import is_url

__all__ = ["check_writable_dir", "check_writable_file"]


def _nearest_existing(path: Path) -> Path:
    """`path` or its nearest parent that exists (`.` for a relative path none of whose parts exist)."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def _problem(path: Path) -> str | None:
    """Why no directory can be created at (or files written in) `path`, or None."""
    if "\x00" in str(path):
        return "contains a NUL byte"
    existing = _nearest_existing(path)
    if not existing.is_dir():
        return "is a file, not a directory" if existing == path else f"cannot be created: {existing} is a file"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=existing))
    except OSError as exc:
        where = "" if existing == path else f" (it would be created in {existing})"
        return f"is not writable{where}: creating a folder there fails ({exc.strerror or exc})"
    return None


def check_writable_dir(path: str | Path, *, setting: str) -> None:
    """Raise `ConfigError` naming `setting` (`setting=path`) unless `path` is a directory this process can
    create files in, or one it can create (its nearest existing part a writable directory)."""
    if not str(path):
        raise ConfigError(f"{setting} is empty; name a directory")
    if is_url(path):
        return  # an object store: no directories to check; its first write names a refusal
    problem = _problem(Path(path))
    if problem:
        raise ConfigError(f"{setting}={path} {problem}; choose a directory you can write to")


def check_writable_file(path: str | Path, *, setting: str) -> None:
    """Raise `ConfigError` naming `setting` (`setting path`) unless the file `path` can be written: not a
    directory, its folder writable or creatable (as `check_writable_dir`), an existing file writable."""
    path = Path(path)
    if not str(path) or "\x00" in str(path) or path.is_dir():
        raise ConfigError(f"{setting} {str(path)!r} is not a file name (a directory, empty or with a NUL byte)")
    problem = _problem(path.parent)
    if problem:
        raise ConfigError(f"{setting} {path} cannot be written: its folder {path.parent} {problem}")
    if path.exists():
        try:
            with path.open("ab"):  # appends nothing: the file is unchanged
                pass
        except OSError as exc:
            raise ConfigError(f"{setting} {path} cannot be written: {exc.strerror or exc}") from None
