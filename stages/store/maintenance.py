"""`StoreMaintenance`: the repair and removal side of `CacheStore`, and the identity upgrade.

`stages.store.repair` decides what to mend; these methods do it durably. They need only the store's
`meta` and take the same locks as the writer (`stages.store.locks`).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from stages.store.layout import remove_durably, write_index, write_json_atomic
from stages.store.location import location
from stages.store.locks import shard_lock, store_lock
from stages.store.meta import StoreMeta
from stages.store.reader import StoreCorruption, StoreReader
from stages.store.shard_files import row_identity

__all__ = ["StoreMaintenance"]


class StoreMaintenance:
    """Withdrawing shards, rewriting index files, dropping arrays and upgrading records, on `self.meta`."""

    meta: StoreMeta

    def withdraw(self, array_id: str, shard: int) -> None:
        """Remove the completion record of (array, shard): the shard turns missing and the next run
        computes it again."""
        remove_durably(self.meta.paths.record(array_id, shard))

    def withdraw_shard(self, shard: int) -> None:
        """Withdraw shard `shard` of every array and its export: the next run computes it from the images."""
        for array_id in sorted(self.meta.refresh(shards=()).infos):  # compact arrays' scales too
            self.withdraw(array_id, shard)
        self.remove_tar(shard)

    def remove_tar(self, shard: int) -> None:
        """Remove shard `shard`'s webdataset export and its digest record (the record first)."""
        remove_durably(self.meta.paths.tar_record(shard))
        remove_durably(self.meta.paths.tar(shard))

    def rewrite_index(self, shard: int, keys: Sequence[str | None] | None) -> None:
        """Replace the damaged or missing index file of shard `shard` with `keys` (`shard_size` entries),
        or remove it (None: its keys are unknown; the next extraction plans them again)."""
        with store_lock(self.meta.paths):
            if keys is not None:
                if len(keys) != self.meta.shard_size:
                    raise ValueError(f"an index holds {self.meta.shard_size} keys, got {len(keys)}")
                write_index(self.meta.paths, shard, keys, shard_size=self.meta.shard_size)
            else:
                remove_durably(self.meta.paths.index_file(shard))
            self.meta.reread_plan(shard)

    def drop_arrays(self, array_ids: Sequence[str]) -> None:
        """Remove arrays (damaged ones too, a compact one with its scales): their completion records first
        (their shards turn invisible), then their zarr directories. Other arrays, the index and the tars are
        not touched."""
        with store_lock(self.meta.paths):
            meta = self.meta.refresh(shards=())
            unknown = sorted(set(array_ids) - set(meta.infos) - set(meta.damaged_arrays))
            if unknown:
                raise KeyError(f"no array {unknown[0]!r} in {meta.paths.root}")
            for array_id in meta.stored_ids(array_ids):
                for directory in (meta.paths.done / array_id, meta.paths.zarr / array_id):
                    location(directory).remove_tree(directory)
            self.meta.refresh()

    def add_identity(self) -> list[str]:
        """Upgrade a store written before identity digests: give each completion record without them its
        digests, computed from its shard file once that file still matches the record's sha256 (one read
        of the store). A shard that does not is left as it is, for `verify --repair`. After this, reads
        check every sample's identity instead of hashing each shard file once per process. Returns one
        line per shard it could not upgrade."""
        meta, skipped = self.meta.refresh(), []
        old = [(a, s) for a in sorted(meta.infos) for s, r in sorted(meta.records[a].items()) if not r.identity]
        reader = StoreReader(meta.paths.root, expect=meta.fingerprint, array_ids=sorted({a for a, _ in old}))
        for array_id, shard in old:
            with shard_lock(meta.paths, shard):
                record = meta.refresh(shards=[shard]).records[array_id].get(shard)
                if record is None or record.identity:  # rewritten meanwhile
                    continue
                try:
                    values = reader.read_shard(array_id, shard)  # checks the file against the record's sha256
                except StoreCorruption as exc:
                    skipped.append(f"array {array_id!r} shard {shard}: {exc.finding}")
                    continue
                identity = row_identity(meta, meta.plans[shard], array_id, values)
                write_json_atomic(meta.paths.record(array_id, shard),
                                  dataclasses.replace(record, identity=identity).to_json())
        return skipped
