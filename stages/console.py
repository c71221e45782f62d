"""What every command prints besides its results, and how it reads its command line.

- `status(prog, text)`: one line on stderr before a phase that is long and would otherwise be silent (Ray
  starting, a model loading, the DeepSpeed engine building), so that a user sees what is being waited for.
- Third-party chatter (weight-loading bars, DeepSpeed's build notice and info logs, Ray's worker logs, the
  COCO tokenizer's Java line) is kept off the terminal at its source: the level of the logger that prints
  it, or `held_output` around the one call that prints it, which shows what was held back when the call
  fails. Nothing is hidden with `--verbose`, which every command accepts anywhere among its arguments; it
  sets `DFC_VERBOSE=1`, so the processes a command starts (Ray workers, a sweep's stages) inherit it.
- `add_overrides` / `parse_command_line`: `key=value` overrides and flags in any order.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from typing import IO, Iterator, Sequence

__all__ = ["VERBOSE_FLAG", "VERBOSE_ENV", "verbose", "take_verbose", "status", "held_output", "add_overrides",
           "parse_command_line"]

VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "DFC_VERBOSE"
_VERBOSE_HELP = "show third-party logs, warnings and progress bars as they come (default: kept off the terminal)"


def verbose() -> bool:
    """Whether this command (or the command that started this process) was given `--verbose`."""
    return os.environ.get(VERBOSE_ENV) == "1"


def take_verbose(argv: Sequence[str]) -> list[str]:
    """`argv` without `--verbose`, which it applies (for this process and those it starts)."""
    if VERBOSE_FLAG in argv:
        os.environ[VERBOSE_ENV] = "1"
    if not verbose():  # Hugging Face's weight-loading bars: read from the environment on import, else switched
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
        elif "huggingface_hub" in sys.modules:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
    return [a for a in argv if a != VERBOSE_FLAG]


def status(prog: str, text: str) -> None:
    """`prog: text` on stderr, flushed: what the command is doing while nothing else is printed."""
    print(f"{prog}: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def held_output(*, fd: bool = False) -> Iterator[None]:
    """Hold back what the block prints: Python's stdout, or (`fd=True`) stdout and stderr, Python's and file
    descriptors 1 and 2, so child processes' output too. Shown on stderr when the block raises; passed
    through when verbose."""
    if verbose():
        yield
        return
    python = io.StringIO()
    with contextlib.ExitStack() as stack:
        children = stack.enter_context(tempfile.TemporaryFile()) if fd else None
        try:
            with contextlib.redirect_stdout(python), \
                    contextlib.redirect_stderr(python) if fd else contextlib.nullcontext(), \
                    _descriptors_to(children) if fd else contextlib.nullcontext():
                yield
        except BaseException:
            if children is not None:
                children.seek(0)
            sys.stderr.write(python.getvalue() + (children.read().decode(errors="replace") if children else ""))
            sys.stderr.flush()
            raise


@contextlib.contextmanager
def _descriptors_to(file: IO[bytes]) -> Iterator[None]:
    """File descriptors 1 and 2 point at `file` for the block (what child processes inherit)."""
    for stream in (sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
        yield
    finally:
        for stream in (sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        for target, original in zip((1, 2), saved):
            os.dup2(original, target)
            os.close(original)


def add_overrides(parser: argparse.ArgumentParser, *, help: str) -> None:
    """The `key=value ...` positional and `--verbose` (`parse_command_line` reads them in any order)."""
    parser.add_argument("overrides", nargs="*", help=help)
    parser.add_argument(VERBOSE_FLAG, action="store_true", help=_VERBOSE_HELP)


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """`parser`'s arguments with overrides and flags intermixed (`extract --dry-run data=x --gpu A100 grid=8`);
    `--verbose` applied."""
    args = parser.parse_intermixed_args(take_verbose(argv))
    args.verbose = verbose()
    return args
