"""`caches [ROOT]` and `verify STORE`: the store commands (wired into pipeline/cli.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from stages.locations import DEFAULT_CACHE_ROOT
from stages.store import list_caches, verify_store

__all__ = ["caches_main", "verify_main"]


def _human(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def caches_main(argv: Sequence[str] | None = None) -> int:
    """List the stores under ROOT: fingerprint, models, timesteps, arrays, done/planned, size, created."""
    parser = argparse.ArgumentParser(prog="caches", description=caches_main.__doc__)
    parser.add_argument("root", nargs="?", default=DEFAULT_CACHE_ROOT,
                        help=f"cache root (default: {DEFAULT_CACHE_ROOT}, as for extract)")
    args = parser.parse_args(argv)
    infos = list_caches(args.root)
    if not infos:
        print(f"no stores under {args.root}")
        return 0
    for info in infos:
        print(f"{info.fingerprint}  created {info.created}  {_human(info.bytes_on_disk)}  {info.path}")
        print(f"  models: {info.model_ids if info.model_ids is not None else '-'}"
              f"  timesteps: {', '.join(map(str, info.timesteps)) or '-'}")
        for array_id in info.array_ids:
            print(f"  {array_id:<40} {info.n_done[array_id]:>9} / {info.n_planned} done")
        if not info.array_ids:
            print(f"  (no arrays yet; {info.n_planned} keys planned)")
    return 0


def verify_main(argv: Sequence[str] | None = None) -> int:
    """Check every shard of STORE (completeness, checksums, shape, dtype, NaN/Inf); 1 on any problem,
    2 (usage) when STORE is not a directory."""
    parser = argparse.ArgumentParser(prog="verify", description=verify_main.__doc__)
    parser.add_argument("store", help="a store directory (<cache root>/<fingerprint>)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="do not report planned shards that are not written yet")
    args = parser.parse_args(argv)
    if not Path(args.store).is_dir():
        parser.error(f"{args.store} is not a directory")  # exit status 2, as for any bad argument
    problems = verify_store(args.store, require_complete=not args.allow_incomplete)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{args.store}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0
