"""Shared fixtures: offline hub, the embedded tiny models, the bundled sample, and feature stores.

Feature stores are written by the extraction pipeline's own code without Ray: `build_store` runs an
extraction YAML through `run_extract` with the sequential runner (the Ray job's work units in this
process), so the trainer, evaluation and analysis tests read stores the pipeline wrote. They are tiny
(128 px, 4x4 token grid, a few images of the bundled sample) and built once per session.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import yaml  # noqa: E402

from pipeline.config import split_config  # noqa: E402
from pipeline.driver import run_extract  # noqa: E402
from stages.cache_spec import CacheSpec, spec_summary  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd_dir() -> str:
    from stages.embedded import resolve_model

    return resolve_model("embedded:tiny-sd")


@pytest.fixture(scope="session")
def tiny_sd(tiny_sd_dir):
    from stages.models import load_sd_components

    return load_sd_components(tiny_sd_dir, device="cpu")


@pytest.fixture(scope="session")
def sample(tmp_path_factory):
    from stages.embedded.sample import ensure_sample

    return ensure_sample(tmp_path_factory.mktemp("sample"))


SD_ARRAY = "U-L1-R1-B0-Cross-Q@t50"
SPEC = CacheSpec(model="embedded:tiny-sd", resolution=128, features=("U-L1-R1-B0-Cross-Q",), timesteps=(50,),
                 grid=4, prompt_sources=("caption",))
N_PRETRAIN, N_SFT_IMAGES, N_SFT_TEXT = 6, 3, 2


@dataclass(frozen=True)
class TrainStore:
    """A built store, the extraction YAML that finds it, and LLaVA JSON subsets whose images it holds."""

    spec: CacheSpec
    path: Path
    cache_root: Path
    extract_yaml: Path
    image_root: Path
    pretrain_json: Path
    sft_json: Path


def pretrain_subset(sample, folder: Path, n: int) -> dict[str, str]:
    """The first `n` samples of the bundled pretrain JSON as a data file in `folder`, with its image root:
    `{"json": ..., "root": ...}`."""
    path = folder / f"pretrain-{n}.json"
    path.write_text(json.dumps(json.loads(Path(sample.pretrain_json).read_text())[:n]))
    return {"json": str(path), "root": str(sample.image_root)}


def build_store(extract_yaml: Path) -> Path:
    """Run the extraction of `extract_yaml` in this process (`runner=sequential`)."""
    config = split_config({**yaml.safe_load(extract_yaml.read_text()), "runner": "sequential"})
    return run_extract(config, show_progress=False).store


def _subsets(sample, folder: Path) -> tuple[Path, Path]:
    """Pretrain and SFT JSON subsets (the SFT one with a few text-only samples)."""
    pretrain = json.loads(Path(sample.pretrain_json).read_text())[:N_PRETRAIN]
    sft_all = json.loads(Path(sample.sft_json).read_text())
    sft_keys = list(dict.fromkeys(r["image"] for r in sft_all if "image" in r))[:N_SFT_IMAGES]
    sft = [r for r in sft_all if r.get("image") in sft_keys] + [r for r in sft_all if "image" not in r][:N_SFT_TEXT]
    paths = folder / "pretrain.json", folder / "sft.json"
    for path, records in zip(paths, (pretrain, sft)):
        path.write_text(json.dumps(records))
    return paths


def _make_store(tmp_path_factory, sample, spec: CacheSpec) -> TrainStore:
    folder = tmp_path_factory.mktemp(f"store-{spec.encoder}-{spec.feature_dtype}")
    pretrain_json, sft_json = _subsets(sample, folder)
    cache_root = folder / "cache"
    extract_yaml = folder / "extract.yaml"
    extract_yaml.write_text(yaml.safe_dump({
        **spec_summary(spec), "data": [str(pretrain_json), str(sft_json)], "image_root": str(sample.image_root),
        "cache_root": str(cache_root), "shard_size": 4, "batch_size": 2, "device": "cpu",
        "precision": "fp32", "write_webdataset": False}))
    return TrainStore(spec=spec, path=build_store(extract_yaml), cache_root=cache_root, extract_yaml=extract_yaml,
                      image_root=Path(sample.image_root), pretrain_json=pretrain_json, sft_json=sft_json)


@pytest.fixture(scope="session")
def store_builder():
    """`store_builder(extract_yaml)`: the store of an extraction YAML, built in this process (`build_store`)."""
    return build_store


@pytest.fixture(scope="session")
def train_store(tmp_path_factory, sample) -> TrainStore:
    """float16 features (the default store), with caption-conditioned arrays."""
    return _make_store(tmp_path_factory, sample, SPEC)


@pytest.fixture(scope="session")
def train_store_fp32(tmp_path_factory, sample) -> TrainStore:
    """The same with float32 features, for exactness checks."""
    return _make_store(tmp_path_factory, sample, replace(SPEC, feature_dtype="float32"))


@pytest.fixture(scope="session")
def train_store_int8(tmp_path_factory, sample) -> TrainStore:
    """The same extracted with int8 features (codes + a float16 scale per token, `stages.store.compact`)."""
    return _make_store(tmp_path_factory, sample, replace(SPEC, feature_dtype="int8"))


@pytest.fixture(scope="session")
def make_train_store(tmp_path_factory, sample):
    """`make_train_store(spec)`: a store of any `CacheSpec` over the same JSON subsets."""
    return functools.partial(_make_store, tmp_path_factory, sample)


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the run gets as far as starting Ray."""
    def refuse(run):
        raise AssertionError("Ray was started")

    monkeypatch.setattr("pipeline.job.start_ray", refuse)


@dataclass(frozen=True)
class ExtractedTree:
    """`tests.fixtures_ecosystem`'s LLaVA layouts, mix665k extracted with hostile keys and unusable images."""

    tree: Any  # tests.fixtures_ecosystem.LlavaTree
    summary: Any  # pipeline.progress.Summary of the extraction
    extract_yaml: Path
    hostile: dict[str, str]  # key -> the cause it is refused for
    unusable_json: Path  # mix665k + an image that does not decode + one that does not exist


@pytest.fixture(scope="session")
def llava_tree(tmp_path_factory) -> ExtractedTree:
    from tests.fixtures_ecosystem import add_hostile_json, add_unusable_json, build_llava_tree, extract_mix665k

    tree = build_llava_tree(tmp_path_factory.mktemp("llava-tree"))
    hostile_json, hostile = add_hostile_json(tree)
    unusable_json = add_unusable_json(tree)
    summary, extract_yaml = extract_mix665k(tree, [unusable_json, hostile_json], spec_fields=spec_summary(SPEC),
                                            cache_root=tree.root / "cache")
    return ExtractedTree(tree=tree, summary=summary, extract_yaml=extract_yaml, hostile=hostile,
                         unusable_json=unusable_json)
