"""Where a training run's features come from: the stores its `DataConfig` names, found by the
feature-serving room (`stages.serving`).

A train config names its stores by the extraction YAMLs that filled them (`data.extract_configs`): the
`CacheSpec` fields of a YAML give the fingerprint (DESIGN §4) and the fingerprint the directory under the
cache root — the lookup `just extract` itself does, so the two sides agree without paths. Explicit store
directories (`data.stores`) are accepted too. `stages.serving.CachedFeatures` serves their arrays (and
`stages.serving.SpecFeatures` computes them from the images, for checks and debugging).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from stages.config import ConfigError
from stages.locations import SAMPLE_DATA, is_sample_data, resolve_sample_data
from stages.serving import LocatedStore, explicit_store, find_yaml_store
from stages.store.shard_cache import ShardCache

__all__ = ["resolve_data_path", "locate_stores", "shard_cache"]


def resolve_data_path(data_path: str) -> tuple[Path, Path | None]:
    """(LLaVA JSON, image root or None): a one-file bundled-sample name (`stages.locations.SAMPLE_DATA`,
    e.g. `embedded:sample-sft`) or a file."""
    if is_sample_data(data_path):
        paths, image_root = resolve_sample_data(data_path)
        if len(paths) != 1:
            raise ConfigError(f"data.data_path {data_path!r} is {len(paths)} JSON files; training reads one: "
                              f"{sorted(n for n, fields in SAMPLE_DATA.items() if len(fields) == 1)}")
        return paths[0], image_root
    path = Path(data_path)
    if not path.is_file():
        raise ConfigError(f"data.data_path {data_path!r} is not a file (a LLaVA JSON)")
    return path, None


def shard_cache(data: Any) -> ShardCache:
    """The local cache of object-store shards a `DataConfig` names (`data.cache_dir`, `data.cache_limit`)."""
    return ShardCache.from_settings(data.cache_dir, data.cache_limit, setting="data.cache_limit")


def locate_stores(data: Any) -> list[LocatedStore]:
    """The stores of a `DataConfig`, each with the fingerprint it must have: `data.stores` (checked against
    their recorded `cache_spec`), then one per `data.extract_configs` (found by the YAML's fingerprint)."""
    located = [explicit_store(store, setting="data.stores entry") for store in data.stores]
    located += [find_yaml_store(yaml_path, cache_root=data.cache_root or None).required()
                for yaml_path in data.extract_configs]
    if not located:
        raise ConfigError("no feature stores: set data.extract_configs (extraction YAMLs) or data.stores")
    return located
