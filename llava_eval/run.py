"""A trained checkpoint rebuilt for inference: its run's config, adapter, LLM and tokenizer, and its content hash.

The trainer leaves `<run>/train_config.json`, `<run>/final/` and `<run>/checkpoints/step-N/`; both weights
folders hold `adapter.safetensors`, plus `llm/` when the LLM trained (a stage-1 run keeps the LLM it was
given: `model` in its config). A step folder's `deepspeed/` part (optimizer state, pickles) is never read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stages.errors import UserError
from stages.models import default_device, resolve_model_dir, resolve_precision
from stages.store.fingerprint import Fingerprint, weights_hash
from stages.store.layout import file_sha256
from train.config import RUN_CONFIG_FILE, TrainConfig, load_run_config
from train.engine import CHECKPOINTS_DIR
from train.fusion import AdapterConfig, load_adapter
from train.model import ADAPTER_FILE, LLM_DIR, LlavaModel, load_llm, load_tokenizer
from train.resume import FINAL_DIR

__all__ = ["RunError", "Checkpoint", "TrainedRun", "inference_dtype"]


class RunError(UserError, FileNotFoundError):
    """A run directory or checkpoint that cannot be evaluated (the message says why)."""


def inference_dtype(config: TrainConfig, device: torch.device) -> torch.dtype:
    """The run's training precision on CUDA; fp32 on the CPU, where bf16 matmuls are slow."""
    return resolve_precision(config.precision, device) if device.type == "cuda" else torch.float32


def _check_llm(adapter_file: Path, adapter_config: AdapterConfig, llm_source: str) -> None:
    """Refuse, before loading its weights, an LLM whose width is not the one the adapter was trained for."""
    from transformers import AutoConfig

    hidden = int(AutoConfig.from_pretrained(resolve_model_dir(llm_source)).hidden_size)
    if adapter_config.hidden_size != hidden:
        raise RunError(f"{adapter_file} was trained for the LLM {adapter_config.llm!r} (hidden size "
                       f"{adapter_config.hidden_size}), but the run's LLM {llm_source!r} has hidden size "
                       f"{hidden}: a checkpoint from another LLM")


@dataclass(frozen=True)
class Checkpoint:
    """The weights one evaluation reads: a run's `final/` or one of its `checkpoints/step-N/`."""

    run_dir: Path
    weights_dir: Path
    config: TrainConfig

    @classmethod
    def locate(cls, path: str | Path) -> "Checkpoint":
        """`<run>` (its `final/`), `<run>/final` or `<run>/checkpoints/step-N`; reads no weights."""
        path = Path(path)
        if path.name == FINAL_DIR and (path.parent / RUN_CONFIG_FILE).is_file():
            path = path.parent
        if path.parent.name == CHECKPOINTS_DIR and not (path / RUN_CONFIG_FILE).is_file():
            return cls(run_dir=path.parent.parent, weights_dir=path, config=load_run_config(path.parent.parent))
        return cls(run_dir=path, weights_dir=path / FINAL_DIR, config=load_run_config(path))

    @property
    def label(self) -> str:
        """`final` or the checkpoint's folder name (`step-00000024`)."""
        return self.weights_dir.name

    @property
    def adapter_file(self) -> Path:
        """The adapter's safetensors file; refused when the checkpoint has none."""
        adapter = self.weights_dir / ADAPTER_FILE
        if adapter.is_file():
            return adapter
        if self.label == FINAL_DIR:
            raise RunError(f"{self.run_dir} has no {FINAL_DIR}/{ADAPTER_FILE}: the run has not finished (run its "
                           f"`just train-{self.config.stage} ...` command again to resume it, or evaluate one of its "
                           f"{CHECKPOINTS_DIR}: run={self.run_dir / CHECKPOINTS_DIR}/step-N)")
        found = sorted(p.name for p in (self.run_dir / CHECKPOINTS_DIR).glob("step-*") if (p / ADAPTER_FILE).is_file())
        raise RunError(f"{self.weights_dir} is not a checkpoint with {ADAPTER_FILE} (the run's checkpoints: "
                       f"{', '.join(found) or 'none'})")

    @property
    def llm_source(self) -> str:
        """The checkpoint's own `llm/` when the LLM trained, else the LLM the run was given."""
        trained = self.weights_dir / LLM_DIR
        return str(trained) if trained.is_dir() else self.config.model

    def sha256(self) -> str:
        """The content hash of the weights an evaluation loads: the adapter file's bytes and the LLM folder's
        `weights_hash` (every file: weights, config, tokenizer; memoised per machine)."""
        return Fingerprint.from_fields({"adapter": file_sha256(self.adapter_file)[1],
                                        "llm": weights_hash(resolve_model_dir(self.llm_source))}).full


@dataclass(frozen=True)
class TrainedRun:
    checkpoint: Checkpoint
    model: LlavaModel  # eval mode, on `device`
    tokenizer: Any
    device: torch.device

    @classmethod
    def load(cls, checkpoint: Checkpoint, *, device: torch.device | None = None) -> "TrainedRun":
        config, llm_source = checkpoint.config, checkpoint.llm_source
        device = device or default_device()
        adapter, adapter_config = load_adapter(checkpoint.adapter_file)
        _check_llm(checkpoint.adapter_file, adapter_config, llm_source)
        llm = load_llm(llm_source, dtype=inference_dtype(config, device))
        model = LlavaModel(llm=llm, adapter=adapter.to(llm.dtype), adapter_config=adapter_config,
                           max_length=config.max_length)
        # a step folder's llm/ has no tokenizer (the trainer saves it beside final/llm/ only): the run's own then
        tokenizer = load_tokenizer(llm_source if Path(llm_source, "tokenizer_config.json").is_file() else config.model)
        return cls(checkpoint=checkpoint, model=model.to(device).eval(), tokenizer=tokenizer, device=device)

    @property
    def config(self) -> TrainConfig:
        return self.checkpoint.config

    @property
    def name(self) -> str:
        """`<run>/<checkpoint label>` (`sample-sft/final`): the model id of answer files."""
        return f"{self.checkpoint.run_dir.name}/{self.checkpoint.label}"
