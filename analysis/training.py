"""Training curves in `just inspect`: each run's `metrics.jsonl` (one line per optimizer step, the fields of
`train.metrics.StepMetrics`) drawn as loss, learning-rate and gradient-norm panels, a summary table of the
runs, and each run's `train_config.json` as its provenance (the LLM, the vision array and the extraction
YAML it reads, with their weights). Only these files are read: `analysis` does not import the trainer."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Sequence

import yaml

from analysis.outputs import RunDir
from analysis.plots import training_curves
from analysis.provenance import Provenance, model_line
from analysis.report import Section, Table
from stages.cache_spec import cache_spec_from_yaml
from stages.config import ConfigError
from stages.embedded import embedded_model
from stages.locations import REPO

__all__ = ["METRICS_FILE", "RUN_CONFIG_FILE", "CURVES", "sample_runs", "checked_runs", "run_model", "training_section"]

METRICS_FILE = "metrics.jsonl"  # train.metrics.METRICS_FILE
RUN_CONFIG_FILE = "train_config.json"  # train.config.RUN_CONFIG_FILE
CURVES = {"loss": "loss", "lr": "learning rate", "grad_norm": "gradient norm (before clipping)"}
SAMPLE_CONFIGS = ("configs/train/sample-pretrain.yaml", "configs/train/sample-sft.yaml")  # `just train-*`'s


def sample_runs() -> list[Path]:
    """The runs `just train-pretrain` and `just train-sft` write by default (their configs' `output_dir`)."""
    return [Path(yaml.safe_load((REPO / name).read_text(encoding="utf-8"))["output_dir"]) for name in SAMPLE_CONFIGS]


def checked_runs(runs: Sequence[str | Path]) -> list[Path]:
    """`runs` as paths; a folder without `metrics.jsonl` is a `ConfigError` (raised before any analysis runs)."""
    missing = [str(run) for run in runs if not (Path(run) / METRICS_FILE).is_file()]
    if missing:
        raise ConfigError(f"runs: {', '.join(missing)} holds no {METRICS_FILE}; `just train-pretrain` / "
                          "`just train-sft` write one per run (output_dir)")
    return [Path(run) for run in runs]


def _steps(run: Path) -> list[dict[str, Any]]:
    lines = (run / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _features_line(extract_yaml: str) -> tuple[str, str | None]:
    """An extraction YAML the run reads, with its model; the YAML as it is now (it may have moved)."""
    path = Path(extract_yaml) if Path(extract_yaml).is_file() else REPO / extract_yaml
    if not path.is_file():
        return f"`{extract_yaml}` (not found here)", None
    model = cache_spec_from_yaml(path)[0].model
    return f"`{extract_yaml}`: {model_line(model, embedded_model(model))}", embedded_model(model)


def run_model(run: Path) -> Provenance:
    """What `run` trained, from its `train_config.json`: the stage, the LLM, the vision array and the extraction
    YAMLs its features come from, with their weights."""
    path = run / RUN_CONFIG_FILE
    if not path.is_file():
        return Provenance(((f"run `{run}`", f"no {RUN_CONFIG_FILE} here"),))
    config = json.loads(path.read_text(encoding="utf-8"))
    vision = config.get("vision", {})
    array = vision.get("sd_array") if "sd" in vision.get("mode", "") else None
    features = [_features_line(y) for y in config.get("data", {}).get("extract_configs", [])]
    llm = embedded_model(config["model"])
    text = (f"{config.get('stage', '?')}; LLM {model_line(config['model'], llm)}; vision `{vision.get('mode', '?')}`"
            + (f" `{array}`" if array else "") + "".join(f"; features of {line}" for line, _ in features))
    return Provenance(((f"run `{run}`", text),), tuple(m for m in [llm, *(e for _, e in features)] if m))


def _summary(run: Path, steps: Sequence[dict[str, Any]]) -> list[Any]:
    loss = [s["loss"] for s in steps]
    return [str(run), len(steps), loss[0], loss[-1], min(loss), max(s["lr"] for s in steps),
            statistics.median(s["grad_norm"] for s in steps), statistics.median(s["samples_per_s"] for s in steps),
            sum(s.get("skipped", 0) for s in steps)]


def training_section(runs: Sequence[Path], out: Path) -> Section:
    """One figure per run (its curves over the optimizer steps) and one summary table, under `out/training/`."""
    folder = RunDir(out, "training")
    provenance, rows, images = Provenance(), [], []
    for run in runs:
        steps = _steps(run)
        provenance += run_model(run)
        if not steps:
            continue
        rows.append(_summary(run, steps))
        name = f"{run.resolve().name}.png"
        name = name if name not in images else f"{len(images)}-{name}"  # two runs of one folder name
        curves = {title: [s[key] for s in steps] for key, title in CURVES.items()}
        images.append(folder.figure(name, training_curves([s["step"] for s in steps], curves, title=str(run))).name)
    notes = [] if runs else ["No training run to show: `just train-pretrain` and `just train-sft` write `runs/"
                             "sample-pretrain` and `runs/sample-sft`; `just inspect runs=[DIR,...]` names others."]
    tables = []
    if rows:
        folder.csv("training.csv", ["run", "steps", "first loss", "last loss", "min loss", "peak lr",
                                    "median grad norm", "median samples/s", "skipped micro-batches"], rows)
        tables.append(Table("training.csv", "per run, over its optimizer steps"))
    return Section("Training curves", f"`{METRICS_FILE}` of each run: loss, learning rate and gradient norm per "
                   "optimizer step", folder.path, provenance=provenance, images=images, tables=tables, notes=notes)
