"""The data sets that fill a store: `sources/<id>.json` per data set, its LLaVA JSON files, image root and the
shards its images are in. Each `extract` run records its own; `verify` reads them to name the command that
computes a damaged shard again. A store is often filled from several data sets (the training images, then a
run's benchmark images), and a shard is computed only by a run over the data that holds all its keys."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from stages.store.layout import StorePaths, read_json, write_json_atomic

__all__ = ["DataSource", "data_set_id", "record_source", "data_sources"]


def data_set_id(json_paths: Sequence[Path], image_root: Path) -> str:
    """12 hex digits hashed from the resolved data files and image root: what names a data set's files in a
    store (its errors file, its source record)."""
    data = json.dumps([sorted(str(p.resolve()) for p in json_paths), str(image_root.resolve())])
    return hashlib.sha256(data.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class DataSource:
    """What an extract run was given (`data`: absolute file paths or an `embedded:` sample name; `image_root`:
    absolute, None for a sample name; `config`: its YAML, when known) and the shards holding its images."""

    data: tuple[str, ...]
    image_root: str | None
    shards: tuple[int, ...]
    config: str | None = None

    def overrides(self) -> list[str]:
        """`data=[...]` and `image_root=...`: the `extract` overrides that read this data set again."""
        return [f"data=[{','.join(self.data)}]", *([f"image_root={self.image_root}"] if self.image_root else [])]


def record_source(paths: StorePaths, source_id: str, source: DataSource) -> None:
    """Record (or update) the data set `source_id`'s source; written only when its data or shards changed (a
    cache hit writes nothing, even from another YAML of the same store). Advice, not data: a store this
    process cannot write (a shared cache read for a cache hit) is left as it is."""
    path = paths.source(source_id)
    value = {"data": list(source.data), "image_root": source.image_root, "shards": list(source.shards),
             "config": source.config}
    try:
        if {**read_json(path), "config": source.config} == value:
            return
    except (OSError, ValueError, TypeError):
        pass
    try:
        path.parent.mkdir(exist_ok=True)
        write_json_atomic(path, value)
    except OSError:
        pass


def data_sources(paths: StorePaths) -> list[DataSource]:
    """Every readable source record of the store (one that cannot be read names no command: skipped)."""
    found = []
    for path in sorted(paths.sources.glob("*.json")):
        try:
            value = read_json(path)
            found.append(DataSource(data=tuple(map(str, value["data"])), image_root=value["image_root"],
                                    shards=tuple(int(s) for s in value["shards"]), config=value.get("config")))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found
