"""What a training run reports per optimizer step: `StepMetrics`, appended to `<output_dir>/metrics.jsonl` (always:
the file reports and sweeps read) and sent to the run's tracker (`report_to`: TensorBoard, wandb or none,
`train.trackers`), with a progress bar; at the end, `<output_dir>/loss.png` plots the losses of metrics.jsonl."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from tqdm.auto import tqdm

from train.engine import is_main_process
from train.trackers import TENSORBOARD_DIR, WANDB_DIR, open_tracker

__all__ = ["StepMetrics", "Reporter", "METRICS_FILE", "LOSS_PLOT", "TENSORBOARD_DIR", "WANDB_DIR", "plot_losses"]

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"


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


def plot_losses(metrics: Path, out: Path, *, title: str) -> Path:
    """The loss of every step of a `metrics.jsonl` as a PNG (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker="." if len(rows) < 50 else None)
    ax.set(xlabel="optimizer step", ylabel="loss", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


class Reporter:
    """Progress bar, metrics.jsonl, the tracker's scalars `train/<metric>` and the loss plot, on rank 0 only.

    A resumed run drops metric lines past its start step (its tracker likewise: `train.trackers`), so each
    step is logged exactly once.
    """

    def __init__(self, output_dir: Path, *, start_step: int, total: int, desc: str, report_to: str,
                 config: Mapping[str, Any]) -> None:
        self.active = is_main_process()
        self.output_dir, self.desc = output_dir, desc
        self.path = output_dir / METRICS_FILE
        self.tracker = None
        if self.active:
            output_dir.mkdir(parents=True, exist_ok=True)
            kept = []
            if start_step and self.path.is_file():
                kept = [line for line in self.path.read_text().splitlines()
                        if line and json.loads(line)["step"] <= start_step]
            self.path.write_text("".join(line + "\n" for line in kept))
            self.tracker = open_tracker(report_to, output_dir, start_step=start_step, config=config,
                                        prog=f"train {desc}")
        self.bar = tqdm(total=total, initial=start_step, disable=not self.active, desc=desc, dynamic_ncols=True)

    def report(self, metrics: StepMetrics) -> None:
        if not self.active:
            return
        values = dataclasses.asdict(metrics)
        with self.path.open("a") as fh:
            fh.write(json.dumps(values) + "\n")
        if self.tracker is not None:
            self.tracker.log({f"train/{key}": value for key, value in values.items() if key != "step"}, metrics.step)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{metrics.loss:.4f}", lr=f"{metrics.lr:.2e}",
                             samples_s=f"{metrics.samples_per_s:.1f}", tokens_s=f"{metrics.tokens_per_s:.0f}")

    def flush(self) -> None:
        if self.tracker is not None:
            self.tracker.flush()

    def close(self) -> None:
        self.bar.close()
        if self.tracker is not None:
            self.tracker.close()
        if self.active and self.path.stat().st_size:
            plot_losses(self.path, self.output_dir / LOSS_PLOT, title=f"{self.output_dir.name}: {self.desc} loss")
