"""Hugging Face datasets saved locally (NaturalBench, BLINK): their rows, and their images as files.

Rows are read with pyarrow alone (no `datasets` dependency), a record batch at a time so a 1 GB parquet
file of embedded images never sits in memory at once: parquet files as the Hub stores them, or the
Arrow stream files (`data-*.arrow`) that `Dataset.save_to_disk` writes. An `Image` column holds a struct
`{bytes, path}`; its bytes are written out once, unchanged, so the extraction pipeline can read them
like any other image file (DESIGN §7).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from llava_eval.benchmarks.base import BenchmarkLayoutError

__all__ = ["iter_rows", "column_names", "require_columns", "image_bytes", "image_suffix", "write_once"]

_BATCH_ROWS = 64
_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


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


def require_columns(path: Path, names: Sequence[str], *, benchmark: str) -> None:
    """`BenchmarkLayoutError` naming the file and the first of `names` it lacks."""
    present = column_names(path)
    missing = [name for name in names if name not in present]
    if missing:
        raise BenchmarkLayoutError(f"{benchmark}: {path} has no column {missing[0]!r} "
                                   f"(columns: {', '.join(present)})")


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
