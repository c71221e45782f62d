"""The trainer's settings: one frozen dataclass tree, read from YAML plus `key=value` overrides.

`load_stage_config("pretrain", ["lr=2e-3", "vision.mode=sd+clip-concat"])` is the only way the
commands (`train.cli`, `train.plan`) build it; validation happens here, once, and nothing mutates it afterwards.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from stages.config import ConfigError, build_dataclass, load_config
from stages.llava import PROMPT_SOURCES, QUESTION
from stages.locations import REPO
from stages.store.layout import write_json_atomic
from stages.store.shard_cache import parse_size
from train.trackers import REPORT_TO
from train.vision_modes import VISION_MODES, VisionMode

__all__ = ["VisionConfig", "GuidanceConfig", "DataConfig", "TrainConfig", "STAGES", "PRECISIONS", "OPTIMIZERS",
           "MISSING_POLICIES", "STAGE_TEMPLATES", "RUN_CONFIG_FILE", "RESUMABLE_CHANGES", "config_changes",
           "save_run_config", "load_run_config", "DEFAULT_CONFIGS", "load_stage_config"]

STAGES = ("pretrain", "sft")
STAGE_TEMPLATES = {"pretrain": "plain", "sft": "v1"}  # DESIGN §6: plain for stage 1, Vicuna v1 for stage 2
PRECISIONS = ("auto", "fp32", "bf16")  # stages.models.resolve_precision's words; fp16 is for extraction only
OPTIMIZERS = ("adamw", "fused_adam")
MISSING_POLICIES = ("skip", "error")  # data.missing: a sample whose image the cache cannot serve (docs/training.md)
RUN_CONFIG_FILE = "train_config.json"  # beside a run's checkpoints: what evaluation rebuilds the run from
DEFAULT_CONFIGS = {"pretrain": REPO / "configs/train/sample-pretrain.yaml",
                   "sft": REPO / "configs/train/sample-sft.yaml"}
# how a run is executed and logged, not what it computes: the only fields a resumed run may change
RESUMABLE_CHANGES = ("output_dir", "resume", "overwrite", "save_every", "keep_checkpoints", "report_to",
                     "on_nonfinite", "gradient_checkpointing", "data.num_workers")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_finite(**values: float) -> None:
    """Every float setting is a finite number (`lr=.inf` and NaN pass `> 0` or fail it by accident)."""
    for name, value in values.items():
        _check(math.isfinite(value), f"{name} must be a finite number, got {value}")


@dataclass(frozen=True)
class VisionConfig:
    """Which cached arrays feed the LLM and how they are fused (`mode`: a `train.vision_modes` entry)."""

    mode: str = "sd"
    sd_array: str = "U-L1-R1-B0-Cross-Q@t50"  # array id in the store (DESIGN §4)
    clip_array: str = "CLIP-L-2"  # stages.encoders.clip.CLIP_ARRAY_ID
    projector: str = "mlp2x_gelu"
    xattn_dim: int = 0  # xattn fusion common width; 0 = the query (CLIP) array's channel count
    xattn_heads: int = 8

    def __post_init__(self) -> None:
        _check(self.mode in VISION_MODES, f"vision.mode {self.mode!r} is not one of {tuple(VISION_MODES)}")
        _check(self.xattn_dim >= 0 and self.xattn_heads > 0, "vision.xattn_dim must be >= 0, xattn_heads > 0")

    @property
    def mode_spec(self) -> VisionMode:
        """The `train.vision_modes` entry of `mode`."""
        return VISION_MODES[self.mode]

    def array_of(self, role: str) -> str:
        """The store array of a role ("sd" or "clip", `train.vision_modes.ROLES`)."""
        return {"sd": self.sd_array, "clip": self.clip_array}[role]

    @property
    def array_ids(self) -> tuple[str, ...]:
        """The store arrays this mode reads, in the order its fusion takes them."""
        return tuple(self.array_of(role) for role in self.mode_spec.reads)

    @property
    def token_array(self) -> str:
        """The array whose token count the LLM sees."""
        return self.array_of(self.mode_spec.tokens)


@dataclass(frozen=True)
class GuidanceConfig:
    """Prompt-conditioned features: X = X_u + scale·(X_c − X_u); prompt dropped with `prompt_dropout`."""

    scale: float = 0.0
    prompt_dropout: float = 0.0
    prompt_source: str = QUESTION

    def __post_init__(self) -> None:
        _check_finite(**{"guidance.scale": self.scale, "guidance.prompt_dropout": self.prompt_dropout})
        _check(self.scale >= 0, f"guidance.scale must be >= 0, got {self.scale}")
        _check(0 <= self.prompt_dropout <= 1, f"guidance.prompt_dropout must be in [0, 1], got {self.prompt_dropout}")
        _check(self.prompt_source in PROMPT_SOURCES,
               f"guidance.prompt_source {self.prompt_source!r} is not one of {PROMPT_SOURCES}")


@dataclass(frozen=True)
class DataConfig:
    """Where samples and their cached features come from."""

    data_path: str = ""  # LLaVA JSON, or embedded:sample-pretrain / embedded:sample-sft (the bundled sample)
    extract_configs: tuple[str, ...] = ()  # extraction YAMLs whose stores to read (found by fingerprint)
    cache_root: str = ""  # where those stores live; "" = each YAML's own cache_root
    stores: tuple[str, ...] = ()  # explicit cache store directories (in addition to extract_configs)
    cache_dir: str = ""  # local copies of object-store shards ("" = ~/.cache/diffusion-feature-cache/shards)
    cache_limit: str = ""  # at most this much there, e.g. "200GB" (LRU eviction); "" = no limit
    missing: str = "skip"  # an image the cache cannot serve: "skip" the sample (and count it) or "error"
    group_by_modality_length: bool = False
    num_workers: int = 0

    def __post_init__(self) -> None:
        _check(self.missing in MISSING_POLICIES,
               f"data.missing must be one of {MISSING_POLICIES}, got {self.missing!r}")
        _check(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")
        parse_size(self.cache_limit, setting="data.cache_limit")


@dataclass(frozen=True)
class TrainConfig:
    """One training stage. Batch = per_device_batch_size × gradient_accumulation_steps × world size."""

    stage: str = "pretrain"
    model: str = "embedded:tiny-llm"  # `embedded:<name>`, a local HF directory or a hub id
    pretrained_adapter: str = ""  # sft: the stage-1 adapter.safetensors to start from
    vision: VisionConfig = field(default_factory=VisionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    lr: float = 1e-3
    optimizer: str = "adamw"  # torch AdamW; fused_adam = DeepSpeed FusedAdam (CUDA only)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    epochs: int = 1
    max_steps: int = 0  # > 0 overrides epochs
    max_length: int = 2048
    seed: int = 0
    output_dir: str = "runs/pretrain"
    save_every: int = 0  # checkpoint every N optimizer steps; 0 = only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept on disk; 0 = keep all
    report_to: str = "tensorboard"  # also log metrics to: tensorboard | wandb | none (metrics.jsonl is always written)
    on_nonfinite: str = "stop"  # a NaN/Inf loss: "stop" the run naming step, keys and arrays; "skip" the micro-batch
    resume: bool = False  # require a checkpoint to continue from (one in output_dir is resumed anyway)
    overwrite: bool = False  # start over: remove output_dir's checkpoints, final/, metrics and TensorBoard logs
    gradient_checkpointing: bool = False
    deepspeed_config: str = "configs/deepspeed/zero2.json"
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU

    def __post_init__(self) -> None:
        _check(self.stage in STAGES, f"stage {self.stage!r} is not one of {STAGES}")
        _check(self.precision in PRECISIONS, f"precision {self.precision!r} is not one of {PRECISIONS}")
        _check(self.optimizer in OPTIMIZERS, f"optimizer {self.optimizer!r} is not one of {OPTIMIZERS}")
        _check_finite(lr=self.lr, weight_decay=self.weight_decay, warmup_ratio=self.warmup_ratio,
                      max_grad_norm=self.max_grad_norm)
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _check(self.weight_decay >= 0 and self.max_grad_norm >= 0, "weight_decay and max_grad_norm must be >= 0")
        _check(self.per_device_batch_size > 0 and self.gradient_accumulation_steps > 0,
               "per_device_batch_size and gradient_accumulation_steps must be > 0")
        _check(self.epochs > 0 or self.max_steps > 0, "set epochs > 0 or max_steps > 0")
        _check(min(self.max_steps, self.save_every, self.keep_checkpoints) >= 0,
               "max_steps, save_every and keep_checkpoints must be >= 0")
        _check(self.max_length > 0, f"max_length must be > 0, got {self.max_length}")
        _check(self.report_to in REPORT_TO, f"report_to must be one of {'|'.join(REPORT_TO)}, got {self.report_to!r}")
        _check(self.on_nonfinite in ("stop", "skip"),
               f"on_nonfinite must be 'stop' or 'skip', got {self.on_nonfinite!r}")
        _check(not (self.resume and self.overwrite),
               "resume=true continues the run in output_dir and overwrite=true starts it over: set one of them")

    @property
    def template(self) -> str:
        """The conversation template of the stage (`train.conversation.TEMPLATES`)."""
        return STAGE_TEMPLATES[self.stage]

    @property
    def freeze_llm(self) -> bool:
        """Stage 1 trains the projector only."""
        return self.stage == "pretrain"



def save_run_config(config: TrainConfig) -> Path:
    """Write the resolved config to `<output_dir>/train_config.json` (the main process calls this)."""
    path = Path(config.output_dir) / RUN_CONFIG_FILE
    write_json_atomic(path, asdict(config))
    return path


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"data": {"num_workers": 0}}` -> `{"data.num_workers": 0}` (dotted, as overrides name fields)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(trained: Mapping[str, Any], config: TrainConfig) -> list[str]:
    """`field=value (this run: value)` for each field `config` changes from `trained` (a config as a checkpoint
    or `train_config.json` records it), other than `RESUMABLE_CHANGES`; fields only one of them knows (another
    version) are not compared. What a resumed run may not change, and what makes a finished run stale."""
    before, now = (_flat(json.loads(json.dumps(v))) for v in (trained, asdict(config)))  # tuples as JSON has them
    return [f"{k}={before[k]!r} (this run: {now[k]!r})" for k in sorted(before.keys() & now.keys())
            if k not in RESUMABLE_CHANGES and before[k] != now[k]]


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The config a run was trained with, as `save_run_config` wrote it."""
    path = Path(run_dir) / RUN_CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no {RUN_CONFIG_FILE}: not a training run directory, or trained "
                          "before runs recorded their config (train it again)")
    values = json.loads(path.read_text())
    if "tensorboard" in values:  # recorded before `report_to` replaced it
        values["report_to"] = "tensorboard" if values.pop("tensorboard") else "none"
    return build_dataclass(TrainConfig, values, where=str(path))


def load_stage_config(stage: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """The stage's YAML (`config=` or the sample default) + overrides; the YAML's `stage` must match."""
    values = load_config(DEFAULT_CONFIGS[stage], overrides)
    declared = values.setdefault("stage", stage)
    if declared != stage:
        raise ConfigError(f"the config is for stage {declared!r}, but `{stage}` was run; use `train.cli {declared}`")
    return build_dataclass(TrainConfig, values, where="train config")
