"""`caches [ROOT] [--drop STORE ARRAY...] [--convert STORE feature_dtype=DTYPE]` and `verify STORE [--repair]`:
the store commands (wired into pipeline/cli.py)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Sequence

from stages.errors import UserError, print_user_error
from stages.locations import DEFAULT_CACHE_ROOT, REPO
from stages.store import COMPACT, CacheStore, StoreMeta, convert_store, list_caches
from stages.store.objects import as_location
from stages.store.meta import is_store
from stages.store.layout import StorePaths
from stages.store.repair import Problem, repair_store
from stages.store.sources import data_sources
from stages.store.verify import check_store

__all__ = ["caches_main", "verify_main", "extract_command", "extract_commands"]

CONFIGS = REPO / "configs" / "extract"


def _human(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def _drop(store: str, array_ids: Sequence[str]) -> int:
    """Remove arrays (zarr directory and completion records) from a store. `latents` only goes with every
    other array: the features were computed from it, and the SFT trainer's conditioned pass and later
    extractions (new names, timesteps) read it instead of encoding every image again."""
    from stages.cache_spec import LATENTS  # imports torch: only when dropping

    meta = StoreMeta.load(store, expect=None)
    unknown = sorted(set(array_ids) - set(meta.array_ids))
    if unknown:
        raise UserError(f"{store} has no array {unknown[0]!r}; its arrays: {', '.join(meta.array_ids) or 'none'}")
    kept = sorted(set(meta.array_ids) - set(array_ids))
    if LATENTS in array_ids and kept:
        raise UserError(f"{LATENTS} is what the arrays {', '.join(kept)} were computed from (the SFT trainer "
                        "and later extractions read it); drop it together with them, or remove the store")
    CacheStore(meta).drop_arrays(list(dict.fromkeys(array_ids)))
    print(f"dropped {', '.join(dict.fromkeys(array_ids))} from {store} (tars in wds/ still hold their members)")
    return 0


def _convert(store: str, setting: str) -> int:
    """Write STORE's features in a compact dtype into the store of that dtype beside it, from the values STORE
    holds (`stages.store.convert`); its latents are copied: they are never compact."""
    from stages.cache_spec import LATENTS  # imports torch: only when converting

    key, sep, dtype = setting.partition("=")
    if key != "feature_dtype" or not sep:
        raise UserError(f"--convert takes a store and feature_dtype=<{'|'.join(COMPACT)}>, got {setting!r}")
    meta = StoreMeta.load(store, expect=None)
    path = convert_store(store, dtype, features=[a for a in meta.array_ids if a != LATENTS])
    print(f"converted {store} to feature_dtype={dtype}: {path}")
    return 0


def caches_main(argv: Sequence[str] | None = None) -> int:
    """List the stores under ROOT: fingerprint, models, timesteps, arrays, done/planned, size, created;
    or drop arrays from one store; or convert a float16 store's features to a compact dtype."""
    parser = argparse.ArgumentParser(prog="caches", description=caches_main.__doc__)
    parser.add_argument("root", nargs="?", default=DEFAULT_CACHE_ROOT,
                        help=f"cache root (default: {DEFAULT_CACHE_ROOT}, as for extract)")
    parser.add_argument("--drop", nargs="+", metavar=("STORE", "ARRAY"),
                        help="remove these arrays (zarr data and completion records) from STORE")
    parser.add_argument("--convert", nargs=2, metavar=("STORE", "feature_dtype=DTYPE"),
                        help=f"write the features of float16 STORE as DTYPE ({', '.join(COMPACT)}) into the store "
                             "of that dtype beside it, without recomputing them (resumable)")
    args = parser.parse_args(argv)
    if args.drop and len(args.drop) < 2:
        parser.error("--drop needs a store and at least one array id")
    if args.drop or args.convert:
        try:
            return _drop(args.drop[0], args.drop[1:]) if args.drop else _convert(*args.convert)
        except UserError as exc:
            return print_user_error("caches", exc)
    if not as_location(args.root).is_dir():
        parser.error(f"{args.root} is not a directory (the cache root extract writes to: cache_root=...)")
    infos = list_caches(args.root)
    if not infos:
        print(f"no stores under {args.root}")
        return 0
    for info in infos:
        print(f"{info.fingerprint}  created {info.created}  {_human(info.bytes_on_disk)}  {info.path}")
        print(f"  models: {info.model_ids if info.model_ids is not None else '-'}"
              f"  timesteps: {', '.join(map(str, info.timesteps)) or '-'}")
        for array_id in info.array_ids:
            print(f"  {array_id:<40} {info.dtypes[array_id]:<14} {info.n_done[array_id]:>9} / {info.n_planned} done")
        for problem in info.problems:
            print(f"  damaged: {problem} (just verify {info.path} names the fix)")
        if not info.array_ids and not info.problems:
            print(f"  (no arrays yet; {info.n_planned} keys planned)")
    return 0


