"""`python -m pipeline.cli {extract,caches,verify}` (the `just extract|caches|verify` recipes).

    extract [key=value ...] [--ray-address auto|ray://host:10001] [--no-progress] [--verbose]
        fill the cache for configs/extract/sample.yaml, or `config=configs/extract/llava558k.yaml`
    extract --dry-run [key=value ...] [--plan-json FILE] [--gpu NAME] [--gpu-tflops X] [--utilization U]
        print (and write as JSON, by default to <cache_root>/plans/extract-<store>.json) what the run
        would compute, write and cost; starts nothing
    caches [ROOT]     list the stores under a cache root
    verify STORE      check every shard of a store

Overrides and flags come in any order. --verbose shows what third-party libraries print (Ray's worker logs,
warnings, weight-loading bars), which is otherwise kept off the terminal.

Exit status: 0 done; 1 the run failed (an extraction worker error: one line with the worker's exception,
shard and keys, and the log file holding the tracebacks; `verify` found problems); 2 a setup problem
(bad arguments or config, a missing model, data file or store, a store made from other inputs, an
unreachable Ray cluster, an unwritable cache root or --summary-json/--plan-json file), printed as one
message naming the fix, before anything is written; 130 interrupted (Ctrl-C): the summary of the
completed shards is printed (and written), and the same command resumes. Any other error is a bug and
keeps its traceback. --summary-json is checked before the run; should writing it fail after all, a
warning says so and the status is the run's.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Sequence

from pipeline import store_cli
from stages.console import add_overrides, parse_command_line, take_verbose
from stages.errors import INTERRUPTED, USAGE_ERROR, UserError, print_user_error
from stages.flops import add_budget_arguments, budget_from_arguments
from stages.store.objects import as_location
from stages.writable import check_writable_dir, check_writable_file

__all__ = ["main", "extract_main", "PLANS_DIR"]

PLANS_DIR = "plans"  # under the cache root: where `extract --dry-run` writes its plan unless --plan-json says


def extract_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="extract", description="Fill the feature cache (see docs/pipeline.md).")
    add_overrides(parser, help="config=PATH and any config field as key=value")
    parser.add_argument("--ray-address", default=None, help="auto or ray://host:10001 (default: embedded Ray)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--summary-json", default=None, help="also write the summary to this JSON file")
    parser.add_argument("--dry-run", action="store_true", help="plan only: images, bytes, GFLOP, GPU-hours")
    parser.add_argument("--plan-json", default=None, help="where --dry-run writes the plan "
                        f"(default: <cache_root>/{PLANS_DIR}/extract-<store>.json)")
    add_budget_arguments(parser)
    args = parse_command_line(parser, argv)
    overrides = list(args.overrides) + ([f"ray_address={args.ray_address}"] if args.ray_address else [])
    if args.dry_run:
        return _dry_run(overrides, args)

    from pipeline.config import load_extract_config
    from pipeline.driver import run_extract
    from pipeline.errors import ExtractionError

    try:
        if args.summary_json:  # checked now: the run's outcome must not hang on it afterwards
            check_writable_file(args.summary_json, setting="--summary-json")
        summary = run_extract(load_extract_config(overrides), show_progress=not args.no_progress)
    except UserError as exc:  # the message, not a traceback
        return print_user_error("extract", exc)
    except ExtractionError as exc:  # a worker failed: one line; the tracebacks are in the log it names
        print(f"extract: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before any shard was computed (later ones return an interrupted summary)
        print("extract: interrupted before any shard was computed; run the same command to start again",
              file=sys.stderr)
        return INTERRUPTED
    print(summary.render())
    if args.summary_json:
        _write_summary(Path(args.summary_json), summary.as_dict())
    if summary.interrupted:
        print(f"extract: interrupted after {summary.shards} shards ({summary.done} images) of this run; "
              "they are kept: run the same command to resume", file=sys.stderr)
        return INTERRUPTED
    return 0


def _write_summary(path: Path, summary: dict) -> None:
    """Write `--summary-json` (checked writable before the run) whole or not at all. It reports the run, it
    is not the run: should it fail even so (a full disk), one line says so and the exit status stays the
    run's (the store and its errors file hold everything the summary counts)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        print(f"extract: warning: the summary was not written to {path} ({exc.strerror or exc}); the run's "
              "result stands", file=sys.stderr)


def _dry_run(overrides: Sequence[str], args: argparse.Namespace) -> int:
    """Print the plan and write it as JSON (pipeline.plan): no Ray, no weights, no store written."""
    from pipeline.config import load_extract_config
    from pipeline.plan import plan_extract, write_plan

    try:
        config = load_extract_config(overrides)
        if args.plan_json:  # checked before planning; the default folder under the cache root likewise
            check_writable_file(args.plan_json, setting="--plan-json")
        else:
            check_writable_dir(as_location(config.run.cache_root) / PLANS_DIR, setting="the plan folder (--plan-json FILE "
                               "writes elsewhere)")
        plan = plan_extract(config, budget=budget_from_arguments(args))
    except UserError as exc:
        return print_user_error("extract", exc)
    print(plan.render())
    # named after the store it is for (`reference`: a model priced on its reference architecture, store unknown)
    store = as_location(plan.store).name if plan.store else "reference"
    path = args.plan_json or as_location(config.run.cache_root) / PLANS_DIR / f"extract-{store}.json"
    print(f"wrote {write_plan(plan, path)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = take_verbose(sys.argv[1:] if argv is None else argv)
    commands = {"extract": extract_main, "caches": store_cli.caches_main, "verify": store_cli.verify_main}
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return USAGE_ERROR
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
