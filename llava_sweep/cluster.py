"""`just sweep SWEEP --ray-address ADDR`: the same sweep with its stages on a Ray cluster (docs/sweep.md).

The extraction jobs run first, here, as the local runner runs them (each `just extract` the Ray Data job its
config makes it). Then every training and evaluation stage is one Ray task that reserves a run's share of a
node (the sweep's `cluster` field: GPUs, CPUs, custom resources) and does there what the local runner does
(`execution.run_item`: the commands still needed, each started by `execution.launch`; a training on several
GPUs under `torchrun`, one rank per GPU). A stage's task takes the outcomes of what it needs as arguments, so
Ray starts it once they exist: the runs proceed at once as far as the cluster's resources go, a shared
pretraining before its SFTs. The nodes run the sweep's commands in this directory, on the same paths: they
share the file system, as a multi-node extraction's nodes do. Skips, failures, the summary and Ctrl-C are the
local runner's: a Ctrl-C cancels the tasks, whose commands save their work and exit, then the sweep exits 130.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import ray

from llava_sweep.execution import EXTRACT, LOGS_DIR, Outcome, blocked, items, progress_line, run_item, run_items
from llava_sweep.spec import Reservation, Sweep, SweepRun
from stages.config import ConfigError
from stages.locations import REPO

__all__ = ["Cluster"]

# what a stage's command sees of the driver's environment besides the extraction's (`pipeline.job.PASSED_ENV`)
STAGE_ENV = ("OMP_NUM_THREADS", "TORCH_EXTENSIONS_DIR")


@ray.remote(max_retries=0)  # a lost node fails its stage: the same command resumes it (checkpoints)
def _stage(sweep: Sweep, name: str, ranks: int, cwd: str, since: float, *needed: Outcome) -> Outcome:
    """Stage `name` on the node Ray placed this task on, as the local runner runs it; the outcome names the node.
    Ray blocks SIGINT in its workers, a mask their children inherit: unblocked while the stage runs, so that
    the interrupt of a cancelled task reaches its command (`launch(forward_interrupt=True)`)."""
    def started(text: str) -> None:  # to the sweep's terminal through Ray's log forwarding
        print(progress_line(since, name, text), flush=True)

    os.chdir(cwd)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        outcome = blocked(needed) or run_item(sweep, name, started, ranks=ranks, forward_interrupt=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return dataclasses.replace(outcome, node=ray.get_runtime_context().get_node_id())


def _node_name(node_id: str) -> str:
    """A node's address and the start of its id (nodes may share an address)."""
    address = next((node["NodeManagerAddress"] for node in ray.nodes() if node["NodeID"] == node_id), "?")
    return f"{address}/{node_id[:8]}"


def _failure(exc: ray.exceptions.RayError) -> str:
    """The last line of a task's error: the exception raised in it, or why Ray lost it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


@dataclass(frozen=True)
class Cluster:
    """A connected Ray cluster and what each stage reserves on it."""

    reservation: Reservation

    @classmethod
    def connect(cls, address: str, sweep: Sweep, *, log_to_driver: bool) -> Cluster:
        """Join the cluster at `address` with the environment the stages need; a `ConfigError` when nothing
        answers there or no node holds a stage's reservation (Ray would wait for one forever)."""
        from pipeline.job import PASSED_ENV, actor_capacity, check_reachable

        reservation = sweep.cluster
        check_reachable(address)
        env = {k: os.environ[k] for k in (*PASSED_ENV, *STAGE_ENV) if k in os.environ}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        try:
            ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=log_to_driver,
                     logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from exc
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        if actor_capacity(nodes, reservation.request, actors=1) == 0:
            ray.shutdown()
            held = [{k: v for k, v in node.items() if k in reservation.request} for node in nodes]
            raise ConfigError(f"each stage reserves {reservation.request} on one node (the sweep's `cluster` "
                              f"field), but no node of the Ray cluster at {address} has that much: {held}")
        return cls(reservation)

    def run(self, sweep: Sweep, runs: Sequence[SweepRun], *, say: Callable[[str], None]) -> dict[str, Outcome]:
        """Run what `runs` still need: the extraction jobs here, then each stage as a task; the outcome of each."""
        since, todo = time.time(), items(sweep, runs)
        needs, refs, outcomes = dict(todo), {}, {}
        try:
            outcomes.update(run_items(sweep, [item for item in todo if item[0].startswith(f"{EXTRACT}/")],
                                      since=since, say=say))
            stage = _stage.options(num_cpus=self.reservation.cpus_per_run, num_gpus=self.reservation.gpus_per_run,
                                   resources=self.reservation.resources_per_run)
            shared = ray.put(sweep)
            for name, _ in todo:
                if name not in outcomes:
                    refs[name] = stage.remote(shared, name, max(1, self.reservation.gpus_per_run), os.getcwd(), since,
                                              *(refs[n] if n in refs else outcomes[n] for n in needs[name]))
            pending = list(refs)  # `items`' order: what a stage needs is handled before it
            while pending:
                ready, _ = ray.wait([refs[n] for n in pending], num_returns=len(pending), timeout=1.0)
                for name in [n for n in pending if refs[n] in ready]:
                    outcomes[name] = self._outcome(sweep, name, refs[name], outcomes, needs[name])
                    say(progress_line(since, name, outcomes[name].describe()))
                    pending.remove(name)
        except KeyboardInterrupt:
            running = [ref for name, ref in refs.items() if name not in outcomes]
            for ref in running:
                ray.cancel(ref)
            if running:
                ray.wait(running, num_returns=len(running))  # their commands save their work and exit first
            raise
        finally:
            ray.shutdown()
        return outcomes

    @staticmethod
    def _outcome(sweep: Sweep, name: str, ref: ray.ObjectRef, outcomes: dict[str, Outcome],
                 needs: Sequence[str]) -> Outcome:
        """The task's outcome; when it raised (or Ray lost it), skipped after what it needed that failed, else
        failed with the error's last line."""
        try:
            outcome = ray.get(ref)
            return dataclasses.replace(outcome, node=_node_name(outcome.node))
        except ray.exceptions.RayError as exc:
            return blocked(outcomes[n] for n in needs) or Outcome(
                "failed", reason=_failure(exc), log=str(sweep.root / LOGS_DIR / f"{name}.log"), cause=name)
