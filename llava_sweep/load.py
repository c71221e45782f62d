"""Reading a sweep file (the format: `llava_sweep.spec`) into a `Sweep`: the axes' product and explicit runs,
each run's stages (one pretraining for the runs whose pretraining settings are equal) and one extraction
job per store holding the union of the arrays its runs need.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from llava_sweep.spec import (ARRAY_FIELDS, AXES, STAGES, TRAIN_STAGES, ExtractionJob, Reservation, Stage, Sweep,
                              SweepRun)
from stages.cache_spec import CacheSpec
from stages.config import ConfigError, build_dataclass, load_config

__all__ = ["load_sweep"]


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of key=value strings")
    return tuple(value)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping")
    return dict(value)


def _settings(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The axes' product, then the explicit runs (each a mapping of axis values, `name`, `overrides`)."""
    axes = _mapping(values.get("axes", {}), "axes")
    unknown = sorted(set(axes) - set(AXES))
    if unknown:
        raise ConfigError(f"unknown sweep axes {unknown}; valid: {sorted(AXES)}")
    for axis, options in axes.items():
        if not isinstance(options, list) or not options:
            raise ConfigError(f"axes.{axis} must be a non-empty list")
    combos = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] if axes else []
    for index, run in enumerate(values.get("runs") or []):
        run = _mapping(run, f"runs[{index}]")
        unknown = sorted(set(run) - set(AXES) - {"name", "overrides"})
        if unknown:
            raise ConfigError(f"runs[{index}] has unknown fields {unknown}; valid: {sorted(AXES)}, name, overrides")
        combos.append(run)
    if not combos:
        combos.append({})  # no axes, no runs: the base alone
    return combos


def _run_name(setting: Mapping[str, Any], varying: Sequence[str]) -> str:
    """The labels of the axis values that differ between runs (all it sets when none does), or its own name."""
    if "name" in setting:
        return str(setting["name"])
    set_axes = [a for a in AXES if a in setting]
    return "_".join(AXES[a].name(setting[a]) for a in ([a for a in set_axes if a in varying] or set_axes)) or "base"


def _train_overrides(setting: Mapping[str, Any], kind: str, guidance_stage: str, base: Mapping[str, Any]) -> list[str]:
    """The overrides the axis values of `setting` make to a `kind` training config read as `base`."""
    out = []
    if "feature" in setting or "timestep" in setting:
        name, _, timestep = str(base.get("vision", {}).get("sd_array", "")).partition("@t")
        out.append(f"vision.sd_array={setting.get('feature', name)}@t{setting.get('timestep', timestep)}")
    if "mode" in setting:
        out.append(f"vision.mode={setting['mode']}")
    if kind == guidance_stage:
        for axis, key in (("guidance_scale", "scale"), ("prompt_source", "prompt_source"),
                          ("prompt_dropout", "prompt_dropout")):
            if axis in setting:
                out.append(f"guidance.{key}={setting[axis]}")
    return out


def _store_key(values: Mapping[str, Any]) -> str:
    """What decides the store: every extraction field but the arrays' and the run-time settings that do not
    change values (batch size, actors, devices)."""
    spec_fields = {f.name for f in dataclasses.fields(CacheSpec)} - set(ARRAY_FIELDS)
    kept = {k: v for k, v in values.items() if k in spec_fields or k in ("data", "image_root", "cache_root")}
    return json.dumps(kept, sort_keys=True, default=str)


