"""User-facing errors: a mistake the user can fix, whose message says how.

`extract` and `train` catch `UserError` alone, print its message (no traceback) and exit with
`USAGE_ERROR` (2, as argparse does for bad arguments); a Ctrl-C ends them with one line and
`INTERRUPTED` (130, as shells report it); any other exception is a bug or a failed run and
propagates with its traceback (exit status 1). Each concrete type also derives from the builtin it
replaces (`ConfigError(UserError, ValueError)`), so `except ValueError` callers keep working.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import signal
import sys
from typing import NoReturn

__all__ = ["UserError", "USAGE_ERROR", "INTERRUPTED", "print_user_error", "run_main", "exit_now"]

USAGE_ERROR = 2
INTERRUPTED = 130  # 128 + SIGINT


class UserError(Exception):
    """Something the user has to change (a config value, a file, a model, a store); the message says what."""


def print_user_error(prog: str, exc: UserError) -> int:
    """`prog: error: <message>` on stderr; returns `USAGE_ERROR`."""
    message = exc.args[0] if exc.args else type(exc).__name__  # not str(): KeyError-based types quote it
    print(f"{prog}: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def run_main(module: str, *, prog: str, fast_exit: bool = False) -> NoReturn:
    """Import `module` and exit with its `main()`'s status. A CLI run as `python -m module` calls this before
    its own slow imports (torch, transformers: seconds), so that a Ctrl-C during them is one line and
    `INTERRUPTED` as well, not a traceback. `fast_exit`: once `main()` has returned, exit as `exit_now` does
    (only for a process that ends here: it skips the interpreter's teardown)."""
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        print(f"{prog}: interrupted before it started; run the same command to start", file=sys.stderr)
        sys.exit(INTERRUPTED)
    if not fast_exit:
        sys.exit(main())
    try:
        status = main()
    except SystemExit as exc:  # argparse's usage errors
        if not isinstance(exc.code, (int, type(None))):
            raise
        status = exc.code
    exit_now(status or 0, prog=prog)


def exit_now(status: int, *, prog: str) -> NoReturn:
    """End the process with `status` once its work is done: the `atexit` handlers run and stdout/stderr are
    flushed, but the interpreter's teardown of its modules is skipped. Python turns its signal handling off
    before that teardown, which takes seconds in a process holding torch, transformers and DeepSpeed (6 s
    measured after a training run): a Ctrl-C then killed the process by the signal, with no message. Here a
    Ctrl-C is one line and `INTERRUPTED`."""
    pressed: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    atexit._run_exitfuncs()
    if pressed:
        print(f"{prog}: interrupted while exiting; the work it reported above was done", file=sys.stderr)
        status = INTERRUPTED
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
