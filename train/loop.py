"""The training loop: DeepSpeed engine steps over a resumable sampler, with metrics and checkpoints.

Positions, what a checkpoint records and when a run continues from one: `train.resume`.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import Tensor

from train.batch import Batch
from train.config import TrainConfig
from train.engine import (barrier, build_engine, is_main_process, latest_checkpoint, load_checkpoint, restore_rng,
                          seed_everything)
from train.metrics import Reporter, StepMetrics
from train.model import LlavaModel
from train.resume import (FINAL_DIR, ResumableSampler, position, resumable, run_outputs, save_run_checkpoint,
                          total_steps)

__all__ = ["NonFiniteLoss", "TrainingInterrupted", "train", "default_prepare_features"]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the steps this call ran, and the checkpoint a rerun continues from."""

    def __init__(self, *, step: int, total: int, history: list[StepMetrics], checkpoint: Path | None) -> None:
        super().__init__(f"interrupted at step {step} of {total}")
        self.step, self.total, self.history, self.checkpoint = step, total, history, checkpoint


class _CtrlC:
    """While installed (main thread, default handler only), the first Ctrl-C stops training after the
    current step, a second one at once. A KeyboardInterrupt raised wherever the signal lands is lost when
    that is inside a callback whose errors Python prints and drops, such as logging's lock release after
    the fork that starts a DataLoader worker (seen: a traceback, then the run went on to its last step)."""

    def __init__(self) -> None:
        self.pressed = False
        self._installed = (threading.current_thread() is threading.main_thread()
                           and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        if self._installed:
            signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def raise_if_pressed(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)


class NonFiniteLoss(RuntimeError):
    """A non-finite loss or gradient norm: the run stops (checkpoints before it are intact)."""


def _nonfinite_arrays(features: Mapping[str, Tensor]) -> list[str]:
    return sorted(a for a, t in features.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))


def _nonfinite_message(what: str, *, step: int, batch: Batch, features: Mapping[str, Tensor]) -> str:
    keys = [k for k in batch.image_keys if k is not None]
    arrays = _nonfinite_arrays({**batch.features, **features})
    source = (f"feature arrays with NaN/Inf values: {arrays}; check the store with `just verify STORE`"
              if arrays else "no input feature is non-finite (the model diverged: lower lr, or on_nonfinite=skip)")
    return f"{what} at step {step}, batch with image keys {keys[:8]}{' ...' if len(keys) > 8 else ''}; {source}"


def default_prepare_features(batch: Batch) -> Mapping[str, Tensor]:
    """Cached features as they are (the SFT question conditioning replaces this hook)."""
    return batch.features


def _micro_step(engine: Any, batch: Batch, prepare: Callable[[Batch], Mapping[str, Tensor]], *, step: int,
                skip_nonfinite: bool) -> tuple[Tensor, Tensor, bool]:
    """Forward, backward and (at the accumulation boundary) the optimizer step; returns (loss, tokens,
    skipped). A non-finite loss raises `NonFiniteLoss`, or with `skip_nonfinite` contributes zero
    gradients (DeepSpeed still counts the micro-batch) and is left out of the loss."""
    batch = batch.to(engine.device)  # first: question guidance runs its U-Net on device tensors
    # a no-op unless a hook returns host tensors
    features = {k: v.to(engine.device, non_blocking=True) for k, v in prepare(batch).items()}
    out = engine(input_ids=batch.input_ids, labels=batch.labels, attention_mask=batch.attention_mask,
                 has_image=batch.has_image, features=features)
    loss, skipped = out.loss, not bool(torch.isfinite(out.loss))  # one host sync per micro-batch
    if skipped:
        if not skip_nonfinite:
            raise NonFiniteLoss(_nonfinite_message("non-finite loss", step=step, batch=batch, features=features))
        loss = sum(p.sum() for p in engine.module.parameters() if p.requires_grad) * 0.0
    engine.backward(loss)
    engine.step()  # applies the optimizer and the schedule only at the accumulation boundary
    return loss.detach().float(), out.tokens.detach().float(), skipped


def _train_step(engine: Any, batches: Iterator[Batch], *, accumulation: int, micro: int, step: int,
                skip_nonfinite: bool, prepare: Callable[[Batch], Mapping[str, Tensor]]) -> dict[str, float]:
    """Optimizer step `step`; loss averaged, samples and tokens summed over micro-batches and ranks."""
    lr = float(engine.get_lr()[0])  # before the step advances the schedule
    totals = torch.zeros(4, device=engine.device)  # loss, tokens, samples, skipped micro-batches
    for _ in range(accumulation):
        try:
            batch = next(batches)
        except StopIteration:
            raise RuntimeError("the data loader ended before the epoch's last optimizer step") from None
        if len(batch) != micro:  # positions are counted in whole micro-batches
            raise ValueError(f"loader gave a batch of {len(batch)}, per_device_batch_size is {micro}")
        loss, tokens, skipped = _micro_step(engine, batch, prepare, step=step, skip_nonfinite=skip_nonfinite)
        totals += torch.stack([loss / accumulation, tokens, torch.tensor(float(micro), device=engine.device),
                               torch.tensor(float(skipped), device=engine.device)])
    world = 1
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
        world = torch.distributed.get_world_size()
    norm = engine.get_global_grad_norm()
    loss, tokens, samples, skipped = totals.tolist()
    kept = accumulation * world - skipped  # with skips, the mean is over the micro-batches learned from
    if norm is not None and not math.isfinite(float(norm)):
        raise NonFiniteLoss(_nonfinite_message(f"non-finite gradient norm {float(norm)}", step=step, batch=batch,
                                               features={}))
    mean = loss / world if not skipped else (loss * accumulation / kept if kept else float("nan"))
    return {"loss": mean, "lr": lr,
            "grad_norm": float("nan") if norm is None else float(norm), "samples": samples, "tokens": tokens,
            "skipped": int(skipped)}


