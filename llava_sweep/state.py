"""What of a sweep is finished, judged by the identity of each output and never by a marker file, so that a
changed sweep does its work again and an unchanged one does nothing:

- an extraction job: a run of it would be a cache hit (`pipeline.driver.nothing_to_compute`, the run's own
  schedule on the store found by fingerprint);
- a training stage: its `final/` adapter exists, the config it recorded (`train_config.json`) is the one
  its overrides give now (the fields a resumed run may not change, `train.config.config_changes`), and the
  stage-1 adapter it started from is not newer than it;
- an evaluation: the result of every benchmark and setting exists for the checkpoint's identity
  (`llava_eval.cli.planned_results`, what `just eval` answers "exists" to).

A stage that cannot even be judged (its config is wrong) counts as not done: its command then says why.
"""
from __future__ import annotations

import shlex
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

from llava_sweep.spec import Stage
from stages.errors import UserError

if TYPE_CHECKING:
    from llava_eval.results import ResultFiles

__all__ = ["TrainingState", "extraction_done", "training_state", "eval_results", "eval_extractions"]


class TrainingState(NamedTuple):
    done: bool
    overrides: tuple[str, ...] = ()  # to add to the stage's command: overwrite=true when the run is stale
    why: str = ""  # why it trains from scratch


def extraction_done(overrides: Sequence[str]) -> bool:
    """Whether `just extract *overrides` has nothing left to compute."""
    from pipeline.config import load_extract_config
    from pipeline.driver import nothing_to_compute

    try:
        return nothing_to_compute(load_extract_config(overrides))
    except UserError:
        return False


def training_state(stage: Stage) -> TrainingState:
    """Whether a training stage is finished; if not, whether it resumes from its checkpoints (the trainer
    does that by itself) or starts over because its settings or its stage-1 adapter changed since."""
    from train.config import RUN_CONFIG_FILE, config_changes, load_run_config, load_stage_config
    from train.resume import FINAL_DIR
    from train.model import ADAPTER_FILE

    try:
        config = load_stage_config(stage.kind, stage.overrides)
        recorded = load_run_config(stage.output_dir) if (stage.output_dir / RUN_CONFIG_FILE).is_file() else None
    except UserError:
        return TrainingState(done=False)
    if recorded is None:
        return TrainingState(done=False)
    changes = config_changes(asdict(recorded), config)
    if changes:
        return TrainingState(False, ("overwrite=true",), f"its settings changed ({', '.join(changes)})")
    final = stage.output_dir / FINAL_DIR / ADAPTER_FILE
    if not final.is_file():
        return TrainingState(done=False)
    given = Path(config.pretrained_adapter) if config.pretrained_adapter else None
    if given is not None and given.is_file() and given.stat().st_mtime_ns > final.stat().st_mtime_ns:
        return TrainingState(False, ("overwrite=true",), f"{given} is newer than the run")
    return TrainingState(done=True)


def eval_results(overrides: Sequence[str]) -> list[ResultFiles]:
    """The result files an eval stage writes, keyed by the checkpoint's identity; raises a `UserError` when
    they cannot be known (the run is not trained, a store is missing)."""
    from llava_eval.cli import load_eval_config, planned_results

    return planned_results(load_eval_config(overrides))


def eval_extractions(overrides: Sequence[str]) -> list[list[str]]:
    """The `just extract` arguments that cache an eval stage's benchmark images, those with work left
    (what `just eval-extract` runs)."""
    from llava_eval.cli import extract_args, load_eval_config

    needed = [shlex.split(line) for line in extract_args(load_eval_config(overrides))]
    return [args for args in needed if not extraction_done(args)]
