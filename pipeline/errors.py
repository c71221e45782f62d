"""Errors of an extraction run (a module of its own: the driver, the Ray job and the workers raise them)."""
from __future__ import annotations

import contextlib
import os
import time
import traceback
from pathlib import Path
from typing import Iterator, Sequence

__all__ = ["ExtractionError", "WorkerError", "reported", "logged_failure"]


class ExtractionError(RuntimeError):
    """A worker failed in a way that stops the run (e.g. the model cannot be loaded in an actor); the
    message is one line, ending with the log file holding the tracebacks."""


class WorkerError(Exception):
    """An exception raised in a worker, reduced to what crosses a process boundary intact: the original
    `Type: first line of the message`, where it happened (shard, keys) and its traceback text. Read the
    attributes, not `args` (Ray appends retry advice to the first argument)."""

    def __init__(self, error: str, *, shard: int | None = None, keys: Sequence[str] = (), details: str = "") -> None:
        super().__init__(error)
        self.error, self.shard, self.keys, self.details = error, shard, tuple(keys), details

    def where(self) -> str:
        """`shard 3 (keys 'a.jpg', 'b.jpg')`, or `actor start` when no shard was being worked on."""
        if self.shard is None:
            return "actor start"
        keys = f" (keys {', '.join(map(repr, self.keys[:3]))}{', ...' if len(self.keys) > 3 else ''})"
        return f"shard {self.shard}{keys if self.keys else ''}"


@contextlib.contextmanager
def reported(*, shard: int | None = None, keys: Sequence[str] = ()) -> Iterator[None]:
    """Re-raise any exception of the block as a `WorkerError` naming `shard` and `keys` (one raised by an
    inner block, which knew more, passes unchanged)."""
    try:
        yield
    except WorkerError:
        raise
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        error = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        raise WorkerError(error, shard=shard, keys=keys, details=traceback.format_exc()) from exc


def logged_failure(raised: BaseException, cause: WorkerError | None, *, log_dir: Path,
                   root_cause: str = "") -> ExtractionError:
    """One line for the user (the worker's exception type and message, its shard and keys; else
    `root_cause`) and a log file `log_dir/extract-<time>-<pid>.log` with the worker's traceback and the
    error `raised` as the driver saw it."""
    line = (f"extraction worker failed at {cause.where()}: {cause.error}" if cause is not None
            else f"extraction worker failed: {root_cause}")
    log_dir.mkdir(exist_ok=True)
    log = log_dir / f"extract-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    worker = f"worker traceback:\n{cause.details}\n" if cause is not None else ""
    log.write_text(f"{line}\n\n{worker}as raised in the driver ({type(raised).__name__}):\n{raised}\n",
                   encoding="utf-8")
    return ExtractionError(f"{line}; tracebacks in {log}")
