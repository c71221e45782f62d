"""`just sweep SWEEP [key=value ...] [--only RUN] [--no-progress]`: the grid, run here, one command at a time.

Each extraction job runs once (`just extract config=<job yaml>`), then the stages in dependency order, all
pretrainings, then all SFTs, then all evaluations (each caching its benchmark images first, as `just
eval-extract` does): every one a subprocess of its public command, its output appended to
`<root>/logs/<stage>.log`. What is finished is skipped by the identity of its outputs (`llava_sweep.state`),
so a second invocation of a finished sweep starts no process, a changed sweep redoes what changed, and an
interrupted training resumes from its checkpoints. A failing command fails its stage and its runs; the stages
after it are skipped, the others go on. The summary (printed, and `<root>/summary.json`) lists the runs done,
failed and skipped, each failure with its command's last stderr line and its log. `launch` is the one place a
command starts: a cluster dispatcher calls it on the node it reserved.
"""
from __future__ import annotations

import argparse
import functools
import json
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from llava_sweep.spec import STAGES, Sweep, SweepRun, load_sweep
from llava_sweep.state import eval_extractions, eval_results, extraction_done, training_state
from stages.errors import INTERRUPTED, UserError, print_user_error

__all__ = ["LOGS_DIR", "SUMMARY_FILE", "Launched", "Outcome", "launch", "run_sweep", "main"]

PROG = "sweep"
LOGS_DIR = "logs"
SUMMARY_FILE = "summary.json"
EXTRACT = "extract"  # `extract/<job name>` names an extraction job beside the stages


class Launched(NamedTuple):
    returncode: int
    last_error: str  # the last line the command wrote to stderr


def launch(command: Sequence[str], log: Path) -> Launched:
    """Run `command` to its end in this process group, its stdout and stderr appended to `log`. A Ctrl-C
    reaches the command as well (a terminal signals the whole group): it is waited for while it saves its
    work and exits, then `KeyboardInterrupt` is raised here (also when the command alone was interrupted)."""
    pressed = []
    handled = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum)) if handled else None
    last = b""
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {shlex.join(command)}\n".encode())
            out.flush()
            with subprocess.Popen(list(command), stdout=out, stderr=subprocess.PIPE) as proc:
                for line in proc.stderr:  # copied into the log as it comes (O_APPEND: interleaved with stdout)
                    out.write(line)
                    out.flush()
                    last = line.split(b"\r")[-1].strip() or last  # a progress bar redraws with \r
        returncode = proc.returncode  # waited for on leaving the `with`
    finally:
        if handled:
            signal.signal(signal.SIGINT, previous)
    if pressed or returncode in (INTERRUPTED, -signal.SIGINT):
        raise KeyboardInterrupt
    return Launched(returncode, last.decode(errors="replace"))


@dataclass
class Outcome:
    """What became of a stage or extraction job in this invocation."""

    status: str  # done (finished before: nothing to do) | ran | failed | skipped
    seconds: float = 0.0
    reason: str = ""  # failed: the command's last stderr line; skipped: after which failure
    log: str = ""
    cause: str = ""  # failed: itself; skipped: the failed stage or job it needed


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _eval_commands(overrides: Sequence[str]) -> list[list[str]]:
    """Nothing when every result of the checkpoint's identity exists; else the image extractions left and
    the evaluation (which, when even the results cannot be known, says why)."""
    try:
        if all(files.done() for files in eval_results(overrides)):
            return []
        extracts = [_python("pipeline.cli", "extract", "--no-progress", *args) for args in eval_extractions(overrides)]
    except UserError:
        extracts = []
    return [*extracts, _python("llava_eval.cli", "eval", *overrides)]


def _commands(sweep: Sweep, name: str) -> tuple[list[list[str]], str]:
    """The commands item `name` still needs (none: done) and a note on why it starts over."""
    kind, _, label = name.partition("/")
    if kind == EXTRACT:
        overrides = sweep.extractions[label].overrides
        return ([] if extraction_done(overrides) else [_python("pipeline.cli", "extract", "--no-progress",
                                                              *overrides)]), ""
    stage = sweep.stages[name]
    if stage.kind == "eval":
        return _eval_commands(stage.overrides), ""
    state = training_state(stage)
    return ([] if state.done else [_python("train.cli", stage.kind, *stage.overrides, *state.overrides)]), state.why


def _items(sweep: Sweep, runs: Sequence[SweepRun]) -> list[tuple[str, tuple[str, ...]]]:
    """Every extraction job and stage of `runs` once, in the order they run, with what each needs first."""
    jobs = dict.fromkeys(f"{EXTRACT}/{job}" for run in runs for job in run.extractions)
    stages = sorted(dict.fromkeys(s for run in runs for s in run.stages), key=lambda s: STAGES.index(
        sweep.stages[s].kind))  # stable: pretrainings, SFTs, evaluations, each in run order
    needs = {s: [*sweep.stages[s].after] for s in stages}
    for run in runs:
        for s in run.stages:
            needs[s] += [f"{EXTRACT}/{job}" for job in run.extractions]
    return [(job, ()) for job in jobs] + [(s, tuple(dict.fromkeys(needs[s]))) for s in stages]


def run_sweep(sweep: Sweep, runs: Sequence[SweepRun], *, say: Callable[[str], None]) -> dict[str, Outcome]:
    """Run what `runs` still need; the outcome of each extraction job and stage (see the module doc)."""
    started = time.monotonic()

    def note(name: str, text: str) -> None:
        elapsed = int(time.monotonic() - started)
        say(f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {name}: {text}")

    outcomes: dict[str, Outcome] = {}
    for name, needs in _items(sweep, runs):
        blocked = next((outcomes[n] for n in needs if outcomes[n].status in ("failed", "skipped")), None)
        if blocked is not None:
            outcomes[name] = Outcome("skipped", reason=f"after failed {blocked.cause}", cause=blocked.cause)
            note(name, f"skipped, after failed {blocked.cause}")
            continue
        commands, why = _commands(sweep, name)
        if not commands:
            outcomes[name] = Outcome("done")
            note(name, "already done")
            continue
        log = sweep.root / LOGS_DIR / f"{name}.log"
        note(name, f"started{f', from scratch: {why}' if why else ''} (log: {log})")
        begun = time.monotonic()
        for command in commands:
            returncode, last_error = launch(command, log)
            if returncode != 0:
                outcomes[name] = Outcome("failed", time.monotonic() - begun, f"exit {returncode}: {last_error}",
                                         str(log), cause=name)
                break
        else:
            outcomes[name] = Outcome("ran", time.monotonic() - begun, log=str(log))
        outcome = outcomes[name]
        note(name, f"{'finished' if outcome.status == 'ran' else 'FAILED'} in {outcome.seconds:.1f} s"
                   f"{f' ({outcome.reason})' if outcome.reason else ''}")
    return outcomes


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
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the sweep file (root=..., axes...)")
    parser.add_argument("--only", metavar="RUN", help="only this run (and the stages and jobs it needs)")
    parser.add_argument("--no-progress", action="store_true", help="no line per stage: the summary only")
    return parser.parse_args(argv)


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
    except UserError as exc:
        return print_user_error(PROG, exc)
    started = time.monotonic()
    say = (lambda line: None) if args.no_progress else functools.partial(print, flush=True)
    summary = _summarize(sweep, runs, run_sweep(sweep, runs, say=say), time.monotonic() - started)
    path = sweep.root / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1))
    print(_render(summary))
    print(f"summary: {path}")
    return 1 if summary["failed"] else 0
