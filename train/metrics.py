"""What a training run reports per optimizer step: `StepMetrics`, appended to `<output_dir>/metrics.jsonl` and
(unless switched off) written as TensorBoard scalars under `<output_dir>/tensorboard/`, with a progress bar."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tqdm.auto import tqdm

from train.engine import is_main_process

__all__ = ["StepMetrics", "Reporter", "METRICS_FILE", "TENSORBOARD_DIR"]

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"  # under output_dir: `tensorboard --logdir runs/`


@dataclasses.dataclass(frozen=True)
class StepMetrics:
    step: int  # optimizer steps completed, 1-based
    epoch: int
    loss: float  # mean over micro-batches and ranks
    lr: float  # the rate this step used
    grad_norm: float  # before clipping
    samples_per_s: float
    tokens_per_s: float
    skipped: int = 0  # micro-batches left out for a non-finite loss (on_nonfinite=skip)


class Reporter:
    """Progress bar, metrics.jsonl and (unless switched off) TensorBoard scalars `train/<metric>`, on rank 0 only.

    A resumed run drops metric lines past its start step, and its TensorBoard writer purges the events past
    it (`purge_step`), so each step is logged exactly once.
    """

    def __init__(self, output_dir: Path, *, start_step: int, total: int, desc: str, tensorboard: bool) -> None:
        self.active = is_main_process()
        self.path = output_dir / METRICS_FILE
        self.bar = tqdm(total=total, initial=start_step, disable=not self.active, desc=desc, dynamic_ncols=True)
        self.board = None
        if not self.active:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        kept = []
        if start_step and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if line and json.loads(line)["step"] <= start_step]
        self.path.write_text("".join(line + "\n" for line in kept))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(output_dir / TENSORBOARD_DIR), purge_step=start_step + 1)

    def report(self, metrics: StepMetrics) -> None:
        if not self.active:
            return
        values = dataclasses.asdict(metrics)
        with self.path.open("a") as fh:
            fh.write(json.dumps(values) + "\n")
        if self.board is not None:
            for key, value in values.items():
                if key != "step":
                    self.board.add_scalar(f"train/{key}", value, metrics.step)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{metrics.loss:.4f}", lr=f"{metrics.lr:.2e}",
                             samples_s=f"{metrics.samples_per_s:.1f}", tokens_s=f"{metrics.tokens_per_s:.0f}")

    def flush(self) -> None:
        if self.board is not None:
            self.board.flush()

    def close(self) -> None:
        self.bar.close()
        if self.board is not None:
            self.board.close()
