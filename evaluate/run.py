"""A finished training run rebuilt for inference: its config, adapter, LLM and tokenizer, and a content hash.

The trainer leaves `<run>/train_config.json` and `<run>/final/` (`adapter.safetensors`, plus `llm/` when
the LLM trained); a stage-1 run keeps the LLM it was given (`model` in its config).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stages.errors import UserError
from stages.models import resolve_model_dir
from train.config import TrainConfig, load_run_config
from train.engine import resolve_precision
from train.fusion import load_adapter
from train.loop import FINAL_DIR
from train.model import ADAPTER_FILE, LLM_DIR, LlavaModel, load_llm, load_tokenizer

__all__ = ["RunError", "TrainedRun", "content_hash", "default_device"]


class RunError(UserError, FileNotFoundError):
    """A run directory that cannot be evaluated (the message says why)."""


def content_hash(files: list[Path]) -> str:
    """sha256 over each file's name and bytes, in the given order."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _weights(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin"))


def _check_llm(adapter_file: Path, adapter_config: dict, llm_source: str) -> None:
    """Refuse, before loading its weights, an LLM whose width is not the one the adapter was trained for."""
    from transformers import AutoConfig

    hidden = int(AutoConfig.from_pretrained(resolve_model_dir(llm_source)).hidden_size)
    if int(adapter_config["hidden_size"]) != hidden:
        raise RunError(f"{adapter_file} was trained for the LLM {adapter_config.get('llm')!r} (hidden size "
                       f"{adapter_config['hidden_size']}), but the run's LLM {llm_source!r} has hidden size "
                       f"{hidden}: a checkpoint from another LLM")


@dataclass(frozen=True)
class TrainedRun:
    path: Path
    config: TrainConfig
    model: LlavaModel  # eval mode, on `device`
    tokenizer: Any
    checkpoint_hash: str  # the adapter's and the LLM's weights
    device: torch.device

    @classmethod
    def load(cls, run_dir: str | Path, *, device: torch.device | None = None) -> "TrainedRun":
        path = Path(run_dir)
        config = load_run_config(path)
        adapter_file = path / FINAL_DIR / ADAPTER_FILE
        if not adapter_file.is_file():
            raise RunError(f"{path} has no {FINAL_DIR}/{ADAPTER_FILE}: the run has not finished "
                           f"(resume it with `just train-{config.stage} config=... resume=true`)")
        trained_llm = path / FINAL_DIR / LLM_DIR
        llm_source = str(trained_llm) if trained_llm.is_dir() else config.model
        device = device or default_device()
        adapter, adapter_config = load_adapter(adapter_file)
        _check_llm(adapter_file, adapter_config, llm_source)
        bf16 = device.type == "cuda" and resolve_precision(config.precision) == "bf16"
        llm = load_llm(llm_source, dtype=torch.bfloat16 if bf16 else torch.float32)
        model = LlavaModel(llm=llm, adapter=adapter.to(llm.dtype), adapter_config=adapter_config,
                           max_length=config.max_length)
        weights = _weights(trained_llm if trained_llm.is_dir() else resolve_model_dir(config.model))
        return cls(path=path, config=config, model=model.to(device).eval(), tokenizer=load_tokenizer(llm_source),
                   checkpoint_hash=content_hash([adapter_file, *weights]), device=device)

    @property
    def name(self) -> str:
        return self.path.name