def train(
    *, config: TrainConfig, model: LlavaModel, sampler: ResumableSampler,
    make_loader: Callable[[ResumableSampler], Iterable[Batch]],
    prepare_features: Callable[[Batch], Mapping[str, Tensor]] = default_prepare_features,
    finish_final: Callable[[Path], None] | None = None,
) -> list[StepMetrics]:
    """Train `model` for the configured steps; returns the metrics of the steps this call ran.

    Continues from the latest checkpoint in `config.output_dir` (`train.resume.resumable`); with
    `config.overwrite` the earlier run's outputs (`run_outputs`) are removed first. `make_loader(sampler)`
    builds the batch iterable (a DataLoader with `sampler=sampler`, `batch_size=config.per_device_batch_size`
    and `train.batch.collate`) after the sampler has been positioned; it is called once per epoch and once on
    resume. `finish_final(final_dir)` (the main process) adds to the final save, e.g. the tokenizer. A Ctrl-C
    from the engine's start to the end of the final save raises `TrainingInterrupted`.
    """
    seed_everything(config.seed)
    position(sampler, epoch=0, consumed=0)
    per_epoch, total = total_steps(config, batches_per_epoch=len(sampler) // config.per_device_batch_size)
    found = resumable(config, sampler, per_epoch=per_epoch, total=total)
    if config.overwrite and is_main_process():
        for path in run_outputs(config.output_dir):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    barrier()
    start = int(found[1]["step"]) if found else 0
    history: list[StepMetrics] = []
    try:  # DeepSpeed's start-up and the checkpoint load take seconds: a Ctrl-C there is one too
        engine = build_engine(model, config, total_steps=total)
        rng = load_checkpoint(engine, found[0])[1] if found else None
        _steps(engine, config=config, sampler=sampler, make_loader=make_loader, prepare_features=prepare_features,
               start=start, per_epoch=per_epoch, total=total, rng=rng, history=history)
        if is_main_process():
            engine.module.save_pretrained(Path(config.output_dir) / FINAL_DIR, with_llm=not config.freeze_llm)
            if finish_final is not None:
                finish_final(Path(config.output_dir) / FINAL_DIR)
    except KeyboardInterrupt:
        raise TrainingInterrupted(step=history[-1].step if history else start, total=total, history=history,
                                  checkpoint=latest_checkpoint(config.output_dir)) from None
    return history


def _steps(engine: Any, *, config: TrainConfig, sampler: ResumableSampler,
           make_loader: Callable[[ResumableSampler], Iterable[Batch]],
           prepare_features: Callable[[Batch], Mapping[str, Tensor]], start: int, per_epoch: int, total: int,
           rng: Mapping[str, Any] | None, history: list[StepMetrics]) -> None:
    """Optimizer steps `start + 1 ... total`, each one's metrics appended to `history` and reported; `rng`
    (a resumed run's saved RNG states) is restored where the uninterrupted run stood at the save."""
    micro, accumulation = config.per_device_batch_size, config.gradient_accumulation_steps
    reporter = Reporter(Path(config.output_dir), start_step=start, total=total, desc=config.stage,
                        report_to=config.report_to, config=dataclasses.asdict(config))
    engine.train()
    ctrl_c, step = _CtrlC(), start
    try:
        while step < total:
            epoch, offset = divmod(step, per_epoch)
            position(sampler, epoch=epoch, consumed=offset * accumulation * micro)
            if rng is not None and offset == 0:  # an uninterrupted run built this epoch's iterator after the save
                restore_rng(rng)
                rng = None
            batches = iter(make_loader(sampler))
            if rng is not None:  # mid-epoch: after the iterator, whose creation the saved state already includes
                restore_rng(rng)
                rng = None
            for _ in range(min(per_epoch - offset, total - step)):
                started = time.perf_counter()
                done = _train_step(engine, batches, accumulation=accumulation, micro=micro, step=step + 1,
                                   skip_nonfinite=config.on_nonfinite == "skip", prepare=prepare_features)
                elapsed = time.perf_counter() - started
                step += 1
                history.append(StepMetrics(step=step, epoch=epoch, loss=done["loss"], lr=done["lr"],
                                           grad_norm=done["grad_norm"], samples_per_s=done["samples"] / elapsed,
                                           tokens_per_s=done["tokens"] / elapsed, skipped=done["skipped"]))
                reporter.report(history[-1])
                if step == total or (config.save_every and step % config.save_every == 0):
                    reporter.flush()  # the events up to a checkpoint survive a killed run
                    save_run_checkpoint(engine, config, sampler, step=step, per_epoch=per_epoch, total=total)
                ctrl_c.raise_if_pressed()
    finally:
        ctrl_c.restore()
        reporter.close()
