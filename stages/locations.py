"""Where things are unless a config says otherwise: the bundled sample's data names and the cache root.

Extraction (`pipeline.config`: `data: [embedded:sample]`) and training (`train.stores`:
`data.data_path: embedded:sample-sft`) both resolve sample names here, so the two sides agree on them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from stages.config import ConfigError
from stages.embedded import EMBEDDED_PREFIX

__all__ = ["REPO", "DEFAULT_CACHE_ROOT", "SAMPLE", "SAMPLE_DATA", "is_sample_data", "resolve_sample_data"]

REPO = Path(__file__).resolve().parents[1]  # the checkout: configs/ and the default YAMLs are found from it
DEFAULT_CACHE_ROOT = "cache"  # relative to the working directory, as `just extract` and the trainer see it

SAMPLE = f"{EMBEDDED_PREFIX}sample"
# data name -> its `stages.embedded.sample.SamplePaths` JSON fields (built on first use, never downloaded)
SAMPLE_DATA: Mapping[str, tuple[str, ...]] = {
    SAMPLE: ("pretrain_json", "sft_json"),  # both files; the manifest dedupes their images
    f"{SAMPLE}-pretrain": ("pretrain_json",),
    f"{SAMPLE}-sft": ("sft_json",),
}


def is_sample_data(name: str) -> bool:
    """`embedded:…` names data of the bundled sample (valid or not); anything else is a file."""
    return name.startswith(EMBEDDED_PREFIX)


def resolve_sample_data(name: str) -> tuple[list[Path], Path]:
    """(LLaVA JSON files, image root) of a `SAMPLE_DATA` name, materialised under the embedded home."""
    if name not in SAMPLE_DATA:
        raise ConfigError(f"unknown embedded data {name!r}; valid: {sorted(SAMPLE_DATA)}")
    from stages.embedded.sample import bundled_sample_dir, ensure_sample

    sample = ensure_sample(bundled_sample_dir())
    return [Path(getattr(sample, f)) for f in SAMPLE_DATA[name]], Path(sample.image_root)
