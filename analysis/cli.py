"""`python -m analysis.cli <what> ...` (`just analyze <what> ...`, `just inspect ...`)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from analysis.commands import COMMANDS  # noqa: E402
from stages.errors import UserError, print_user_error  # noqa: E402

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="analyze", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="<what>")
    for name, module in COMMANDS.items():
        module.configure(commands.add_parser(name, help=module.HELP, description=module.HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = COMMANDS[args.command].run(args)
    except UserError as exc:
        return print_user_error(f"analyze {args.command}", exc)
    print(f"wrote {out.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
