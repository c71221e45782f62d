"""What a sweep is, once its file is read (`llava_sweep.load.load_sweep`): runs, their stages, and the
extraction jobs they share. A sweep file (`configs/sweeps/*.yaml`) is a base of the public commands' configs
and axes over them; each combination of axis values is one run (extract → pretrain → SFT → eval).

```yaml
name: sample
root: runs/sweeps/sample        # stage outputs and the generated extraction YAMLs live under it
stages: [pretrain, sft, eval]   # what each run goes through, in this order (a subset of STAGES)
guidance_stage: sft             # the training stage the guidance axes set
base:
  extract: {sd: configs/extract/sample.yaml, clip: configs/extract/sample-clip.yaml}  # by encoder name; or
                                # by stage, when each reads other data: {sd: {pretrain: A.yaml, sft: B.yaml}}
  pretrain: configs/train/sample-pretrain.yaml
  sft: configs/train/sample-sft.yaml
  eval: configs/eval/sample.yaml
  overrides: {pretrain: [epochs=1], sft: [epochs=1], eval: [benchmarks=[mmvp]]}  # `key=value`, any stage
axes:                           # see AXES; an axis left out keeps the base configs' value
  feature: [U-L1-R1-B0-Cross-Q, U-L2-R2-Res-Out]
  timestep: [50, 200]
runs:                           # optional explicit runs, after the axes' product (which `axes: {}` empties)
  - {mode: clip, name: clip-baseline}
```

A run's name joins the labels of the axis values it sets (`U-L1-R1-B0-Cross-Q_t50`), so it is readable and
the same on every machine; an explicit run may name itself. Runs whose pretraining settings are equal share
one pretraining stage (e.g. runs differing only in SFT guidance), and the extraction settings of every run
that needs the same store (DESIGN §4: the fingerprint leaves out which arrays) become one extraction job
whose YAML lists the union of their feature names, timesteps and prompt sources: one `just extract` per
store, one U-Net pass per timestep tapping all names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from stages.config import ConfigError

__all__ = ["AXES", "STAGES", "TRAIN_STAGES", "ARRAY_FIELDS", "Axis", "Reservation", "Stage", "ExtractionJob", "SweepRun", "Sweep"]

STAGES = ("pretrain", "sft", "eval")
TRAIN_STAGES = ("pretrain", "sft")
# extraction fields that only choose arrays inside a store (not in the fingerprint): unioned per store
ARRAY_FIELDS = ("features", "timesteps", "prompt_sources")


@dataclass(frozen=True)
class Axis:
    """One axis: how a value is labelled in run names and which train-config fields it sets."""

    label: str  # str.format pattern of the value in run names
    doc: str

    def name(self, value: Any) -> str:
        return self.label.format(value)


AXES: Mapping[str, Axis] = {
    "encoder": Axis("{}", "the `base.extract` entry serving the SD array (sd, sdxl)"),
    "feature": Axis("{}", "the SD feature name of vision.sd_array (DESIGN §2)"),
    "timestep": Axis("t{}", "the timestep of vision.sd_array"),
    "mode": Axis("{}", "vision.mode: sd | clip | sd+clip-concat | sd+clip-xattn"),
    "guidance_scale": Axis("s{:g}", "guidance.scale of the guidance stage"),
    "prompt_source": Axis("{}", "guidance.prompt_source of the guidance stage: question | caption"),
    "prompt_dropout": Axis("d{:g}", "guidance.prompt_dropout of the guidance stage"),
}


@dataclass(frozen=True)
class Reservation:
    """What each training and evaluation stage reserves on one node: the sweep's `cluster` field."""

    gpus_per_run: int = 1  # also the trainer's ranks (`torchrun` when > 1); 0 on CPU nodes
    cpus_per_run: float = 1.0
    resources_per_run: dict[str, float] = field(default_factory=dict)  # custom (`ray start --resources`)

    def __post_init__(self) -> None:
        if self.gpus_per_run < 0 or self.cpus_per_run < 0:
            raise ValueError("cluster.gpus_per_run and cluster.cpus_per_run must be >= 0")
        if not isinstance(self.resources_per_run, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                for v in self.resources_per_run.values()):
            raise ValueError(f"cluster.resources_per_run must map Ray resource names to amounts > 0, got "
                             f"{self.resources_per_run!r}")

    @property
    def request(self) -> dict[str, float]:
        return {"CPU": self.cpus_per_run, "GPU": self.gpus_per_run, **self.resources_per_run}


@dataclass(frozen=True)
class Stage:
    """One command of one or more runs: `just <kind> *overrides` writing `output_dir`."""

    name: str  # `pretrain/NAME`, `sft/NAME`, `eval/NAME`: unique in the sweep
    kind: str  # a STAGES entry
    overrides: tuple[str, ...]  # `config=BASE` first, then the sweep's and the run's settings
    output_dir: Path  # the training run directory (eval: the run directory it scores)
    after: tuple[str, ...] = ()  # stages (or extraction jobs) that must finish first


@dataclass(frozen=True)
class ExtractionJob:
    """One store: `just extract config=PATH`, the YAML holding the union of its runs' arrays."""

    name: str
    path: Path  # the generated extraction YAML
    values: Mapping[str, Any]  # its contents
    runs: tuple[str, ...]

    @property
    def overrides(self) -> tuple[str, ...]:
        return (f"config={self.path}",)


@dataclass(frozen=True)
class SweepRun:
    name: str
    settings: Mapping[str, Any]  # axis -> value
    stages: tuple[str, ...]  # its `Stage.name`s in order
    extractions: tuple[str, ...]  # its `ExtractionJob.name`s


@dataclass(frozen=True)
class Sweep:
    name: str
    path: Path
    root: Path
    runs: tuple[SweepRun, ...]
    stages: Mapping[str, Stage]
    extractions: Mapping[str, ExtractionJob]
    cluster: Reservation  # what each stage reserves when the sweep runs on a Ray cluster
    values: Mapping[str, Any] = field(repr=False)  # the sweep file as read

    def run(self, name: str) -> SweepRun:
        for run in self.runs:
            if run.name == name:
                return run
        raise ConfigError(f"sweep {self.name} has no run {name!r}; runs: {[r.name for r in self.runs]}")

    def write_extraction_configs(self) -> None:
        """Write each job's YAML (what `just extract config=…` and the runs' `data.extract_configs` read)."""
        for job in self.extractions.values():
            job.path.parent.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(dict(job.values), sort_keys=False)
            if not job.path.is_file() or job.path.read_text() != text:
                job.path.write_text(text)
