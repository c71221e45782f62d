"""`python -m train.cli {pretrain,sft} [key=value ...]` (the `just train-pretrain|train-sft` recipes).

    pretrain [key=value ...]   stage 1: LLM frozen, adapter trained (default configs/train/sample-pretrain.yaml)
    sft [key=value ...]        stage 2: LLM + adapter, question-guided SD (default configs/train/sample-sft.yaml)
    STAGE --dry-run [key=value ...] [--world-size N] [--plan-json FILE] [--gpu NAME] [--utilization U]
                               the plan only: samples, steps, FLOPs, bytes read (train/plan.py)
    --verbose                  (anywhere) also what DeepSpeed and Hugging Face print, otherwise kept back

`config=PATH` picks another YAML (configs/train/pretrain.yaml, sft.yaml for the real LLaVA-1.5 runs);
any field is a dotted override: `lr=2e-3 data.num_workers=4 guidance.scale=0`.
Run from the repository root (config paths are relative to it). An `output_dir` with checkpoints is
resumed from the latest (one line says so); `overwrite=true` starts it over. Exit status 2: a setup
problem (bad config, missing cache store or DeepSpeed JSON, missing stage-1 adapter, a checkpoint this
run cannot resume, `resume=true` with no checkpoint, a finished run with none), printed as one message
naming the fix (a `stages.errors.UserError`); 130: interrupted (Ctrl-C), with the steps run and one line
saying how to resume from the last checkpoint; anything else is a failed run or a bug: exit status 1
with its traceback.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

if __name__ == "__main__":  # `python -m train.cli`: run the module as imported, so that a Ctrl-C during the
    from stages.errors import run_main  # imports below (seconds) is one line and exit status 130 too

    run_main("train.cli", prog="train", fast_exit=True)

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from stages.console import status, take_verbose  # noqa: E402
from stages.errors import INTERRUPTED, USAGE_ERROR, UserError, print_user_error  # noqa: E402
from stages.llava import load_llava_json  # noqa: E402
from stages.serving import CachedFeatures  # noqa: E402
from stages.writable import check_writable_dir  # noqa: E402
from train.batch import collate  # noqa: E402
from train.conditioning import GuidedFeatures, required_arrays  # noqa: E402
from train.config import STAGES, TrainConfig, VisionConfig, load_stage_config, save_run_config  # noqa: E402
from train.data import DataReport, LlavaDataset  # noqa: E402
from train.engine import check_engine_config, ensure_distributed, is_main_process, seed_everything  # noqa: E402
from train.loop import NonFiniteLoss, TrainingInterrupted, train  # noqa: E402
from train.metrics import StepMetrics  # noqa: E402
from train.model import ADAPTER_FILE, LLM_DIR, LlavaModel, build_model, load_tokenizer  # noqa: E402
from train.resume import FINAL_DIR, check_resume, run_outputs  # noqa: E402
from train.sampler import make_sampler  # noqa: E402
from train.stores import locate_stores, resolve_data_path, shard_cache  # noqa: E402
from train.trackers import check_tracker  # noqa: E402

__all__ = ["SetupError", "Prepared", "RunResult", "prepare", "run", "main"]

class SetupError(UserError, RuntimeError):
    """Something the user has to do before this stage can run (the message says what)."""


@dataclass(frozen=True)
class Prepared:
    """Everything `train()` needs, built and checked before the engine starts."""

    config: TrainConfig
    model: LlavaModel
    sampler: Any
    make_loader: Callable[[Any], DataLoader]
    prepare_features: Callable[[Mapping[str, Any]], Mapping[str, torch.Tensor]]
    tokenizer: Any
    dataset: LlavaDataset
    resume_from: Path | None  # the checkpoint in output_dir this run continues (None: it starts at step 0)


@dataclass(frozen=True)
class RunResult:
    stage: str
    history: tuple[StepMetrics, ...]
    saved: tuple[Path, ...]
    data: DataReport  # samples skipped for their image, trailing human turns dropped

    @property
    def samples_per_s(self) -> float:
        """Over the steps' own time (engine start-up excluded)."""
        if not self.history:
            return float("nan")
        samples = [m.samples_per_s for m in self.history]  # equal sample count per step
        return len(samples) / sum(1.0 / s for s in samples)

    def summary(self) -> str:
        if not self.history:
            return f"{self.stage}: nothing left to train; saved {', '.join(map(str, self.saved))}"
        first, last = self.history[0], self.history[-1]
        dropped = self.data.render()
        skipped = f", {dropped}" if dropped else ""
        nonfinite = sum(m.skipped for m in self.history)
        skipped += f", {nonfinite} micro-batches skipped (non-finite loss)" if nonfinite else ""
        saved = f"; saved {', '.join(map(str, self.saved))}" if self.saved else ""
        return (f"{self.stage}: {len(self.history)} steps (to step {last.step}), loss {first.loss:.4f} -> "
                f"{last.loss:.4f}, {self.samples_per_s:.1f} samples/s{skipped}{saved}")


