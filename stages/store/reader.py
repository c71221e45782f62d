"""`StoreReader`: the trainer's read-only view of a store (no Ray, no pipeline imports).

Only shards with a completion record are visible. Uncompressed arrays (the default) are read by
parsing the zarr v3 shard index and `preadv`-ing the inner chunks straight into the output, a whole
shard in one call; compressed arrays go through zarr. Either way the bytes are the zarr array's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import zarr
from zarr.storage import LocalStore

from stages.store.arrays import ArrayInfo, array_info
from stages.store.fingerprint import Fingerprint
from stages.store.layout import ShardPlan, StorePaths, load_plans, read_json, read_raw_rows
from stages.store.registry import find_store, describe_missing

__all__ = ["StoreReader", "KeyNotInStore"]


class KeyNotInStore(KeyError):
    """A key the store cannot serve; the message says whether it was never planned, failed, or is
    in a shard that is not complete yet."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0])


class StoreReader:
    """Read-only, picklable (for DataLoader workers) view of the completed part of a store.

    `array_ids` selects the arrays this reader serves (default: all); `keys` are those whose shard is
    complete for every selected array and that failed in none, in row order.
    """

    def __init__(self, path: str | Path, *, array_ids: Sequence[str] | None = None) -> None:
        self.paths = StorePaths(path)
        if not self.paths.fingerprint.is_file():
            raise FileNotFoundError(f"{path} is not a feature store (no fingerprint.json)")
        self.fingerprint = Fingerprint.from_json(self.paths.fingerprint.read_text(encoding="utf-8"))
        self.attrs: dict[str, Any] = read_json(self.paths.zarr / "zarr.json").get("attributes", {})
        self.shard_size: int = self.attrs["feature_cache"]["shard_size"]
        self.plans: list[ShardPlan] = load_plans(self.paths, [])
        self.infos: dict[str, ArrayInfo] = self._load_infos()
        self.records: dict[str, dict[int, dict[str, Any]]] = {a: self._load_records(a) for a in self.infos}
        self.array_ids: list[str] = self._check_ids(array_ids if array_ids is not None else sorted(self.infos))
        self._row = {k: plan.rows[i] for plan in self.plans for i, k in enumerate(plan.keys) if k is not None}
        self.keys: list[str] = [k for plan in self._complete_plans(self.array_ids)
                                for k in self._valid_keys(plan, self.array_ids)]
        self._index_cache: dict[tuple[str, int], np.ndarray] = {}
        self._zarr: dict[str, zarr.Array] = {}

    @classmethod
    def open(cls, cache_root: str | Path, fingerprint: Fingerprint, *,
             array_ids: Sequence[str] | None = None) -> "StoreReader":
        """The store for `fingerprint` under `cache_root`; a clear error (naming the differing fields
        of the stores that do exist) when there is none."""
        path = find_store(cache_root, fingerprint)
        if path is None:
            raise FileNotFoundError(describe_missing(cache_root, fingerprint))
        return cls(path, array_ids=array_ids)

    # ---- metadata --------------------------------------------------------------------------
    def _load_infos(self) -> dict[str, ArrayInfo]:
        infos = {}
        for meta_path in sorted(self.paths.zarr.glob("*/zarr.json")):
            meta = read_json(meta_path)
            if meta.get("node_type") == "array":
                infos[meta_path.parent.name] = array_info(meta_path.parent.name, meta)
        return infos

    def _load_records(self, array_id: str) -> dict[int, dict[str, Any]]:
        folder = self.paths.done / array_id
        return {int(p.stem): read_json(p) for p in sorted(folder.glob("[0-9]*.json"))} if folder.is_dir() else {}

    def _check_ids(self, array_ids: Sequence[str]) -> list[str]:
        unknown = [a for a in array_ids if a not in self.infos]
        if unknown:
            raise KeyError(f"arrays {unknown} are not in store {self.paths.root}; it has {sorted(self.infos)}")
        return list(array_ids)

    def _complete_plans(self, array_ids: Sequence[str]) -> Iterator[ShardPlan]:
        return (p for p in self.plans if all(p.index in self.records[a] for a in array_ids))

    def _failed(self, shard: int, array_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for a in array_ids:
            for key, reason in self.records[a].get(shard, {}).get("failed", {}).items():
                out.setdefault(key, f"{a}: {reason}")
        return out

    def _valid_keys(self, plan: ShardPlan, array_ids: Sequence[str]) -> list[str]:
        failed = self._failed(plan.index, array_ids)
        return [k for k in plan.keys if k is not None and k not in failed]

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_zarr"] = {}  # zarr handles are reopened lazily in each worker
        return state

    def sample_shape(self, array_id: str) -> tuple[int, ...]:
        return self.infos[array_id].sample_shape

    def row_of(self, key: str, array_ids: Sequence[str] | None = None) -> int:
        """The row of `key`, or `KeyNotInStore` saying why it cannot be read."""
        array_ids = self.array_ids if array_ids is None else self._check_ids(array_ids)
        row = self._row.get(key)
        if row is None:
            raise KeyNotInStore(f"key {key!r} was never planned in store {self.paths.root} "
                                f"({len(self._row)} keys planned)")
        shard = row // self.shard_size
        waiting = [a for a in array_ids if shard not in self.records[a]]
        if waiting:
            raise KeyNotInStore(f"key {key!r} is in shard {shard}, which is not complete for {waiting}")
        reason = self._failed(shard, array_ids).get(key)
        if reason is not None:
            raise KeyNotInStore(f"key {key!r} failed: {reason}")
        return row

    # ---- data ------------------------------------------------------------------------------
    def _zarr_array(self, array_id: str) -> zarr.Array:
        if array_id not in self._zarr:
            group = zarr.open_group(store=LocalStore(self.paths.zarr, read_only=True), mode="r")
            self._zarr[array_id] = group[array_id]
        return self._zarr[array_id]

    def _read_shard_rows(self, array_id: str, shard: int, local: np.ndarray, out: np.ndarray) -> None:
        """Rows `local` (sorted ascending, within shard `shard`) of one array into `out`."""
        info = self.infos[array_id]
        if info.raw:
            path = self.paths.shard_file(array_id, shard, len(info.sample_shape))
            cache_key = (array_id, shard)
            self._index_cache[cache_key] = read_raw_rows(
                path, local, n_chunks=info.shard_size, chunk_nbytes=info.chunk_nbytes, out=out,
                index=self._index_cache.get(cache_key))
        else:  # compressed: one zarr slice over the wanted span (orthogonal selection is far slower)
            lo, hi = shard * info.shard_size + int(local[0]), shard * info.shard_size + int(local[-1]) + 1
            span = self._zarr_array(array_id)[lo:hi]
            out[...] = span if len(span) == len(local) else span[local - local[0]]

    def read(self, keys: Sequence[str], array_ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """`{array_id: (len(keys), *sample_shape)}` in the order of `keys`, read shard by shard."""
        array_ids = self.array_ids if array_ids is None else self._check_ids(array_ids)
        rows = np.fromiter((self.row_of(k, array_ids) for k in keys), dtype=np.int64, count=len(keys))
        order = np.argsort(rows, kind="stable")
        shard_size = self.shard_size
        shards = rows[order] // shard_size
        bounds = np.flatnonzero(np.diff(shards)) + 1
        out = {a: np.empty((len(keys), *self.infos[a].sample_shape), self.infos[a].dtype) for a in array_ids}
        for group in np.split(np.arange(len(order)), bounds) if len(order) else []:
            positions, shard = order[group], int(shards[group[0]])
            local = rows[positions] - shard * shard_size
            direct = bool(np.all(np.diff(positions) == 1))  # keys given in row order: read in place
            for a in array_ids:
                if direct:
                    self._read_shard_rows(a, shard, local, out[a][positions[0]:positions[-1] + 1])
                else:
                    tmp = np.empty((len(local), *self.infos[a].sample_shape), self.infos[a].dtype)
                    self._read_shard_rows(a, shard, local, tmp)
                    out[a][positions] = tmp
        return out

    def iter_shards(self, array_ids: Sequence[str] | None = None, *,
                    shards: Sequence[int] | None = None) -> Iterator[tuple[list[str], dict[str, np.ndarray]]]:
        """`(keys, {array_id: (len(keys), *sample_shape)})` per complete shard in shard order, valid
        rows only; `shards` restricts to those indices (e.g. one DataLoader worker's share)."""
        array_ids = self.array_ids if array_ids is None else self._check_ids(array_ids)
        wanted = None if shards is None else set(shards)
        for plan in self._complete_plans(array_ids):
            if wanted is not None and plan.index not in wanted:
                continue
            keys = self._valid_keys(plan, array_ids)
            if keys:
                yield keys, self.read(keys, array_ids)

    def read_shard(self, array_id: str, shard: int) -> np.ndarray:
        """Every row of one shard (padding and failed rows included, as zeros): `(shard_size, *sample)`."""
        info = self.infos[array_id]
        out = np.empty((self.shard_size, *info.sample_shape), info.dtype)
        self._read_shard_rows(array_id, shard, np.arange(self.shard_size), out)
        return out

    def complete_shards(self, array_ids: Sequence[str] | None = None) -> list[int]:
        array_ids = self.array_ids if array_ids is None else self._check_ids(array_ids)
        return [p.index for p in self._complete_plans(array_ids)]