def _merge_arrays(values: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Add `extra`'s feature names, timesteps and prompt sources to `values` (first-seen order)."""
    for key in ARRAY_FIELDS:
        merged = list(dict.fromkeys([*(values.get(key) or []), *(extra.get(key) or [])]))
        values[key] = sorted(merged) if key == "timesteps" else merged


class _Builder:
    """Turns the settings of each run into its stages and the sweep's extraction jobs."""

    def __init__(self, values: Mapping[str, Any], root: Path) -> None:
        base = _mapping(values.get("base"), "base")
        self.root = root
        self.extract_bases = _mapping(base.get("extract", {}), "base.extract")
        self.base_configs = {kind: base.get(kind) for kind in STAGES}
        overrides = _mapping(base.get("overrides", {}), "base.overrides")
        unknown = sorted(set(overrides) - {"extract", *STAGES})
        if unknown:
            raise ConfigError(f"base.overrides has unknown stages {unknown}; valid: extract, {', '.join(STAGES)}")
        self.base_overrides = {k: _strings(v, f"base.overrides.{k}") for k, v in overrides.items()}
        self.kinds = tuple(values.get("stages", STAGES))
        if not self.kinds or any(k not in STAGES for k in self.kinds) or list(self.kinds) != sorted(
                self.kinds, key=STAGES.index) or len(set(self.kinds)) != len(self.kinds):
            raise ConfigError(f"stages must be a non-empty ordered subset of {list(STAGES)}, got {self.kinds}")
        if self.kinds == ("eval",):
            raise ConfigError("stages: [eval] has no training stage to score")
        for kind in self.kinds:
            if not self.base_configs[kind] or not Path(self.base_configs[kind]).is_file():
                raise ConfigError(f"base.{kind} must name an existing config file, got {self.base_configs[kind]!r}")
        self.guidance_stage = values.get("guidance_stage", "sft")
        if self.guidance_stage not in TRAIN_STAGES:
            raise ConfigError(f"guidance_stage must be one of {TRAIN_STAGES}, got {self.guidance_stage!r}")
        self.stages: dict[str, Stage] = {}
        self.jobs: dict[str, dict[str, Any]] = {}  # store key -> extraction values
        self.job_runs: dict[str, list[str]] = {}

    def _config(self, kind: str, extra: Sequence[str]) -> dict[str, Any]:
        return load_config(self.base_configs[kind], [*self.base_overrides.get(kind, ()), *extra])

    def _extraction(self, encoder: str, arrays: Mapping[str, Any], run_overrides: Sequence[str], run: str,
                    kind: str) -> str:
        """The store key serving `encoder` to a `kind` stage, with `arrays` added (its job created or extended)."""
        base = self.extract_bases.get(encoder)
        if isinstance(base, Mapping):  # one extraction config per training stage
            base = base.get(kind)
        if base is None:
            raise ConfigError(f"run {run} needs base.extract.{encoder} (for {kind}); the sweep has "
                              f"{self.extract_bases}")
        values = load_config(base, [*self.base_overrides.get("extract", ()), *run_overrides])
        key = _store_key(values)
        if key not in self.jobs:
            self.jobs[key] = {**values, **{k: [] for k in ARRAY_FIELDS}}  # what the runs need, no more
            self.job_runs[key] = []
        _merge_arrays(self.jobs[key], arrays)
        if run not in self.job_runs[key]:
            self.job_runs[key].append(run)
        return key

    def _stores(self, values: Mapping[str, Any], setting: Mapping[str, Any], extract: Sequence[str],
                run: str, kind: str) -> list[str]:
        """The store keys a training config reads: the SD store with its array (and the prompt source
        guidance reads from the store rather than computing), the CLIP store."""
        from stages.serving import needs_unet_pass
        from train.vision_modes import VISION_MODES

        vision, guidance = values.get("vision", {}), values.get("guidance", {})
        mode = VISION_MODES.get(str(vision.get("mode", "sd")))
        if mode is None:
            raise ConfigError(f"run {run}: vision.mode {vision.get('mode')!r} is not one of {sorted(VISION_MODES)}")
        keys = []
        if "sd" in mode.reads:
            feature, _, timestep = str(vision.get("sd_array", "")).partition("@t")
            source = str(guidance.get("prompt_source", "question"))
            stored = mode.guided and float(guidance.get("scale", 0)) > 0 and not needs_unet_pass(source)
            keys.append(self._extraction(str(setting.get("encoder", "sd")),
                                         {"features": [feature], "timesteps": [int(timestep)],
                                          "prompt_sources": [source] if stored else []}, extract, run, kind))
        if "clip" in mode.reads:
            keys.append(self._extraction("clip", {}, extract, run, kind))
        return keys

    def build(self, setting: Mapping[str, Any], name: str) -> SweepRun:
        extra = _mapping(setting.get("overrides", {}), f"run {name} overrides")
        extra = {k: _strings(v, f"run {name} overrides.{k}") for k, v in extra.items()}
        trained = [k for k in self.kinds if k in TRAIN_STAGES]
        own = {kind: [*_train_overrides(setting, kind, self.guidance_stage, self._config(kind, ())),
                      *extra.get(kind, ())] for kind in trained}
        keys = {kind: self._stores(self._config(kind, own[kind]), setting, extra.get("extract", ()), name, kind)
                for kind in trained}
        stage_names: list[str] = []
        previous: str | None = None
        for kind in self.kinds:
            if kind == "eval":
                scored = self.stages[previous].output_dir
                stage = Stage(name=f"eval/{name}", kind="eval", output_dir=scored, after=(previous,),
                              overrides=(f"config={self.base_configs['eval']}", *self.base_overrides.get("eval", ()),
                                         f"run={scored}", *extra.get("eval", ())))
            else:
                shared = kind == "pretrain" and not extra.get("pretrain")
                label = self._pretrain_label(setting) if shared else name
                output_dir = self.root / kind / label
                adapter = [f"pretrained_adapter={self.stages[previous].output_dir / 'final' / 'adapter.safetensors'}"
                           ] if previous else []
                stage = Stage(name=f"{kind}/{label}", kind=kind, output_dir=output_dir,
                              after=(previous,) if previous else (),
                              overrides=(f"config={self.base_configs[kind]}", *self.base_overrides.get(kind, ()),
                                         *adapter,
                                         f"data.extract_configs=[{','.join(self._path(k) for k in keys[kind])}]",
                                         *own[kind], f"output_dir={output_dir}"))
            if stage.name in self.stages and self.stages[stage.name] != stage:
                raise ConfigError(f"two runs name the stage {stage.name} with other settings; name the runs apart")
            self.stages[stage.name] = stage
            stage_names.append(stage.name)
            previous = stage.name
        return SweepRun(name=name, settings=dict(setting), stages=tuple(stage_names),
                        extractions=tuple(self._job_name(k) for k in dict.fromkeys(sum(keys.values(), []))))

    def _pretrain_label(self, setting: Mapping[str, Any]) -> str:
        keep = [a for a in ("encoder", "feature", "timestep", "mode") if a in setting]
        if self.guidance_stage == "pretrain":
            keep += [a for a in ("guidance_scale", "prompt_source", "prompt_dropout") if a in setting]
        return "_".join(AXES[a].name(setting[a]) for a in keep) or "base"

    def _job_name(self, key: str) -> str:
        index = list(self.jobs).index(key)
        return f"{self.jobs[key].get('encoder', 'sd')}-{index}"

    def _path(self, key: str) -> str:
        return str(self.root / "extract" / f"{self._job_name(key)}.yaml")

    def extraction_jobs(self) -> dict[str, ExtractionJob]:
        return {self._job_name(k): ExtractionJob(name=self._job_name(k), path=Path(self._path(k)), values=v,
                                                 runs=tuple(self.job_runs[k])) for k, v in self.jobs.items()}


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> Sweep:
    """Read a sweep file (`root=…`, `stages=…` and other top-level fields may be overridden)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    values = load_config(path, overrides)
    unknown = sorted(set(values) - {"name", "root", "stages", "guidance_stage", "base", "axes", "runs", "cluster",
                                    "description"})
    if unknown:
        raise ConfigError(f"{path}: unknown sweep fields {unknown}")
    name = str(values.get("name", path.stem))
    root = Path(values.get("root", f"runs/sweeps/{name}"))
    builder = _Builder(values, root)
    settings = _settings(values)
    varying = [a for a in AXES if len({json.dumps(s.get(a), default=str) for s in settings}) > 1]
    runs, seen = [], set()
    for setting in settings:
        run_name = _run_name(setting, varying)
        if run_name in seen:
            raise ConfigError(f"{path}: two runs are named {run_name!r}; give the explicit runs a name")
        seen.add(run_name)
        runs.append(builder.build(setting, run_name))
    cluster = build_dataclass(Reservation, _mapping(values.get("cluster") or {}, "cluster"), where=str(path),
                              prefix="cluster.")
    return Sweep(name=name, path=path, root=root, runs=tuple(runs), stages=builder.stages,
                 extractions=builder.extraction_jobs(), cluster=cluster, values=values)