def _check_adapter(config: TrainConfig) -> None:
    path = config.pretrained_adapter
    if path and not Path(path).is_file():
        raise SetupError(f"the stage-1 adapter {path} does not exist. Run stage 1 first (`just train-pretrain` "
                         "for the sample, `just train-pretrain config=configs/train/pretrain.yaml` for the real run) "
                         "or set pretrained_adapter=PATH (pretrained_adapter= starts from a fresh adapter)")


def _check_token_counts(vision: VisionConfig, source: Any) -> None:
    """A mode that fuses token by token needs one token count in every array it reads."""
    counts = {a: source.sample_shape(a)[0] for a in vision.array_ids}
    if vision.mode_spec.equal_tokens and len(set(counts.values())) > 1:
        raise SetupError(f"vision.mode={vision.mode} needs equal token counts, got {counts}; "
                         "extract the arrays on one token grid")


def _world() -> tuple[int, int]:
    dist = torch.distributed
    return (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)


def _loader_factory(config: TrainConfig, dataset: LlavaDataset, pad_token_id: int) -> Callable[[Any], DataLoader]:
    """Loaders with their own seeded generator: our samplers shuffle, the generator only seeds workers, and
    `iter()` then never draws from the global torch RNG (which prompt dropout uses and checkpoints restore)."""
    workers = config.data.num_workers
    if workers:  # batches travel as named shared memory, not as file descriptors handed over a socket by
        # multiprocessing's resource sharer, whose thread prints a traceback when Ctrl-C cuts a hand-over
        torch.multiprocessing.set_sharing_strategy("file_system")

    def make_loader(sampler: Any) -> DataLoader:
        return DataLoader(dataset, sampler=sampler, batch_size=config.per_device_batch_size, drop_last=True,
                          collate_fn=functools.partial(collate, pad_token_id=pad_token_id), num_workers=workers,
                          pin_memory=torch.cuda.is_available(), prefetch_factor=4 if workers else None,
                          generator=torch.Generator().manual_seed(config.seed), worker_init_fn=_ignore_ctrl_c)
    return make_loader


def _ignore_ctrl_c(worker_id: int) -> None:
    """Loader workers leave Ctrl-C (SIGINT to the whole foreground group) to the main process, which
    stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _device() -> torch.device:
    """The device the engine will use (DeepSpeed: cuda:LOCAL_RANK, else the CPU)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def prepare(config: TrainConfig, *, source: Any = None) -> Prepared:
    """Stores, tokenizer, dataset, sampler, model and feature hook; raises before any training on a bad setup.

    `source` replaces the cache stores of `config.data` (a `stages.serving.FeatureSource`, e.g. `SpecFeatures`
    computing the arrays from the images).
    """
    check_writable_dir(config.output_dir, setting="output_dir")
    _check_adapter(config)
    check_engine_config(config)
    check_tracker(config.report_to)
    vision, guidance = config.vision, config.guidance
    array_ids = required_arrays(vision, guidance)
    if source is None:
        source = CachedFeatures(locate_stores(config.data), array_ids=array_ids, cache=shard_cache(config.data))
        for reader in source.readers:  # object stores: download shards into the local cache ahead of the reads
            reader.prefetch()
    _check_token_counts(vision, source)
    data_path, _ = resolve_data_path(config.data.data_path)
    tokenizer = load_tokenizer(config.model)
    dataset = LlavaDataset(load_llava_json(data_path), template=config.template, tokenizer=tokenizer,
                           max_length=config.max_length, num_image_tokens=source.sample_shape(vision.token_array)[0],
                           feature_source=source, array_ids=array_ids, missing=config.data.missing)
    if len(dataset) == 0:
        raise SetupError(f"no samples of {data_path} can be trained on from {source!r}: {dataset.report.explain()}")
    ensure_distributed()
    world, rank = _world()
    sampler = make_sampler(config, dataset, world_size=world, rank=rank)
    resume_from = check_resume(config, sampler)
    seed_everything(config.seed)  # the adapter's initial weights
    if is_main_process():
        status(f"train {config.stage}", f"{len(dataset)} samples; loading {config.model} …")
    model = build_model(config, feature_dims={a: source.sample_shape(a)[-1] for a in vision.array_ids})
    hook = GuidedFeatures(vision=vision, guidance=guidance, source=source, device=_device())  # U-Net: on first use
    return Prepared(config=config, model=model, sampler=sampler, prepare_features=hook, tokenizer=tokenizer,
                    make_loader=_loader_factory(config, dataset, tokenizer.pad_token_id), dataset=dataset,
                    resume_from=resume_from)


