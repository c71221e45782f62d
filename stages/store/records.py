"""The records of a store's shards, and what planning asks of them.

`CompletionRecord` (`done/<array>/NNNNNN.json`) and `TarRecord` (`wds/NNNNNN.json`) are the files written
last, the proofs that a shard is done. `ShardRecords` holds a store's shard plans with the completion
records of each array and answers the questions planning asks (complete, missing, failed, image stamps);
`StoreMeta` is the one read from disk, and `projected` gives one as a run would leave it without writing
(the dry run's view).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Mapping, Sequence

from stages.image_files import ImageStamp
from stages.store.layout import ShardPlan

__all__ = ["CompletionRecord", "TarRecord", "ShardRecords"]


@dataclass(frozen=True)
class CompletionRecord:
    """`done/<array_id>/NNNNNN.json`, written last: the proof that the shard file is whole (its size and
    sha256 as written), with the keys that failed (their rows are zeros), the count of valid rows, the
    stamp of each image file the values were computed from (`images`; empty in stores written before
    stamps were recorded, whose rows cannot be checked against their files), each row's identity
    digest (`identity`, `stages.store.identity`; empty in records written before them) and the limits
    the images were decoded under (`decode_limits`: `max_pixels`, which decides failures; empty before)."""

    array_id: str
    shard: int
    rows: tuple[int, int]  # [start, stop) of the shard's rows
    chunk_key: str  # the shard file, relative to the array's directory
    nbytes: int
    sha256: str
    dtype: str
    sample_shape: tuple[int, ...]
    failed: Mapping[str, str]  # key -> reason
    n_valid: int
    written: str  # UTC, ISO 8601
    images: Mapping[str, ImageStamp] = field(default_factory=dict)  # key -> the file's bytes when read
    identity: tuple[int, ...] = ()  # per row of the shard: its identity digest (uint32)
    decode_limits: Mapping[str, int] = field(default_factory=dict)  # limits the images were decoded under

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "CompletionRecord":
        values = {f.name: value[f.name] for f in fields(cls) if f.name not in ("images", "identity", "decode_limits")}
        return cls(**{**values, "rows": tuple(values["rows"]), "sample_shape": tuple(values["sample_shape"]),
                      "failed": dict(values["failed"]),
                      "images": {k: ImageStamp.from_json(v) for k, v in value.get("images", {}).items()},
                      "identity": tuple(int(d) for d in value.get("identity", ())),
                      "decode_limits": dict(value.get("decode_limits", {}))})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TarRecord:
    """`wds/NNNNNN.json`, written after `wds/NNNNNN.tar` is in place: its size and sha256 as written.
    (Each sample's `.json` member also carries the sha256 of its `.npy` members.)"""

    shard: int
    nbytes: int
    sha256: str
    written: str  # UTC, ISO 8601

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "TarRecord":
        return cls(**{f.name: value[f.name] for f in fields(cls)})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ShardRecords:
    """`plans[i]` is shard `i`; `records[array_id][shard]` the completion record of a written shard;
    `scales[array_id]` the scale array of a compact array (`stages.store.compact`). Queries over several
    arrays treat a shard as complete when every one of them has a record (a compact array: its scales too)."""

    def __init__(self, plans: list[ShardPlan], records: dict[str, dict[int, CompletionRecord]],
                 scales: Mapping[str, str] | None = None) -> None:
        self.plans, self.records, self.scales = plans, records, dict(scales or {})

    def projected(self, *, new_plans: Sequence[ShardPlan] = (),
                  withdrawn: Iterable[tuple[str, int]] = ()) -> "ShardRecords":
        """These records as planning `new_plans` after the existing shards and withdrawing the `(array,
        shard)` records `withdrawn` would leave them; nothing is written."""
        gone = set(withdrawn)
        records = {a: {s: r for s, r in by_shard.items() if (a, s) not in gone} for a, by_shard in self.records.items()}
        return ShardRecords([*self.plans, *new_plans], records, self.scales)

    @property
    def n_keys(self) -> int:
        """Keys planned (padding rows excluded)."""
        return sum(k is not None for plan in self.plans for k in plan.keys)

    def is_complete(self, array_id: str, shard: int) -> bool:
        scales = self.scales.get(array_id)
        return shard in self.records.get(array_id, {}) and (scales is None or shard in self.records.get(scales, {}))

    def complete_shards(self, array_ids: Sequence[str]) -> list[int]:
        """Planned shards with a completion record for every one of `array_ids`, in order."""
        return [p.index for p in self.plans if all(self.is_complete(a, p.index) for a in array_ids)]

    def missing_shards(self, array_ids: Sequence[str]) -> list[int]:
        """Planned shards where some of `array_ids` has no completion record (work left to do)."""
        done = set(self.complete_shards(array_ids))
        return [p.index for p in self.plans if p.index not in done]

    def failed(self, shard: int, array_ids: Sequence[str]) -> dict[str, str]:
        """key -> reason for the keys of `shard` that failed in the recorded arrays among `array_ids` (the
        first array listing a key gives its reason)."""
        out: dict[str, str] = {}
        for array_id in array_ids:
            record = self.records.get(array_id, {}).get(shard)
            if record is not None:
                for key, reason in record.failed.items():
                    out.setdefault(key, reason)
        return out

    def image_stamps(self, shard: int, array_ids: Sequence[str] | None = None) -> dict[str, ImageStamp]:
        """key -> the stamp of the image file the recorded arrays (all when None) of `shard` were
        computed from; keys of records written before stamps existed are absent."""
        out: dict[str, ImageStamp] = {}
        for array_id in sorted(self.records) if array_ids is None else array_ids:
            record = self.records.get(array_id, {}).get(shard)
            if record is not None:
                for key, stamp in record.images.items():
                    out.setdefault(key, stamp)
        return out

    def valid_keys(self, plan: ShardPlan, array_ids: Sequence[str]) -> list[str]:
        """The keys of `plan` that failed in none of `array_ids`, in row order (padding excluded)."""
        failed = self.failed(plan.index, array_ids)
        return [k for k in plan.keys if k is not None and k not in failed]

    def n_valid(self, array_id: str) -> int:
        """Valid keys in the planned shards `array_id` has completed."""
        return sum(self.records[array_id][s].n_valid for s in self.complete_shards([array_id]))
