"""A small store written by the extraction pipeline's own work units (`store_builder`, no Ray), the benchmark
fixtures in their official layouts, and the YAMLs that find the stores: what `just analyze` reads, in miniature.

64 px images, a 4x4 token grid, two feature names at t=50 with caption-conditioned arrays, four images of
the bundled sample; built once per session."""
from __future__ import annotations

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
