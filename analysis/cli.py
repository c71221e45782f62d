"""`python -m analysis.cli <what> [key=value ...] [--flags ...]` (`just analyze <what> ...`, `just inspect ...`).

Options are given as `key=value` like every other command (`trials=1`, `timesteps=[189,589]`,
`extract_config=configs/extract/sample.yaml`, `config=FILE` for a YAML of them; values parse as YAML,
`stages.config`) or as the flags `--help` lists (`--trials 1`); a `key=value` becomes its flag. `--verbose`
(anywhere) shows what third-party libraries print, otherwise kept off the terminal.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Mapping, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from analysis.commands import COMMANDS  # noqa: E402
from stages.config import ConfigError, load_config, parse_overrides  # noqa: E402
from stages.console import take_verbose  # noqa: E402
from stages.errors import UserError, print_user_error  # noqa: E402

__all__ = ["main", "build_parser", "as_flags"]

_OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="analyze", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="<what>")
    for name, module in COMMANDS.items():
        module.configure(commands.add_parser(name, help=module.HELP, description=module.HELP))
    return parser


def as_flags(argv: Sequence[str]) -> list[str]:
    """`argv` with its `key=value` overrides (and the keys of a `config=FILE`, which they override) turned
    into the flags `--key value...` (a list gives one value each; null leaves the default)."""
    overrides = [a for a in argv if _OVERRIDE.match(a)]
    values = parse_overrides(overrides)
    if "config" in values:
        values = load_config(values["config"], overrides)
    flags = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            raise ConfigError(f"analysis options are not nested: {key}.{next(iter(value), '')}=... has no meaning")
        if value is not None:
            flags += [f"--{key.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    return [a for a in argv if not _OVERRIDE.match(a)] + flags


def main(argv: Sequence[str] | None = None) -> int:
    argv = take_verbose(sys.argv[1:] if argv is None else argv)
    try:
        flags = as_flags(argv)
    except UserError as exc:
        return print_user_error(f"analyze {argv[0] if argv else ''}".strip(), exc)
    args = build_parser().parse_args(flags)
    try:
        out = COMMANDS[args.command].run(args)
    except UserError as exc:
        return print_user_error(f"analyze {args.command}", exc)
    print(f"wrote {out.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
