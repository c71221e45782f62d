"""A small store written by the extraction pipeline's own work units (`store_builder`, no Ray), the benchmark
fixtures in their official layouts, and the YAMLs that find the stores: what `just analyze` reads, in miniature.

64 px images, a 4x4 token grid, two feature names at t=50 with caption-conditioned arrays, four images of
the bundled sample; built once per session. And what `inspect` shows beside its analyses, each written by its
producer's own code from made-up numbers (no training, no evaluation): a `just sweep-report` folder
(`sweep_report`, for `sweeps=[...]`), two training runs and the tables `just eval-table` wrote of them
(`trained_runs`, for `runs=[...]` and `eval_table=PREFIX`)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from analysis.mmvp_vlm import MMVP_VLM
from analysis.winoground import WINOGROUND
from stages.cache_spec import CacheSpec, spec_summary

SPEC = CacheSpec(model="embedded:tiny-sd", resolution=64, features=("U-L1-R1-B0-Cross-Q", "U-L2-R1-B0-Cross-Q"),
                 timesteps=(50,), grid=4, prompt_sources=("caption",))
N_IMAGES = 4


@dataclass(frozen=True)
class AnalysisEnv:
    extract_yaml: Path
    clip_yaml: Path
    cache_root: Path
    store: Path
    data_json: Path
    image_root: Path
    keys: tuple[str, ...]
    captions: tuple[str, ...]
    mmvp_vlm: Path
    winoground: Path


@pytest.fixture(scope="session")
def analysis_env(tmp_path_factory, sample, store_builder) -> AnalysisEnv:
    folder = tmp_path_factory.mktemp("analysis")
    records = json.loads(Path(sample.pretrain_json).read_text())[:N_IMAGES]
    data_json = folder / "data.json"
    data_json.write_text(json.dumps(records))
    cache_root = folder / "cache"
    run_fields = {"image_root": str(sample.image_root), "cache_root": str(cache_root), "shard_size": 4,
                  "batch_size": 2, "device": "cpu", "precision": "fp32", "write_webdataset": False}
    extract_yaml = folder / "extract.yaml"
    extract_yaml.write_text(yaml.safe_dump({**spec_summary(SPEC), "data": [str(data_json)], **run_fields}))
    clip_yaml = folder / "extract-clip.yaml"  # never extracted: pairs computes the CLIP arrays
    clip_yaml.write_text(yaml.safe_dump({"model": "embedded:tiny-clip-vision", "encoder": "clip", "resolution": None,
                                         "features": [], "grid": 4, "cache_root": str(cache_root)}))
    MMVP_VLM.write_fixture(folder / "mmvp-vlm")
    WINOGROUND.write_fixture(folder / "winoground")
    return AnalysisEnv(extract_yaml=extract_yaml, clip_yaml=clip_yaml, cache_root=cache_root,
                       store=store_builder(extract_yaml), data_json=data_json, image_root=Path(sample.image_root),
                       keys=tuple(r["image"] for r in records),
                       captions=tuple(r["conversations"][1]["value"] for r in records),
                       mmvp_vlm=folder / "mmvp-vlm", winoground=folder / "winoground")


@dataclass(frozen=True)
class TrainedRuns:
    runs: tuple[Path, ...]  # pretrain, sft
    eval_table: Path  # the --out PREFIX of `just eval-table` (PREFIX.csv); PREFIX-again.csv is a second table
    steps: tuple[int, ...]  # metrics.jsonl lines per run


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> TrainedRuns:
    """Two runs as the trainer leaves them — `train_config.json` by `train.config.save_run_config`,
    `metrics.jsonl` by `train.metrics.Reporter` — with made-up step metrics; an MMVP and a BLINK result of the
    SFT run written by `llava_eval.results.ResultFiles`; and the tables `just eval-table` writes of it, for
    `--out PREFIX` and `--out PREFIX-again`."""
    from llava_eval.cli import main as eval_main
    from llava_eval.identity import Generation, ResultIdentity
    from llava_eval.results import ResultFiles
    from train.config import DataConfig, TrainConfig, save_run_config
    from train.metrics import Reporter, StepMetrics

    root = tmp_path_factory.mktemp("trained")
    runs, steps = [], (6, 9)
    for stage, total in zip(("pretrain", "sft"), steps):
        config = TrainConfig(stage=stage, output_dir=str(root / f"tiny-{stage}"),
                             data=DataConfig(extract_configs=("configs/extract/sample.yaml",)))
        save_run_config(config)
        reporter = Reporter(Path(config.output_dir), start_step=0, total=total, desc=stage, report_to="none",
                            config={})
        for step in range(1, total + 1):
            reporter.report(StepMetrics(step=step, epoch=0, loss=1.0 + 3.0 / step, lr=1e-3 * (1 - step / total),
                                        grad_norm=4.0 / step, samples_per_s=8.0 + step, tokens_per_s=900.0))
        reporter.close()
        runs.append(Path(config.output_dir))
    generation = Generation(max_new_tokens=4, template="v1", dtype="float32")
    for name, metrics in (("mmvp", {"pair_accuracy": 1 / 3}), ("blink", {"mean_accuracy": 0.4375})):
        identity = ResultIdentity(checkpoint="a" * 64, benchmark=name, options={}, data="d" * 64, sd_setting=None,
                                  features={}, generation=generation)
        ResultFiles(runs[1], name, identity).write({"metrics": metrics, "eval_root": "/eval",
                                                    "checkpoint": {"label": "final", "path": str(runs[1] / "final")}})
    for out in (root / "eval-table", root / "eval-table-again"):
        assert eval_main(["table", str(runs[1]), "--out", str(out)]) == 0
    return TrainedRuns(runs=tuple(runs), eval_table=root / "eval-table", steps=steps)


@pytest.fixture
def sweep_report(tmp_path) -> Path:
    """The report folder of a three-run sweep `tiny` (SD at t = 50 and 200, a CLIP baseline), written by
    `llava_sweep.report.write_report` itself from result records made up here (no training): MMVP and BLINK
    (mean and one subtask) per run, two training stages' losses per run."""
    from llava_sweep.report import RunResults, write_report
    from llava_sweep.spec import Reservation, Sweep, SweepRun
    from train.config import TrainConfig, VisionConfig

    def result(run: str, name: str, metrics: dict) -> tuple[Path, dict]:
        record = {"checkpoint": {"label": "final"}, "identity": {"checkpoint": hashlib.sha256(run.encode()).hexdigest(),
                                                                 "data": hashlib.sha256(name.encode()).hexdigest()},
                  "eval_root": str(tmp_path / "eval"), "key": f"{name}-key", "metrics": metrics}
        return tmp_path / "runs" / run / "eval" / name / "result.json", record

    runs = []
    for i, (name, timestep) in enumerate((("t50", 50), ("t200", 200), ("clip", None))):
        vision = VisionConfig(sd_array=f"U-L1-R1-B0-Cross-Q@t{timestep}") if timestep else VisionConfig(mode="clip")
        blink = (5 + i) / 12
        runs.append(RunResults(
            run=SweepRun(name=name, settings={"timestep": timestep} if timestep else {"mode": "clip"}, stages=(),
                         extractions=()),
            config=TrainConfig(vision=vision),
            results={"mmvp": result(name, "mmvp", {"pair_accuracy": (i + 1) / 8}),
                     "blink": result(name, "blink", {"mean_accuracy": blink, "per_subtask": {"counting": blink / 2}})},
            losses={f"pretrain/{name}": [2.0, 1.5 - i / 10], f"sft/{name}": [1.4, 1.1]}))
    sweep = Sweep(name="tiny", path=Path("configs/sweeps/tiny.yaml"), root=tmp_path / "sweep",
                  runs=tuple(r.run for r in runs), stages={}, extractions={}, cluster=Reservation(), values={})
    return write_report(sweep, runs).parent