def _cache_spec_of(config: Path) -> dict | None:
    from pipeline.config import load_extract_config  # imports torch: only to name a fix
    from stages.cache_spec import spec_summary

    try:
        return spec_summary(load_extract_config([f"config={config}"]).spec)
    except UserError:
        return None


def extract_command(store: str | Path, *, config: str | None = None) -> str:
    """`just extract ...` that fills `store` again: `config` (the YAML a data set was extracted with) when it
    still makes this store, else the bundled config whose cache fields the store recorded (`cache_spec`
    attribute), else a placeholder for the user's."""
    store = as_location(store)
    spec = StoreMeta.load(store, expect=None).attrs.get("cache_spec")
    candidates = [*([Path(config)] if config else []), *sorted(CONFIGS.glob("*.yaml"))]
    found = next((c for c in candidates if spec is not None and c.is_file() and _cache_spec_of(c) == spec), None)
    name = ("<the config that made it>" if found is None
            else found.relative_to(REPO) if found.is_relative_to(REPO) else found)  # the recipes run in REPO
    return f"just extract config={name} cache_root={store.parent}"


_COMPUTED_BY_EXTRACT = {"record", "shard", "index", "extract"}  # fixes that end in a run computing shards again


def extract_commands(store: str | Path, problems: Sequence[Problem]) -> list[str]:
    """The `extract_command`s that compute again the shards `problems` name: one per data set recorded in
    the store (`stages.store.sources`: its YAML, files and image root) that holds such a shard, every data set
    for an array found damaged as a whole; `extract_command` alone for shards no record names (a store
    written before the records)."""
    needed = {p.shard for p in problems if p.fix in _COMPUTED_BY_EXTRACT}
    chosen = [s for s in data_sources(StorePaths(store)) if None in needed or needed & set(s.shards)]
    commands = [" ".join([extract_command(store, config=s.config), *map(shlex.quote, s.overrides())])
                for s in chosen]
    covered = {shard for s in chosen for shard in s.shards}
    return commands if chosen and (None in needed or needed <= covered) else [*commands, extract_command(store)]


def _fix_advice(store: str, problems: Sequence[Problem], *, repaired: bool) -> list[str]:
    """The commands that fix what is left, and what they cannot fix."""
    fixes = {p.fix for p in problems}
    repairable = {"record", "shard", "index", "file", "group"}
    steps = [] if repaired or not fixes & repairable else [f"just verify {store} --repair"]
    if fixes & _COMPUTED_BY_EXTRACT:
        steps += extract_commands(store, problems)
    lines = [f"to fix: {' && '.join(steps)}"] if steps else []
    manual = sum(p.fix == "none" for p in problems)
    if manual:
        lines.append(f"{manual} problem(s) have no automatic fix: extract the store again into a new cache_root")
    return lines


def _refuse_cache_root(path: Path) -> None:
    """A cache root given where a store is expected (`just verify cache`): a `UserError` listing its stores.
    A directory that is neither a store nor holds one is left to `check_store` (a store whose metadata
    is damaged is a problem it reports, not a usage error)."""
    if is_store(path):
        return
    stores = sorted(p.name for p in path.iterdir() if p.is_dir() and is_store(p))
    if stores:
        shown = ", ".join(stores[:5]) + (f" and {len(stores) - 5} more" if len(stores) > 5 else "")
        raise UserError(f"{path} is a cache root, not a store: it holds {len(stores)} store(s) ({shown}); verify one "
                        f"with `just verify {path / stores[0]}`, and list them with `just caches {path}`")


def verify_main(argv: Sequence[str] | None = None) -> int:
    """Check every shard of STORE (completeness, checksums, shape, dtype, NaN/Inf) and say the command that
    fixes what was found; 1 on any problem (with --repair: on any it could not fix), 2 (usage) when STORE
    is not a directory, or is a cache root (its stores are named)."""
    parser = argparse.ArgumentParser(prog="verify", description=verify_main.__doc__)
    parser.add_argument("store", help="a store directory (<cache root>/<fingerprint>)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="do not report planned shards that are not written yet")
    parser.add_argument("--repair", action="store_true",
                        help="withdraw the records of damaged shards (the next extract computes them again), "
                             "rewrite damaged index files the store proves, remove leftover temp files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not as_location(args.store).is_dir():
        parser.error(f"{args.store} is not a directory")  # exit status 2, as for any bad argument
    try:
        _refuse_cache_root(as_location(args.store))
    except UserError as exc:
        return print_user_error("verify", exc)
    problems = check_store(args.store, require_complete=not args.allow_incomplete, progress=not args.no_progress)
    for problem in problems:
        print(problem.message, file=sys.stderr)
    print(f"{args.store}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    repaired = args.repair and any(p.fix != "none" for p in problems)
    if repaired:
        for line in repair_store(args.store, problems):
            print(f"repaired: {line}")
    for line in _fix_advice(args.store, problems, repaired=repaired):
        print(line)
    unfixed = [p for p in problems if p.fix == "none" or not args.repair]
    return 1 if unfixed else 0
