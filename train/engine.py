"""The DeepSpeed ZeRO-2 engine on CPU and CUDA: distributed setup, config, optimizer, schedule, checkpoints.

One code path everywhere. On a CPU-only host `DS_ACCELERATOR=cpu`, gloo and fp32; on CUDA, nccl and
(by default) bf16. A single process not started by `deepspeed`/`torchrun` gets the rendezvous variables
of a world of one, on a free port. In a virtual environment DeepSpeed builds its ops into the venv, as
`./dev` has it do (`op_build_env`), whoever starts the process.

Checkpoints (`<output_dir>/checkpoints/step-XXXXXXXX/`, `latest` names the newest complete one):
`deepspeed/` (engine.save_checkpoint: module, ZeRO optimizer partitions, LR schedule), `adapter.safetensors`,
`llm/` (HF format, when the LLM trains), `trainer_state.json` (step, sampler position, batch and schedule settings) and
`rng-rank<r>.json` (torch/CUDA/numpy/python RNG states). The DeepSpeed part is torch pickle files that
DeepSpeed itself loads with `weights_only=False`: resume only from checkpoints you wrote.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from stages.config import ConfigError
from stages.console import held_output, status, verbose
from stages.models import default_device, resolve_precision
from stages.store.layout import write_json_atomic
from train.config import TrainConfig

__all__ = ["op_build_env", "ensure_distributed", "deepspeed_config", "check_engine_config",
           "param_groups", "cosine_with_warmup", "build_engine", "seed_everything", "save_checkpoint",
           "load_checkpoint", "latest_checkpoint", "read_checkpoint_state", "restore_rng", "is_main_process",
           "barrier", "CHECKPOINTS_DIR"]

CHECKPOINTS_DIR = "checkpoints"
_LATEST = "latest"
_DS_TAG = "deepspeed"
_STATE_FILE = "trainer_state.json"


def op_build_env(environ: Mapping[str, str], *, prefix: str, base_prefix: str) -> dict[str, str]:
    """The variables to set so that a process of the venv at `prefix` builds DeepSpeed's ops as `./dev`
    does: into `<prefix>/torch-extensions` unless `TORCH_EXTENSIONS_DIR` is set (the default ~/.cache
    folder is keyed by op name only, so two venvs rebuild each other's: ~1 minute on 2 cores), with the
    venv's ninja (its `bin` put first on PATH when missing: another ninja version rebuilds everything).
    None outside a venv (`prefix == base_prefix`)."""
    if prefix == base_prefix:
        return {}
    env = {}
    if "TORCH_EXTENSIONS_DIR" not in environ:
        env["TORCH_EXTENSIONS_DIR"] = str(Path(prefix) / "torch-extensions")
    path, bin_dir = environ.get("PATH", ""), str(Path(prefix) / "bin")
    if bin_dir not in path.split(os.pathsep):
        env["PATH"] = os.pathsep.join(filter(None, [bin_dir, path]))
    return env


def ensure_distributed() -> None:
    """Initialise torch.distributed through DeepSpeed once per process (gloo on CPU, nccl on CUDA)."""
    os.environ.update(op_build_env(os.environ, prefix=sys.prefix, base_prefix=sys.base_prefix))  # before the build
    cuda = torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")  # read when deepspeed is imported
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:  # not launched: a world of one
        # Its rendezvous stays in this process, and DeepSpeed adopts the group. A TCP store on a port picked
        # free and bound later could lose it to another run starting on the same host (EADDRINUSE), and
        # launcher variables exported here would make every process started from this one (a sweep's stage, a
        # Ray worker) a rank of this world. DeepSpeed's ZeRO code reads LOCAL_RANK from the environment.
        os.environ.setdefault("LOCAL_RANK", "0")
        torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
    import deepspeed

    ds_logger = logging.getLogger("DeepSpeed")  # its info logs (config, engine, ZeRO): with --verbose only
    for target in (ds_logger, *ds_logger.handlers):
        target.setLevel(logging.INFO if verbose() else logging.WARNING)
    with held_output():  # "DeepSpeed ... built successfully", printed by its CPU communication op's loader
        deepspeed.init_distributed(dist_backend=backend)


def is_main_process() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _fill(section: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Replace an 'auto' (or missing) entry with `value`; an explicit, different value is a conflict."""
    current = section.get(key, "auto")
    if current != "auto" and current != value:
        raise ConfigError(f"{where}.{key} is {current!r} but the train config says {value!r}; set it to \"auto\"")
    section[key] = value


def deepspeed_config(config: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed JSON named by the config with its "auto" entries filled from the train config."""
    path = Path(config.deepspeed_config)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {path} does not exist (see configs/deepspeed/)")
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        raise ConfigError(f"DeepSpeed config {path} is not readable JSON: {exc} (see configs/deepspeed/)") from None
    if not isinstance(ds, dict) or not isinstance(ds.get("bf16", {}), dict):
        raise ConfigError(f"DeepSpeed config {path} must hold a JSON object (with `bf16` an object, if given); "
                          "see configs/deepspeed/")
    ds.pop("train_batch_size", None)  # DeepSpeed derives it from micro batch × accumulation × world
    _fill(ds, "train_micro_batch_size_per_gpu", config.per_device_batch_size, path.name)
    _fill(ds, "gradient_accumulation_steps", config.gradient_accumulation_steps, path.name)
    _fill(ds, "gradient_clipping", config.max_grad_norm, path.name)
    bf16 = dict(ds.get("bf16", {}))
    _fill(bf16, "enabled", resolve_precision(config.precision, default_device()) == torch.bfloat16, f"{path.name}.bf16")
    ds["bf16"] = bf16
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError(f"{path}: optimizer and scheduler come from the train config, remove them from the JSON")
    ds["zero_allow_untested_optimizer"] = True  # a torch optimizer is passed in
    return ds


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters; no weight decay on biases and norm weights (ndim < 2), as HF's Trainer does."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    decay = [p for _, p in trainable if p.ndim >= 2]
    no_decay = [p for _, p in trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def check_engine_config(config: TrainConfig) -> None:
    """Raise what `build_engine` would on this host (DeepSpeed JSON missing or conflicting, FusedAdam
    without CUDA), so the CLI reports it before loading anything."""
    deepspeed_config(config)
    if config.optimizer == "fused_adam" and not torch.cuda.is_available():
        raise ConfigError("optimizer=fused_adam needs CUDA; use optimizer=adamw on CPU")


def _optimizer(name: str, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    if name == "fused_adam":
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, adam_w_mode=True)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def cosine_with_warmup(*, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear 0→1 over `warmup_steps`, then half a cosine to 0 at `total_steps` (HF's schedule)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
    return factor


def build_engine(model: nn.Module, config: TrainConfig, *, total_steps: int) -> Any:
    """`deepspeed.initialize` with a torch optimizer and a cosine-with-warmup LambdaLR (stepped per optimizer step)."""
    ensure_distributed()
    import deepspeed

    check_engine_config(config)
    optimizer = _optimizer(config.optimizer, param_groups(model, config.weight_decay), config.lr)
    warmup = math.ceil(config.warmup_ratio * total_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(total_steps=total_steps, warmup_steps=warmup))
    ds_config = deepspeed_config(config)
    if is_main_process():
        zero = ds_config.get("zero_optimization", {}).get("stage", 0)
        status(f"train {config.stage}", f"building the DeepSpeed engine (ZeRO-{zero}, "
               f"{torch.distributed.get_world_size()} rank(s)) …")
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config)
    return engine


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """Every RNG the step may touch, as plain JSON (no pickle)."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(words), gauss], "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _write_text(path: Path, text: str) -> None:
    """The `latest` pointer (plain text; the JSON files go through `write_json_atomic`)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints (0 keeps all)."""
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".partial"))
    for old in done[:-keep] if keep else []:
        shutil.rmtree(old)


