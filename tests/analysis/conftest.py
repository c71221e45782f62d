"""A small store written by the extraction pipeline's own work units (`store_builder`, no Ray), the benchmark
fixtures in their official layouts, and the YAMLs that find the stores: what `just analyze` reads, in miniature.

64 px images, a 4x4 token grid, two feature names at t=50 with caption-conditioned arrays, four images of
the bundled sample; built once per session. And a `just sweep-report` folder (`sweep_report`) for `inspect
sweeps=[...]`."""
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
