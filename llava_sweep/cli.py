"""`python -m llava_sweep.cli` (the `just sweep` and `just sweep-report` recipes).

    sweep SWEEP [key=value ...] [--dry-run] [--plan-json FILE] [--gpu NAME] [--ray-address ADDR] ...
        run the grid (extraction once per store, then each run's stages; on a Ray cluster), or only plan it
    report SWEEP [key=value ...]
        the paper's tables and figures from the runs' results

Overrides and flags come in any order; --verbose (anywhere) shows what third-party libraries print, in this
process and in the stages it starts.

Exit status: 0 done; 1 some run failed (the summary names each with its reason and log); 2 a setup
problem (bad sweep file or override), one line; 130 interrupted: the same command resumes.
"""
from __future__ import annotations

import sys
from typing import Sequence

from stages.console import take_verbose
from stages.errors import INTERRUPTED, USAGE_ERROR

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = take_verbose(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("sweep", "report"):
        print(__doc__, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else USAGE_ERROR
    command, rest = argv[0], argv[1:]
    try:  # the commands import torch, transformers and Ray (seconds): a Ctrl-C then is one line too
        if command == "report":
            from llava_sweep.report import main as command_main
        elif "--dry-run" in rest:
            from llava_sweep.plan import main as command_main

            rest = [a for a in rest if a != "--dry-run"]
        else:
            from llava_sweep.runner import main as command_main
    except KeyboardInterrupt:
        print(f"{command}: interrupted before it started; run the same command to start", file=sys.stderr)
        return INTERRUPTED
    return command_main(rest)


if __name__ == "__main__":
    sys.exit(main())