def save_checkpoint(engine: Any, *, output_dir: str | Path, step: int, state: Mapping[str, Any],
                    with_llm: bool, keep: int = 0) -> Path:
    """Write checkpoint `step` (all ranks call this); it becomes `latest` only once complete, then
    older ones beyond the newest `keep` are deleted."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    final = root / f"step-{step:08d}"
    partial = root / f"step-{step:08d}.partial"
    if is_main_process():
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    barrier()
    frozen = any(not p.requires_grad for p in engine.module.parameters())
    engine.save_checkpoint(str(partial), tag=_DS_TAG, save_latest=False, exclude_frozen_parameters=frozen)
    write_json_atomic(partial / f"rng-rank{_rank()}.json", _rng_state())
    if is_main_process():
        engine.module.save_pretrained(partial, with_llm=with_llm)
        write_json_atomic(partial / _STATE_FILE, {"step": step, **state})
    barrier()
    if is_main_process():
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        _write_text(root / _LATEST, final.name)
        _prune(root, keep)
    barrier()
    return final


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under `output_dir`, or None."""
    pointer = Path(output_dir) / CHECKPOINTS_DIR / _LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / _STATE_FILE).is_file():
        raise ConfigError(f"cannot resume: {pointer} names {path.name}, which is missing or incomplete")
    return path


def load_checkpoint(engine: Any, path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore the engine (module, optimizer, schedule); returns (trainer state, this rank's RNG state).

    The caller applies the RNG state with `restore_rng` where an uninterrupted run stood at the save
    (`train.loop`: before or after building the epoch's data iterator, for loaders that draw on `iter()`).
    """
    path = Path(path)
    frozen = any(not p.requires_grad for p in engine.module.parameters())
    loaded, _ = engine.load_checkpoint(str(path), tag=_DS_TAG, load_module_strict=not frozen)
    if loaded is None:
        raise FileNotFoundError(f"DeepSpeed could not load {path / _DS_TAG}")
    rng_file = path / f"rng-rank{_rank()}.json"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file} missing: was the checkpoint written with a different world size?")
    return read_checkpoint_state(path), json.loads(rng_file.read_text())


def read_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's trainer state (step, sampler position, batch and schedule settings)."""
    return json.loads((Path(path) / _STATE_FILE).read_text())
