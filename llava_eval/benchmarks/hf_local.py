"""Hugging Face datasets in a local folder (the publishers' and lmms-eval's copies of the benchmarks): their
data files, their rows and their images, read with pyarrow alone (no `datasets` dependency).

A folder is read as it is found:
- a hub-cache repository folder (`datasets--<org>--<name>/`, with `refs/` and `snapshots/<rev>/`) at the
  revision `refs/main` names, or its only snapshot (`hub_snapshot`);
- parquet files as the Hub stores them (`data/train-00000-of-00001.parquet`, a config folder
  `Counting/val-00000-of-00001.parquet`, the Hub's converted `Counting/val/0000.parquet`);
- `Dataset.save_to_disk` output (`data-00000-of-00001.arrow`, the Arrow IPC stream format, beside
  `state.json`; a `DatasetDict` holds one such folder per split, named by it).
Folders and files may be symlinks, followed (a hub-cache snapshot is made of them, and users link datasets
into place). Rows are read a record batch at a time, so a 1 GB parquet file of embedded images never sits
in memory at once. An `Image` column holds a struct `{bytes, path}`; its bytes are written out once,
unchanged, so the extraction pipeline reads them like any other image file (DESIGN §7).
"""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from llava_eval.benchmarks.items import BenchmarkLayoutError

__all__ = ["hub_snapshot", "walk_files", "split_of", "data_files", "iter_rows", "column_names", "missing_columns",
           "require_columns", "image_bytes", "image_suffix", "write_once"]

_BATCH_ROWS = 64
_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
_SHARD = re.compile(r"(?P<split>[\w.]+?)-\d{5}-of-\d{5}(-[0-9a-f]+)?\.(parquet|arrow)")  # train-00000-of-00001
_CONVERTED = re.compile(r"\d+\.parquet")  # the Hub's refs/convert/parquet files: <split>/0000.parquet


def hub_snapshot(folder: Path) -> Path:
    """The snapshot a hub-cache repository folder holds at `refs/main` (or its only one); any other
    folder as it is."""
    snapshots = folder / "snapshots"
    if not (snapshots.is_dir() and (folder / "refs").is_dir()):
        return folder
    main = folder / "refs" / "main"
    if main.is_file() and (snapshots / main.read_text().strip()).is_dir():
        return snapshots / main.read_text().strip()
    revisions = sorted(p.name for p in snapshots.iterdir() if p.is_dir())
    if len(revisions) != 1:
        raise BenchmarkLayoutError(f"{folder} is a hub-cache folder with {len(revisions)} snapshots and no "
                                   f"refs/main: give the snapshot to read ({folder}/snapshots/<revision>)")
    return snapshots / revisions[0]


def walk_files(folder: Path, suffix: str) -> list[Path]:
    """The files under `folder` whose names end with `suffix`, sorted, following symlinked folders (each
    real folder once); paths keep the names they were found under."""
    found, seen = [], set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .cache/ of huggingface_hub downloads
        found += [Path(top) / name for name in files if name.endswith(suffix) and not name.startswith(".")]
    return sorted(found)


def split_of(path: Path) -> str | None:
    """The split a data file holds, from its name (`val-00000-of-00001.parquet`), its folder (`val/0000.parquet`,
    a `DatasetDict` split folder) or its `state.json` (`_split`); None when nothing says."""
    shard = _SHARD.fullmatch(path.name)
    if shard and not path.name.startswith("data-"):
        return shard.group("split")
    if path.suffix == ".parquet":
        return path.parent.name if _CONVERTED.fullmatch(path.name) else None
    state = path.parent / "state.json"
    if state.is_file():
        recorded = json.loads(state.read_text(encoding="utf-8")).get("_split")
        if recorded:
            return str(recorded)
    return path.parent.name if (path.parent.parent / "dataset_dict.json").is_file() else None


def data_files(folder: Path, *, splits: Sequence[str] = ()) -> list[Path]:
    """The parquet files under `folder`, or failing those its `save_to_disk` Arrow files, of the given
    splits (files whose split nothing says are kept); [] when there are none."""
    for suffix in (".parquet", ".arrow"):
        files = [p for p in walk_files(folder, suffix) if not splits or split_of(p) in (None, *splits)]
        if files:
            return files
    return []


def _batches(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS)
        return
    with pa.memory_map(str(path)) as source:  # save_to_disk: the Arrow IPC stream format
        yield from pa.ipc.open_stream(source)


def iter_rows(paths: Sequence[Path]) -> Iterator[dict[str, Any]]:
    """The rows of parquet / Arrow stream files, in file order, as plain dicts."""
    for path in paths:
        for batch in _batches(path):
            yield from batch.to_pylist()


def column_names(path: Path) -> list[str]:
    """The columns of a parquet / Arrow stream file, read from its schema alone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        return list(pq.read_schema(path).names)
    with pa.memory_map(str(path)) as source:
        return list(pa.ipc.open_stream(source).schema.names)


def missing_columns(path: Path, names: Sequence[str | tuple[str, ...]]) -> list[str]:
    """Those of `names` the file lacks; a tuple is alternative spellings of one column (any will do)."""
    present = set(column_names(path))
    return [" or ".join(name) if isinstance(name, tuple) else name for name in names
            if not present & set((name,) if isinstance(name, str) else name)]


def require_columns(path: Path, names: Sequence[str], *, benchmark: str) -> None:
    """`BenchmarkLayoutError` naming the file and the first of `names` it lacks."""
    missing = missing_columns(path, names)
    if missing:
        raise BenchmarkLayoutError(f"{benchmark}: {path} has no column {missing[0]!r} "
                                   f"(columns: {', '.join(column_names(path))})")


def image_bytes(value: Mapping[str, Any] | None, *, where: str) -> bytes:
    """The encoded image of an `Image` column value (`{bytes, path}`); refused if it holds no bytes."""
    data = value.get("bytes") if isinstance(value, Mapping) else None
    if not data:
        raise BenchmarkLayoutError(f"{where}: the image is not embedded in the file (no bytes); save the "
                                   "dataset with its images embedded, as the Hub's parquet files are")
    return data


def image_suffix(data: bytes, *, where: str) -> str:
    """`.jpg`, `.png`, ... from the image's own header, so a written file's name says what it holds."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format or ""
    except UnidentifiedImageError:
        raise BenchmarkLayoutError(f"{where}: the embedded image cannot be decoded") from None
    return _SUFFIXES.get(kind, f".{kind.lower()}")


def write_once(path: Path, content: bytes | Callable[[], bytes]) -> Path:
    """Write `path` unless it exists: temp file + rename, so a file that exists is whole. `content` may be
    a function, called only when the file has to be written (a composite is built only once)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content() if callable(content) else content
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # concurrent writers write the same bytes; the last rename wins
    return path
