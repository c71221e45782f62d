"""The rows Ray Data moves between the units of an extraction run, as frozen dataclasses.

`to_row()` gives what Ray carries cleanly (Python scalars, lists of str/None, numpy arrays: lists
become Arrow list columns); `from_row(row)` accepts those values as they arrive, in a `map` row or one
row of a numpy batch (where a list arrives as an object array). Per-source and per-stage values are
one column each (`prompt:<source>`, `seconds:<stage>`), failures two parallel columns.

    ShardTask    driver -> decode task    one missing shard
    DecodedShard decode task -> actor     the task + its preprocessed images and failures
    ShardStats   actor -> driver          what one shard cost and produced
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from stages.image_files import ImageStamp

__all__ = ["ShardTask", "DecodedShard", "ShardStats"]

_PROMPT, _SECONDS = "prompt:", "seconds:"


def _prefixed(row: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}


def _failed_columns(failed: Mapping[str, str]) -> dict[str, list[str]]:
    return {"failed_keys": list(failed), "failed_reasons": list(failed.values())}


def _failed_of(row: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(r) for k, r in zip(row["failed_keys"], row["failed_reasons"])}


def _stamp_columns(stamps: Mapping[str, ImageStamp]) -> dict[str, Any]:
    return {"stamp_keys": list(stamps), "stamp_sha256": [s.sha256 for s in stamps.values()],
            "stamp_size": np.asarray([s.size for s in stamps.values()], np.int64),
            "stamp_mtime_ns": np.asarray([s.mtime_ns for s in stamps.values()], np.int64)}


def _stamps_of(row: Mapping[str, Any]) -> dict[str, ImageStamp]:
    columns = zip(row["stamp_keys"], row["stamp_sha256"], row["stamp_size"], row["stamp_mtime_ns"])
    return {str(k): ImageStamp(sha256=str(h), size=int(n), mtime_ns=int(t)) for k, h, n, t in columns}


@dataclass(frozen=True)
class ShardTask:
    """A missing shard: its keys in row order (None = padding row), each prompt source's text per row,
    and whether its stored latents are complete (then they are read instead of decoding the images)."""

    shard: int
    keys: tuple[str | None, ...]
    prompts: Mapping[str, tuple[str | None, ...]]
    reuse_latents: bool

    def to_row(self) -> dict[str, Any]:
        return {"shard": self.shard, "keys": list(self.keys), "reuse_latents": self.reuse_latents,
                **{_PROMPT + source: list(texts) for source, texts in self.prompts.items()}}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "ShardTask":
        return cls(shard=int(row["shard"]), keys=tuple(row["keys"]), reuse_latents=bool(row["reuse_latents"]),
                   prompts={source: tuple(texts) for source, texts in _prefixed(row, _PROMPT).items()})


@dataclass(frozen=True, eq=False)
class DecodedShard:
    """A task with the images of its decodable rows (none when latents are reused) and the stamp of
    every image file whose bytes could be read (`stages.image_files`; failed ones included)."""

    task: ShardTask
    images: np.ndarray  # (n_ok, R, R, 3) uint8
    ok_rows: np.ndarray  # (n_ok,) int64: the rows of `task.keys` the images belong to
    failed: Mapping[str, str]  # key -> reason it could not be decoded
    seconds: float  # wall time of the decode task
    stamps: Mapping[str, ImageStamp] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return {**self.task.to_row(), "images": self.images, "ok_rows": self.ok_rows,
                **_failed_columns(self.failed), **_stamp_columns(self.stamps), "decode_s": self.seconds}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "DecodedShard":
        return cls(task=ShardTask.from_row(row), images=np.asarray(row["images"], np.uint8),
                   ok_rows=np.asarray(row["ok_rows"], np.int64), failed=_failed_of(row),
                   seconds=float(row["decode_s"]), stamps=_stamps_of(row))


@dataclass(frozen=True)
class ShardStats:
    """One written shard. `decoded` counts images decoded by the CPU task, `encoded` those encoded from
    pixels in the actor (both 0 when stored latents are reused); `seconds` maps each stage (`decode`,
    the encoder's `vae`/`unet`/`clip`, `write`: tar + zarr) to its wall time for this shard; `node` is
    the Ray node id of the actor that computed it ("" outside Ray)."""

    shard: int
    n_images: int  # keys in the shard (padding rows excluded), failed ones included
    failed: Mapping[str, str]
    bytes: int
    batches: int
    decoded: int
    encoded: int
    seconds: Mapping[str, float]
    node: str = ""

    def to_row(self) -> dict[str, Any]:
        return {"shard": self.shard, "n_images": self.n_images, "bytes": self.bytes, "batches": self.batches,
                "decoded": self.decoded, "encoded": self.encoded, "node": self.node, **_failed_columns(self.failed),
                **{_SECONDS + stage: s for stage, s in self.seconds.items()}}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "ShardStats":
        counts = {name: int(row[name]) for name in ("shard", "n_images", "bytes", "batches", "decoded", "encoded")}
        return cls(**counts, failed=_failed_of(row), node=str(row["node"]),
                   seconds={stage: float(s) for stage, s in _prefixed(row, _SECONDS).items()})
