"""Where a run stands, what a checkpoint records of it, and whether a run may continue from one.

Position is counted in optimizer steps. Step `s` reads micro-batches `[a·k, a·(k+1))` of epoch
`s // steps_per_epoch` (`k = s % steps_per_epoch`, `a` = gradient accumulation, a micro-batch =
`per_device_batch_size` samples of this rank), so the step alone says where the data stands; an
epoch's samples beyond the last whole optimizer step are not used.
A run directory with checkpoints is resumed (`overwrite=true` starts it over): from a checkpoint at step
`s` the sampler is repositioned there, optimizer, schedule and RNGs are restored, and the losses equal an
uninterrupted run's. A checkpoint records the config that trained it; a run changing more than
`train.config.RESUMABLE_CHANGES` is refused.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

from stages.config import ConfigError
from train.config import TrainConfig, config_changes
from train.engine import CHECKPOINTS_DIR, latest_checkpoint, read_checkpoint_state, save_checkpoint
from train.metrics import LOSS_PLOT, METRICS_FILE, TENSORBOARD_DIR, WANDB_DIR

__all__ = ["ResumableSampler", "FINAL_DIR", "total_steps", "position", "run_outputs", "resumable", "check_resume",
           "save_run_checkpoint"]

FINAL_DIR = "final"


class ResumableSampler(Protocol):
    """This rank's sample indices, deterministic in (seed, epoch); `train.sampler` implements it."""

    def __len__(self) -> int: ...  # samples left in the epoch on this rank

    def __iter__(self) -> Iterator[int]: ...

    def set_epoch(self, epoch: int) -> None: ...

    def state_dict(self, *, consumed: int) -> dict[str, Any]:
        """JSON-able position after `consumed` samples of the current epoch on this rank."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a `state_dict` position (and reject one from another seed/dataset/world size)."""
        ...


def total_steps(config: TrainConfig, *, batches_per_epoch: int) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps) for `batches_per_epoch` whole micro-batches per epoch."""
    per_epoch = batches_per_epoch // config.gradient_accumulation_steps
    if per_epoch == 0:
        raise ConfigError(f"the sampler yields {batches_per_epoch} micro-batches per epoch, fewer than "
                          f"gradient_accumulation_steps={config.gradient_accumulation_steps}")
    return per_epoch, config.max_steps or config.epochs * per_epoch


def position(sampler: ResumableSampler, *, epoch: int, consumed: int) -> dict[str, Any]:
    """Put the sampler at `consumed` samples into `epoch`; returns that position's state."""
    sampler.set_epoch(epoch)
    state = sampler.state_dict(consumed=consumed)
    sampler.load_state_dict(state)
    return state


def _schedule(config: TrainConfig, *, per_epoch: int, total: int) -> dict[str, int]:
    """The settings a checkpoint's step and sampler position are only meaningful under."""
    return {"per_device_batch_size": config.per_device_batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "steps_per_epoch": per_epoch, "total_steps": total}


def run_outputs(output_dir: str | Path) -> list[Path]:
    """What a run left in `output_dir`, and `overwrite=true` removes: checkpoints, final/, metrics.jsonl, the
    loss plot and the tracker's logs (`train_config.json` is rewritten by every run; evaluation results are
    keyed by the checkpoint they scored)."""
    root = Path(output_dir)
    return [root / name for name in (CHECKPOINTS_DIR, FINAL_DIR, METRICS_FILE, LOSS_PLOT, TENSORBOARD_DIR, WANDB_DIR)
            if (root / name).exists()]


def resumable(config: TrainConfig, sampler: ResumableSampler, *, per_epoch: int,
              total: int) -> tuple[Path, dict[str, Any]] | None:
    """(latest checkpoint, its trainer state) of the run in `config.output_dir`, which this run continues
    unless `config.overwrite`; raises where it cannot (another world size, seed, dataset, batch, schedule or
    config), where `resume=true` finds no checkpoint, and where a finished run (final/) has none."""
    if config.overwrite:
        return None
    checkpoint = latest_checkpoint(config.output_dir)
    if checkpoint is None:
        if config.resume:
            raise ConfigError(f"resume=true, but {config.output_dir} holds no checkpoint; drop resume=true to "
                              "start from scratch (or set output_dir to the run to continue)")
        if (Path(config.output_dir) / FINAL_DIR).exists():
            raise ConfigError(f"{config.output_dir} holds a finished run ({FINAL_DIR}/) but no checkpoint to "
                              "continue from; set overwrite=true to train it again from scratch, or another output_dir")
        return None
    fix = "go back to the checkpoint's settings, set overwrite=true to start over, or use a new output_dir"
    state = read_checkpoint_state(checkpoint)
    try:  # first: another world size also changes the steps per epoch, but is the cause to name
        sampler.load_state_dict(state["sampler"])  # rejects a different seed, dataset, world size, micro-batch
    except ConfigError as exc:
        raise ConfigError(f"cannot resume from {checkpoint}: {exc}; {fix}") from exc
    for key, value in _schedule(config, per_epoch=per_epoch, total=total).items():
        if state.get(key) != value:
            raise ConfigError(f"cannot resume from {checkpoint}: it was written with {key}={state.get(key)!r}, "
                              f"this run has {key}={value!r}; {fix}")
    changes = config_changes(state.get("config", {}), config)  # none recorded: a checkpoint from before
    if changes:
        raise ConfigError(f"cannot resume from {checkpoint}: this run changes {', '.join(changes)}; {fix}")
    return checkpoint, state


def check_resume(config: TrainConfig, sampler: ResumableSampler) -> Path | None:
    """The checkpoint `train()` will continue from (None: step 0); raises now, with no engine, where
    `train()` would refuse to start."""
    position(sampler, epoch=0, consumed=0)
    per_epoch, total = total_steps(config, batches_per_epoch=len(sampler) // config.per_device_batch_size)
    found = resumable(config, sampler, per_epoch=per_epoch, total=total)
    return found[0] if found else None


def save_run_checkpoint(engine: Any, config: TrainConfig, sampler: ResumableSampler, *, step: int, per_epoch: int,
                        total: int) -> None:
    """Save, recording how far into its epoch the sampler is as of `step` (the object itself runs ahead), the
    schedule and the config, which `resumable` checks."""
    epoch = (step - 1) // per_epoch  # the epoch the sampler is in now
    consumed = (step - epoch * per_epoch) * config.gradient_accumulation_steps * config.per_device_batch_size
    save_checkpoint(engine, output_dir=config.output_dir, step=step, with_llm=not config.freeze_llm,
                    state={"sampler": sampler.state_dict(consumed=consumed),
                           **_schedule(config, per_epoch=per_epoch, total=total), "config": asdict(config)},
                    keep=config.keep_checkpoints)
