"""`just sweep SWEEP [key=value ...] [--only RUN] [--no-progress] [--ray-address ADDR]`: the grid, run here,
one command at a time, or with `--ray-address` its stages on a Ray cluster (`llava_sweep.cluster`).

Each extraction job runs once (`just extract config=<job yaml>`), then the stages in dependency order, all
pretrainings, then all SFTs, then all evaluations (each caching its benchmark images first, as `just
eval-extract` does): every one a subprocess of its public command, its output appended to
`<root>/logs/<stage>.log` (`llava_sweep.execution`). What is finished is skipped by the identity of its
outputs (`llava_sweep.state`), so a second invocation of a finished sweep starts no process, a changed sweep
redoes what changed, and an interrupted training resumes from its checkpoints. A failing command fails its
stage and its runs; the stages after it are skipped, the others go on. The summary (printed, and
`<root>/summary.json`) lists the runs done, failed and skipped, each failure with its command's last stderr
line and its log.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import asdict
from typing import Callable, Sequence

from llava_sweep.execution import EXTRACT, LOGS_DIR, Outcome, items, run_items
from llava_sweep.load import load_sweep
from llava_sweep.spec import Sweep, SweepRun
from stages.console import add_overrides, parse_command_line
from stages.errors import INTERRUPTED, UserError, print_user_error

__all__ = ["LOGS_DIR", "SUMMARY_FILE", "run_sweep", "main"]

PROG = "sweep"
SUMMARY_FILE = "summary.json"


def run_sweep(sweep: Sweep, runs: Sequence[SweepRun], *, say: Callable[[str], None]) -> dict[str, Outcome]:
    """Run what `runs` still need, here; the outcome of each extraction job and stage."""
    return run_items(sweep, items(sweep, runs), since=time.time(), say=say)


def _run_status(run: SweepRun, outcomes: dict[str, Outcome]) -> tuple[str, str]:
    """(failed: one of its stages failed | skipped: one was skipped after a failed extraction job | done,
    the failed stage or job)."""
    for status in ("failed", "skipped"):
        found = next((outcomes[s] for s in run.stages if outcomes[s].status == status), None)
        if found is not None:
            return status, found.cause
    return "done", ""


def _summarize(sweep: Sweep, runs: Sequence[SweepRun], outcomes: dict[str, Outcome], seconds: float) -> dict:
    """Each run's status with the failure that stopped it (its reason and log), each stage's and job's
    outcome."""
    entries = {}
    for run in runs:
        status, cause = _run_status(run, outcomes)
        failure = {"cause": cause, "reason": outcomes[cause].reason, "log": outcomes[cause].log} if cause else {}
        entries[run.name] = {"status": status, "stages": list(run.stages), "extractions": list(run.extractions),
                             **failure}
    return {"sweep": sweep.name, "file": str(sweep.path), "root": str(sweep.root), "seconds": round(seconds, 1),
            "failed": any(o.status == "failed" for o in outcomes.values()), "runs": entries,
            "stages": {name: asdict(outcome) for name, outcome in outcomes.items()}}


def _render(summary: dict) -> str:
    runs, stages = summary["runs"], summary["stages"]
    named = {s: [n for n, r in runs.items() if r["status"] == s] for s in ("done", "failed", "skipped")}
    counts = {s: sum(o["status"] == s for o in stages.values()) for s in ("ran", "done", "failed", "skipped")}
    done = len(named["done"])
    lines = [f"sweep {summary['sweep']}: {done} run{'' if done == 1 else 's'} done, {len(named['failed'])} failed, "
             f"{len(named['skipped'])} skipped in {summary['seconds']:.1f} s ({len(stages)} stages and extraction "
             f"jobs: {counts['ran']} ran, {counts['done']} already done, {counts['failed']} failed, "
             f"{counts['skipped']} skipped)"]
    if named["done"]:
        lines.append(f"  done     {', '.join(named['done'])}")
    failures = [(n, r["cause"], r["reason"], r["log"]) for n, r in runs.items() if r["status"] == "failed"]
    failures += [(n, n, o["reason"], o["log"]) for n, o in stages.items()
                 if n.startswith(f"{EXTRACT}/") and o["status"] == "failed"]
    for name, cause, reason, log in failures:
        lines += [f"  failed   {name}: {'' if cause == name else f'{cause} '}{reason}", f"           log: {log}"]
    lines += [f"  skipped  {name}: after failed {runs[name]['cause']}" for name in named["skipped"]]
    return "\n".join(lines)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description="Run a sweep (docs/sweep.md).")
    parser.add_argument("sweep", help="the sweep file (configs/sweeps/*.yaml)")
    add_overrides(parser, help="key=value overrides of the sweep file (root=..., axes...)")
    parser.add_argument("--only", metavar="RUN", help="only this run (and the stages and jobs it needs)")
    parser.add_argument("--no-progress", action="store_true", help="no line per stage: the summary only")
    parser.add_argument("--ray-address", metavar="ADDR", help="run the training and evaluation stages on this Ray "
                        "cluster (auto, HOST:PORT, ray://HOST:PORT), each run's at once (docs/sweep.md)")
    return parse_command_line(parser, argv)


def main(argv: Sequence[str]) -> int:
    args = _parse(argv)
    try:
        return _main(args)
    except KeyboardInterrupt:  # the command running then saw it too, and has saved its work
        print(f"{PROG}: interrupted; run the same command to resume (finished stages are kept, an interrupted "
              "training continues from its last checkpoint)", file=sys.stderr)
        return INTERRUPTED


def _main(args: argparse.Namespace) -> int:
    try:
        sweep = load_sweep(args.sweep, args.overrides)
        runs = [sweep.run(args.only)] if args.only else list(sweep.runs)
        sweep.write_extraction_configs()
        if args.ray_address:
            from llava_sweep.cluster import Cluster

            run = Cluster.connect(args.ray_address, sweep, log_to_driver=not args.no_progress).run
        else:
            run = run_sweep
    except UserError as exc:
        return print_user_error(PROG, exc)
    started = time.monotonic()
    say = (lambda line: None) if args.no_progress else functools.partial(print, flush=True)
    summary = _summarize(sweep, runs, run(sweep, runs, say=say), time.monotonic() - started)
    path = sweep.root / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1))
    print(_render(summary))
    print(f"summary: {path}")
    return 1 if summary["failed"] else 0
