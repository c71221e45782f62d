"""Running a sweep's items, its extraction jobs and stages, the same way here and on a cluster's node: the
commands an item still needs (none when its outputs' identity says it is done, `llava_sweep.state`), each
started by `launch`, the one place a command starts, its output appended to `<root>/logs/<item>.log`;
`run_item` runs one item, `run_items` several in order, one command at a time (the local runner), skipping
those after a failure.
"""
from __future__ import annotations

import functools
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, NamedTuple, Sequence

from llava_sweep.spec import STAGES, Sweep, SweepRun
from llava_sweep.state import eval_extractions, eval_results, extraction_done, training_state
from stages.errors import INTERRUPTED, UserError

__all__ = ["LOGS_DIR", "EXTRACT", "Launched", "Outcome", "launch", "items", "blocked", "run_item", "progress_line",
           "run_items"]

LOGS_DIR = "logs"
EXTRACT = "extract"  # `extract/<job name>` names an extraction job beside the stages


class Launched(NamedTuple):
    returncode: int
    last_error: str  # the last line the command wrote to stderr


def launch(command: Sequence[str], log: Path, *, forward_interrupt: bool = False) -> Launched:
    """Run `command` to its end in this process group, its stdout and stderr appended to `log`. A Ctrl-C
    reaches the command as well (a terminal signals the whole group): it is waited for while it saves its
    work and exits, then `KeyboardInterrupt` is raised here (also when the command alone was interrupted).
    `forward_interrupt`: an interrupt that reached this process alone (`ray.cancel` of the Ray task running
    here) is passed on to the command, each one once."""
    pressed: list[int] = []
    handled = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum)) if handled else None
    last = [b""]
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {shlex.join(command)}\n".encode())
            out.flush()
            with subprocess.Popen(list(command), stdout=out, stderr=subprocess.PIPE) as proc:
                copier = threading.Thread(target=_copy_stderr, args=(proc.stderr, out, last), daemon=True)
                copier.start()
                forwarded = 0
                while proc.poll() is None:  # not wait(): Ray's cancel runs the handler between bytecodes only
                    if forward_interrupt and len(pressed) > forwarded:
                        proc.send_signal(signal.SIGINT)
                        forwarded += 1
                    time.sleep(0.1)
                copier.join()
        returncode = proc.returncode
    finally:
        if handled:
            signal.signal(signal.SIGINT, previous)
    if pressed or returncode in (INTERRUPTED, -signal.SIGINT):
        raise KeyboardInterrupt
    return Launched(returncode, last[0].decode(errors="replace"))


def _copy_stderr(stderr: IO[bytes], out: IO[bytes], last: list[bytes]) -> None:
    """Copy a command's stderr into its log as it comes (O_APPEND: interleaved with its stdout), keeping
    its last non-empty line in `last[0]`."""
    for line in stderr:
        out.write(line)
        out.flush()
        last[0] = line.split(b"\r")[-1].strip() or last[0]  # a progress bar redraws with \r


@dataclass
class Outcome:
    """What became of a stage or extraction job in this invocation."""

    status: str  # done (finished before: nothing to do) | ran | failed | skipped
    seconds: float = 0.0
    reason: str = ""  # failed: the command's last stderr line; skipped: after which failure
    log: str = ""
    cause: str = ""  # failed: itself; skipped: the failed stage or job it needed
    node: str = ""  # on a cluster: the address of the node it ran on

    def describe(self) -> str:
        """The progress line's text once it is over."""
        if self.status in ("done", "skipped"):
            return "already done" if self.status == "done" else f"skipped, {self.reason}"
        where = f" on {self.node}" if self.node else ""
        return (f"{'finished' if self.status == 'ran' else 'FAILED'}{where} in {self.seconds:.1f} s"
                f"{f' ({self.reason})' if self.reason else ''}")


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _trainer(kind: str, args: Sequence[str], ranks: int) -> list[str]:
    """`just train-<kind>`, or with `ranks` > 1 `torchrun` starting that many on this node (`just train-ranks`)."""
    if ranks == 1:
        return _python("train.cli", kind, *args)
    return _python("torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m", "train.cli", kind,
                   *args)


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


def _commands(sweep: Sweep, name: str, ranks: int) -> tuple[list[list[str]], str]:
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
    return ([] if state.done else [_trainer(stage.kind, [*stage.overrides, *state.overrides], ranks)]), state.why


def items(sweep: Sweep, runs: Sequence[SweepRun]) -> list[tuple[str, tuple[str, ...]]]:
    """Every extraction job and stage of `runs` once, in the order they run (a stage after all it needs),
    with what each needs first."""
    jobs = dict.fromkeys(f"{EXTRACT}/{job}" for run in runs for job in run.extractions)
    stages = sorted(dict.fromkeys(s for run in runs for s in run.stages), key=lambda s: STAGES.index(
        sweep.stages[s].kind))  # stable: pretrainings, SFTs, evaluations, each in run order
    needs = {s: [*sweep.stages[s].after] for s in stages}
    for run in runs:
        for s in run.stages:
            needs[s] += [f"{EXTRACT}/{job}" for job in run.extractions]
    return [(job, ()) for job in jobs] + [(s, tuple(dict.fromkeys(needs[s]))) for s in stages]


def blocked(needed: Iterable[Outcome]) -> Outcome | None:
    """A skipped outcome when something needed failed or was skipped, else None."""
    failed = next((o for o in needed if o.status in ("failed", "skipped")), None)
    return None if failed is None else Outcome("skipped", reason=f"after failed {failed.cause}", cause=failed.cause)


def run_item(sweep: Sweep, name: str, started: Callable[[str], None], *, ranks: int = 1,
             forward_interrupt: bool = False) -> Outcome:
    """Run what extraction job or stage `name` still needs, its commands one after another to the first that
    fails (`started` is told when they start); its outcome. `ranks`: a training's processes (GPUs) on this
    node; `forward_interrupt`: see `launch`."""
    commands, why = _commands(sweep, name, ranks)
    if not commands:
        return Outcome("done")
    log = sweep.root / LOGS_DIR / f"{name}.log"
    started(f"started{f', from scratch: {why}' if why else ''} (log: {log})")
    begun = time.monotonic()
    for command in commands:
        returncode, last_error = launch(command, log, forward_interrupt=forward_interrupt)
        if returncode != 0:
            return Outcome("failed", time.monotonic() - begun, f"exit {returncode}: {last_error}", str(log),
                           cause=name)
    return Outcome("ran", time.monotonic() - begun, log=str(log))


def progress_line(since: float, name: str, text: str) -> str:
    """`[mm:ss] name: text`, the time since `since` (`time.time()` when the sweep started)."""
    elapsed = int(time.time() - since)
    return f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {name}: {text}"


def run_items(sweep: Sweep, todo: Sequence[tuple[str, tuple[str, ...]]], *, since: float,
              say: Callable[[str], None]) -> dict[str, Outcome]:
    """Run the extraction jobs and stages `todo` (`items`' order) here, one command at a time; the outcome
    of each (see the module doc)."""
    outcomes: dict[str, Outcome] = {}
    for name, needs in todo:
        line = functools.partial(progress_line, since, name)
        outcomes[name] = blocked(outcomes[n] for n in needs) or run_item(sweep, name, lambda text: say(line(text)))
        say(line(outcomes[name].describe()))
    return outcomes


