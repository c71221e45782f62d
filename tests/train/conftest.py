"""Feature stores for the trainer tests, built without Ray straight from `stages/`.

`build_sd_store` does what one extraction actor does for each shard (DESIGN §3): images → VAE latents
rounded to the stored dtype → U-Net taps on exactly those latents (unconditional, plus one conditioned
set per prompt source in the same batched pass) → cast to the stored dtype → `write_shard`. Stores are
tiny (128 px, 4x4 token grid, a few images of the bundled sample) and built once per session.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pytest
import torch
import yaml

from stages.cache_spec import (LATENTS, CacheSpec, array_ids_for, array_shapes_for, fingerprint_for, image_spec_for,
                               spec_summary)
from stages.extractor import ExtractionSpec, SDExtractor
from stages.llava import first_reply
from stages.models import load_sd_components
from stages.preprocess import load_image, preprocess, to_tensor
from stages.store import CacheStore

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


def build_sd_store(cache_root: Path, spec: CacheSpec, *, image_root: Path, keys: Sequence[str],
                   prompts: Mapping[str, Mapping[str, str]], shard_size: int = 4, batch_size: int = 2) -> Path:
    """Fill the store for `spec` under `cache_root` with `keys` (prompts: source -> key -> text)."""
    store = CacheStore.open_or_create(cache_root, fingerprint=fingerprint_for(spec), shard_size=shard_size,
                                      attrs={"cache_spec": spec_summary(spec)})
    store.add_keys(keys)
    shapes = array_shapes_for(spec)
    for array_id, (shape, dtype) in shapes.items():
        store.ensure_array(array_id, sample_shape=shape, dtype=dtype)
    extractor = SDExtractor(load_sd_components(spec.model, device="cpu"), ExtractionSpec(
        features=spec.features, timesteps=spec.timesteps, grid=spec.grid, trials=spec.trials, seed=spec.seed))
    image_spec = image_spec_for(spec)
    for plan in store.shards():
        arrays = {a: np.zeros((len(plan.keys), *shape), dtype) for a, (shape, dtype) in shapes.items()}
        rows = [r for r, k in enumerate(plan.keys) if k is not None]
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            batch_keys = [plan.keys[r] for r in batch]
            pixels = torch.stack([to_tensor(preprocess(load_image(image_root, k), image_spec)) for k in batch_keys])
            latents = extractor.encode(pixels).to(getattr(torch, spec.latents_dtype)).float()  # (B, 4, h, w)
            out = {LATENTS: latents}
            for source in spec.prompt_sources:
                out.update(extractor.conditional_pair(latents, batch_keys, source=source,
                                                      prompts=[prompts[source][k] for k in batch_keys]))
            if not spec.prompt_sources:
                out.update(extractor.features(latents, batch_keys))
            for array_id in array_ids_for(spec):
                arrays[array_id][batch] = out[array_id].float().numpy().astype(shapes[array_id][1])
        store.write_shard(plan.index, arrays)
    return store.path


def _subsets(sample, folder: Path) -> tuple[Path, Path, list[str], dict[str, str]]:
    """Pretrain and SFT JSON subsets; their image keys; each key's caption (first reply of its first sample)."""
    pretrain = json.loads(Path(sample.pretrain_json).read_text())[:N_PRETRAIN]
    sft_all = json.loads(Path(sample.sft_json).read_text())
    sft_keys = list(dict.fromkeys(r["image"] for r in sft_all if "image" in r))[:N_SFT_IMAGES]
    sft = [r for r in sft_all if r.get("image") in sft_keys] + [r for r in sft_all if "image" not in r][:N_SFT_TEXT]
    captions: dict[str, str] = {}
    for record in pretrain + sft:
        if "image" in record:
            captions.setdefault(record["image"], first_reply(record["conversations"]))
    paths = folder / "pretrain.json", folder / "sft.json"
    for path, records in zip(paths, (pretrain, sft)):
        path.write_text(json.dumps(records))
    return paths[0], paths[1], list(captions), captions


def _make_store(tmp_path_factory, sample, spec: CacheSpec) -> TrainStore:
    folder = tmp_path_factory.mktemp(f"store-{spec.feature_dtype}")
    pretrain_json, sft_json, keys, captions = _subsets(sample, folder)
    cache_root = folder / "cache"
    path = build_sd_store(cache_root, spec, image_root=Path(sample.image_root), keys=keys,
                          prompts={"caption": captions})
    extract_yaml = folder / "extract.yaml"
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in spec_summary(spec).items()}
    extract_yaml.write_text(yaml.safe_dump({**fields, "cache_root": str(cache_root)}))
    return TrainStore(spec=spec, path=path, cache_root=cache_root, extract_yaml=extract_yaml,
                      image_root=Path(sample.image_root), pretrain_json=pretrain_json, sft_json=sft_json)


@pytest.fixture(scope="session")
def train_store(tmp_path_factory, sample) -> TrainStore:
    """float16 features (the default store), with caption-conditioned arrays."""
    return _make_store(tmp_path_factory, sample, SPEC)


@pytest.fixture(scope="session")
def train_store_fp32(tmp_path_factory, sample) -> TrainStore:
    """The same with float32 features, for exactness checks."""
    return _make_store(tmp_path_factory, sample, replace(SPEC, feature_dtype="float32"))
