"""Building blocks of the benchmarks' tiny fixtures (the embedded default): small photos from the bundled
scikit-image set (`stages.embedded.sample.photo`), and parquet files shaped like the Hub's, with images
embedded as the `datasets` `Image` feature stores them (a `{bytes, path}` struct, declared an `Image` in the
schema's `huggingface` metadata, so `datasets.load_dataset` decodes it as the Hub's files do).
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["MAX_SIDE", "photo_jpeg", "hub_image", "write_parquet"]

MAX_SIDE = 96  # fixture images stay tiny: fast to extract, small in the embedded home


def photo_jpeg(source: str, *, box: tuple[float, float, float, float] | None = None,
               max_side: int = MAX_SIDE) -> bytes:
    """A bundled photo (optionally cropped to `box`, fractions left, top, right, bottom), RGB, shrunk to
    at most `max_side` pixels a side, as JPEG bytes."""
    from stages.embedded.sample import photo

    image = photo(source).convert("RGB")
    if box is not None:
        w, h = image.size
        image = image.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def hub_image(data: bytes, name: str) -> dict[str, Any]:
    """An `Image` column value as the Hub's parquet files hold it."""
    return {"bytes": data, "path": name}


def _is_image(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"bytes", "path"}


def write_parquet(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """`rows` as one parquet file (columns in the first row's order); a column of `hub_image` values (or
    None) is an `Image` feature."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([dict(row) for row in rows])
    images = [name for name in table.column_names
              if any(_is_image(row.get(name)) for row in rows) and all(row.get(name) is None or _is_image(row.get(name))
                                                                        for row in rows)]
    features = {name: {"_type": "Image"} for name in images}
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