def _say_how_it_starts(prepared: Prepared) -> None:
    """One line (stderr) when the run continues or replaces an earlier run in its output_dir, and one when
    samples were skipped for their image (data.missing=skip), with what fixes each cause."""
    config, report = prepared.config, prepared.dataset.report
    if report.skipped:
        print(f"train {config.stage}: data.missing=skip: {report.explain()}", file=sys.stderr)
    if prepared.resume_from is not None:
        print(f"train {config.stage}: resuming from {prepared.resume_from} (the run directory has checkpoints; "
              "overwrite=true starts over)", file=sys.stderr)
    elif config.overwrite and (earlier := run_outputs(config.output_dir)):
        print(f"train {config.stage}: overwrite=true: starting over, removing the earlier run's "
              f"{', '.join(p.name for p in earlier)} from {config.output_dir}", file=sys.stderr)


def run(prepared: Prepared) -> RunResult:
    """Train, then save the tokenizer beside the SFT LLM (so `final/llm/` loads with `from_pretrained`)."""
    config = prepared.config
    if is_main_process():
        _say_how_it_starts(prepared)
        save_run_config(config)
    with_llm = not config.freeze_llm

    def save_tokenizer(final: Path) -> None:  # part of the final save: a Ctrl-C there is an interruption too
        prepared.tokenizer.save_pretrained(final / LLM_DIR)

    history = train(config=config, model=prepared.model, sampler=prepared.sampler,
                    make_loader=prepared.make_loader, prepare_features=prepared.prepare_features,
                    finish_final=save_tokenizer if with_llm else None)
    final = Path(config.output_dir) / FINAL_DIR
    saved = [final / ADAPTER_FILE, *([final / LLM_DIR] if with_llm else [])]
    return RunResult(stage=config.stage, history=tuple(history), saved=tuple(saved),
                     data=prepared.dataset.report)


def _interrupted(prepared: Prepared, exc: TrainingInterrupted) -> int:
    """Ctrl-C: the steps run (stdout) and one line saying how to resume (stderr); exit status 130."""
    config = prepared.config
    if not is_main_process():
        return INTERRUPTED
    if exc.history:
        print(RunResult(stage=config.stage, history=tuple(exc.history), saved=tuple(filter(None, [exc.checkpoint])),
                        data=prepared.dataset.report).summary())
    if exc.checkpoint is None:
        how = "no checkpoint was saved yet (save_every sets how often): run the same command to start again"
    elif exc.step == exc.total and exc.checkpoint.name.endswith(f"{exc.total:08d}"):  # in the final save
        how = (f"the final save ({FINAL_DIR}/) was cut short: run the same command"
               f"{' without overwrite=true' if config.overwrite else ''} to write it from {exc.checkpoint.name}")
    else:  # run again with overwrite=true, it would start over
        how = (f"run the same command{' without overwrite=true' if config.overwrite else ''} to resume from "
               f"{exc.checkpoint.name}")
    print(f"train {config.stage}: interrupted at step {exc.step} of {exc.total}; {how}", file=sys.stderr)
    return INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    argv = take_verbose(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        print(__doc__, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else USAGE_ERROR
    stage = argv[0]
    if "--dry-run" in argv:  # the plan: samples, steps, FLOPs, bytes (train.plan); nothing trains
        from train.plan import main as plan_main

        return plan_main(stage, argv[1:])
    # the `deepspeed` launcher (without --no_local_rank) and torch.distributed.launch append --local_rank=N;
    # the rank comes from the LOCAL_RANK variable they also set
    overrides = [a for a in argv[1:] if not a.startswith(("--local_rank", "--local-rank"))]
    started = time.perf_counter()
    try:
        prepared = prepare(load_stage_config(stage, overrides))
        result = run(prepared)
    except UserError as exc:  # the message, not a traceback (e.g. a store found damaged while training on it)
        return print_user_error(f"train {stage}", exc)  # anything else is a bug and keeps its traceback
    except NonFiniteLoss as exc:  # the run failed (exit 1), for a reason one line says
        print(f"train {stage}: stopped: {exc}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:  # from the engine's start on
        return _interrupted(prepared, exc)
    except KeyboardInterrupt:  # before: config, stores, tokenizer, model, DeepSpeed's distributed start-up
        print(f"train {stage}: interrupted before training started; run the same command to start", file=sys.stderr)
        return INTERRUPTED
    if is_main_process():
        print(f"{result.summary()} ({time.perf_counter() - started:.1f} s in all)")
    return 0
