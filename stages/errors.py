"""User-facing errors: a mistake the user can fix, whose message says how.

`extract` and `train` catch `UserError` alone, print its message (no traceback) and exit with
`USAGE_ERROR` (2, as argparse does for bad arguments); a Ctrl-C ends them with one line and
`INTERRUPTED` (130, as shells report it); any other exception is a bug or a failed run and
propagates with its traceback (exit status 1). Each concrete type also derives from the builtin it
replaces (`ConfigError(UserError, ValueError)`), so `except ValueError` callers keep working.
"""
from __future__ import annotations

import importlib
import sys
from typing import NoReturn

__all__ = ["UserError", "USAGE_ERROR", "INTERRUPTED", "print_user_error", "run_main"]

USAGE_ERROR = 2
INTERRUPTED = 130  # 128 + SIGINT


class UserError(Exception):
    """Something the user has to change (a config value, a file, a model, a store); the message says what."""


def print_user_error(prog: str, exc: UserError) -> int:
    """`prog: error: <message>` on stderr; returns `USAGE_ERROR`."""
    message = exc.args[0] if exc.args else type(exc).__name__  # not str(): KeyError-based types quote it
    print(f"{prog}: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def run_main(module: str, *, prog: str) -> NoReturn:
    """Import `module` and exit with its `main()`'s status. A CLI run as `python -m module` calls this before
    its own slow imports (torch, transformers: seconds), so that a Ctrl-C during them is one line and
    `INTERRUPTED` as well, not a traceback."""
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        print(f"{prog}: interrupted before it started; run the same command to start", file=sys.stderr)
        sys.exit(INTERRUPTED)
    sys.exit(main())
