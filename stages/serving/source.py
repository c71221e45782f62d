"""Sources of feature arrays for image keys: `SpecFeatures` (one spec: its store where it holds the rows,
its encoder for the rest) and `CachedFeatures` (several stores, each array id from the first that holds
it: SD features and latents from one, CLIP tokens from another). Both are `FeatureSource`s, serve arrays
in their stored dtypes (compact ones as float32, read or computed alike: `stages.store.compact.served`) and
pickle for data-loader workers (models are never pickled).

With an image root, a store row whose image file changed since it was computed (`stages.image_files`:
the same path can later hold another picture) is computed from the file instead (DESIGN §8).
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from stages.cache_spec import CacheSpec, array_shapes_for, cache_spec_from, fingerprint_for, image_spec_for
from stages.encoders import FeatureEncoder, Prompts
from stages.features import LATENTS
from stages.image_files import ImageError, changed_keys, safe_image_path
from stages.preprocess import ImageSpec
from stages.serving.compute import compute_arrays, load_encoder, load_images
from stages.serving.locate import LocatedStore
from stages.store import Fingerprint, KeyNotInStore, StoreNotFound, StoreReader
from stages.store.shard_cache import ShardCache
from stages.store.reader import NOT_EXTRACTED
from stages.store.compact import served

__all__ = ["FeatureSource", "MissingKey", "NO_IMAGE_FILE", "SpecFeatures", "CachedFeatures"]


NO_IMAGE_FILE = "no image file"


@dataclass(frozen=True)
class MissingKey:
    """Why a source does not serve a key: `cause` in a few words, for counting (`stages.store.reader`'s
    `NOT_EXTRACTED`, `INCOMPLETE`, `FAILED`, or `NO_IMAGE_FILE`), and the `reason` in full (its `str`)."""

    cause: str
    reason: str

    def __str__(self) -> str:
        return self.reason


class FeatureSource(Protocol):
    """What consumers need from a source of feature arrays."""

    def __contains__(self, key: object) -> bool:
        """Whether `key`'s arrays can be served."""
        ...

    def why_missing(self, key: str) -> MissingKey:
        """Why `key` is not `in` the source (a failed image says so, with the reason)."""
        ...

    def sample_shape(self, array_id: str) -> tuple[int, ...]: ...

    def spec_of(self, array_id: str) -> CacheSpec:
        """The extraction settings of the store holding `array_id` (model, grid, trials, noise seed)."""
        ...

    def read(self, keys: Sequence[str], array_ids: Sequence[str], *,
             prompts: Prompts | None = None) -> dict[str, np.ndarray]:
        """`{array_id: (len(keys), *sample_shape)}` in the stored dtypes (compact ones: float32), in the order
        of `keys`;
        `prompts[source]`: one text per key for conditioned arrays that are computed."""
        ...


class SpecFeatures:
    """The arrays of one spec: read from its `store` where it holds them, computed with the spec's encoder
    (`compute_arrays`) otherwise — from the stored latents for arrays the store lacks, from the image
    files under `image_root` for keys whose file changed and, with `compute_missing`, keys it lacks.

    `spec` defaults to the one the store records; `store_arrays` selects the arrays whose complete rows
    make a key held (default: all). `counts` tallies array rows "read" and "computed".
    """

    def __init__(self, spec: CacheSpec | None = None, *, store: LocatedStore | None = None,
                 store_arrays: Sequence[str] | None = None, image_root: str | Path | None = None,
                 compute_missing: bool = False, device: str | torch.device | None = None,
                 cache: ShardCache | None = None) -> None:
        if store is None and (spec is None or image_root is None or not compute_missing):
            raise ValueError("features without a store are computed: give spec, image_root and compute_missing")
        self._spec, self.device, self.compute_missing = spec, device, compute_missing
        self.image_root = None if image_root is None else Path(image_root)
        self.reader = None if store is None else StoreReader(store.path, expect=store.fingerprint,
                                                             array_ids=store_arrays, cache=cache)
        self.held = frozenset(self.reader.keys) if self.reader is not None else frozenset()
        self._stale: dict[str, bool] = {}  # held key -> its image file changed since its rows were computed
        self.counts: Counter[str] = Counter()
        self.computed_keys: set[str] = set()
        self.computed_ids: set[str] = set()

    def __repr__(self) -> str:
        where = f"store={self.reader.paths.root}" if self.reader is not None else "no store"
        return f"SpecFeatures({self.spec.model}, {where}, images={self.image_root})"

    @property
    def spec(self) -> CacheSpec:
        if self._spec is None:
            attrs, root = self.reader.attrs, self.reader.paths.root
            if "cache_spec" not in attrs:
                raise StoreNotFound(f"store {root} records no cache_spec; re-create it with `just extract`")
            self._spec = cache_spec_from(attrs["cache_spec"], where=f"{root} (recorded cache_spec)")
        return self._spec

    def spec_of(self, array_id: str) -> CacheSpec:
        return self.spec

    @functools.cached_property
    def fingerprint(self) -> Fingerprint:
        return self.reader.fingerprint if self.reader is not None else fingerprint_for(self.spec)

    @functools.cached_property
    def image_spec(self) -> ImageSpec:
        return image_spec_for(self.spec)

    @property
    def encoder(self) -> FeatureEncoder:
        """Loaded on first need (`load_encoder`): a source served by its store loads no model."""
        return load_encoder(self.spec, device=self.device)

    def _has_file(self, key: object) -> bool:
        try:
            return isinstance(key, str) and safe_image_path(self.image_root, key).is_file()
        except ImageError:
            return False

    def __contains__(self, key: object) -> bool:
        return key in self.held or (self.compute_missing and self._has_file(key))

    def why_missing(self, key: str) -> MissingKey:
        if self.reader is None:
            return MissingKey(NO_IMAGE_FILE, f"no image file {key!r} under {self.image_root}")
        try:
            self.reader.row_of(key)
        except KeyNotInStore as exc:
            return MissingKey(exc.cause, str(exc))
        return MissingKey(NOT_EXTRACTED, f"key {key!r} is not in {self!r}")

    def sample_shape(self, array_id: str) -> tuple[int, ...]:
        if self.reader is not None and array_id in self.reader.infos:
            return self.reader.sample_shape(array_id)
        return tuple(self._shapes[array_id][0])

    @functools.cached_property
    def _shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return array_shapes_for(self.spec)  # a forward on the meta device: no weights, no compute

    def stale(self, keys: Sequence[str]) -> list[str]:
        """Those of `keys` held by the store whose image file under `image_root` is not the one their rows
        were computed from; they are computed from the file."""
        if self.reader is None or self.image_root is None:
            return []
        todo = [k for k in dict.fromkeys(keys) if k in self.held and k not in self._stale]
        if todo:
            changed = set(changed_keys(self.image_root, todo, self.reader.image_stamps(todo)))
            self._stale.update((k, k in changed) for k in todo)
        return [k for k in keys if self._stale.get(k)]

    def read(self, keys: Sequence[str], array_ids: Sequence[str], *,
             prompts: Prompts | None = None) -> dict[str, np.ndarray]:
        keys, ids = list(keys), list(dict.fromkeys(array_ids))
        if self.image_root is None:  # the trainer's path: the store alone
            return self._from_store(keys, ids, prompts)
        stale = set(self.stale(keys))
        files = [i for i, k in enumerate(keys) if k in stale or (self.compute_missing and k not in self.held)]
        if not files:
            return self._from_store(keys, ids, prompts)
        stored = sorted(set(range(len(keys))) - set(files))
        parts = [(rows, fetch([keys[i] for i in rows], ids, _subset(prompts, rows)))
                 for rows, fetch in ((stored, self._from_store), (files, self._computed)) if rows]
        return _assembled(len(keys), ids, parts)

    def _from_store(self, keys: list[str], ids: list[str], prompts: Prompts | None) -> dict[str, np.ndarray]:
        """The store's rows; arrays it lacks computed from its latents (or, without latents, the images)."""
        stored = [a for a in ids if a in self.reader.infos]
        out = self.reader.read(keys, stored) if stored else {}
        self.counts["read"] += len(keys) * len(stored)
        missing = [a for a in ids if a not in stored]
        if missing:
            latents = None
            if self.spec.kind.has_latents and LATENTS in self.reader.infos:
                latents = torch.from_numpy(self.reader.read(keys, [LATENTS])[LATENTS].astype(np.float32))
            out.update(self._computed(keys, missing, prompts, latents))
        return out

    def _computed(self, keys: list[str], ids: list[str], prompts: Prompts | None,
                  latents: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        """`ids` as `just extract` computes them, from `latents` when given, else from the image files."""
        images = None if latents is not None else load_images(self.image_root, keys, self.image_spec)
        arrays = served(compute_arrays(self.encoder, keys, array_ids=ids, images=images, latents=latents,
                                       prompts=prompts), {a: self.spec.stored_dtype(a) for a in ids})
        self.counts["computed"] += len(keys) * len(ids)
        self.computed_keys.update(keys)
        self.computed_ids.update(ids)
        return arrays

    def latents(self, keys: Sequence[str]) -> torch.Tensor:
        """`(B, 4, h, w)` float32 z0 of `keys`, stored where the store has them."""
        return torch.from_numpy(self.read(keys, [LATENTS])[LATENTS].astype(np.float32))

    def describe(self) -> dict[str, Any]:
        """Provenance: the store, its fingerprint, and how many rows came from where."""
        return {"store": str(self.reader.paths.root) if self.reader is not None else None,
                "fingerprint": self.fingerprint.full, "rows_read": self.counts["read"],
                "rows_computed": self.counts["computed"], "keys_computed": len(self.computed_keys)}


class CachedFeatures:
    """A `FeatureSource` over several stores (`find_yaml_store`, `explicit_store`); each array id is read
    from the first store that has it. A key is `in` the source only when every store serving one of
    `array_ids` has it complete; with `image_root`, changed images are computed (`SpecFeatures.stale`)."""

    def __init__(self, stores: Sequence[LocatedStore], *, array_ids: Sequence[str],
                 image_root: str | Path | None = None, device: str | torch.device | None = None,
                 cache: ShardCache | None = None) -> None:
        owners: dict[str, LocatedStore] = {}
        held: dict[LocatedStore, list[str]] = {}
        for store in stores:
            held[store] = StoreReader(store.path, expect=store.fingerprint).meta.array_ids
            for array_id in held[store]:
                owners.setdefault(array_id, store)
        missing = [a for a in array_ids if a not in owners]
        if missing:
            listing = "; ".join(f"{s.path} has {ids}" for s, ids in held.items())
            raise StoreNotFound(f"arrays {missing} are in none of the stores ({listing}); add the feature name, "
                                "timestep or prompt source to the extraction YAML and run `just extract` again")
        self.array_ids = tuple(array_ids)
        self.units = [SpecFeatures(store=store, store_arrays=[a for a in self.array_ids if owners[a] == store],
                                   image_root=image_root, device=device, cache=cache)
                      for store in dict.fromkeys(owners[a] for a in self.array_ids)]
        self._owner = {a: i for i, unit in enumerate(self.units) for a in unit.reader.array_ids}
        self._keys = frozenset.intersection(*(unit.held for unit in self.units))

    @property
    def readers(self) -> list[StoreReader]:
        return [unit.reader for unit in self.units]

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"CachedFeatures({[str(r.paths.root) for r in self.readers]})"

    def why_missing(self, key: str) -> MissingKey:
        """Why `key` is not served: never planned, in an incomplete shard, or failed (with the reason)."""
        return next((unit.why_missing(key) for unit in self.units if key not in unit),
                    MissingKey(NOT_EXTRACTED, f"key {key!r} is not in {self!r}"))

    def _unit(self, array_id: str) -> SpecFeatures:
        if array_id not in self._owner:
            raise KeyError(f"array {array_id!r} is not served here; serving {list(self.array_ids)}")
        return self.units[self._owner[array_id]]

    def reader_for(self, array_id: str) -> StoreReader:
        return self._unit(array_id).reader

    def sample_shape(self, array_id: str) -> tuple[int, ...]:
        return self._unit(array_id).sample_shape(array_id)

    def spec_of(self, array_id: str) -> CacheSpec:
        return self._unit(array_id).spec

    def stale(self, keys: Sequence[str]) -> list[str]:
        """Keys whose image file changed since any store's rows of them were computed (sorted)."""
        return sorted({k for unit in self.units for k in unit.stale(keys)})

    def read(self, keys: Sequence[str], array_ids: Sequence[str], *,
             prompts: Prompts | None = None) -> dict[str, np.ndarray]:
        for array_id in array_ids:
            self._unit(array_id)
        out: dict[str, np.ndarray] = {}
        for index in dict.fromkeys(self._owner[a] for a in array_ids):
            wanted = [a for a in array_ids if self._owner[a] == index]
            out.update(self.units[index].read(keys, wanted, prompts=prompts))
        return out


def _subset(prompts: Prompts | None, rows: list[int]) -> dict[str, list[str]] | None:
    return None if prompts is None else {s: [texts[i] for i in rows] for s, texts in prompts.items()}


def _assembled(n: int, ids: list[str], parts: list[tuple[list[int], dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """`{array_id: (n, ...)}` from parts holding the arrays of some of the rows."""
    out = {}
    for array_id in ids:
        first = parts[0][1][array_id]
        out[array_id] = np.empty((n, *first.shape[1:]), first.dtype)
        for rows, arrays in parts:
            out[array_id][rows] = arrays[array_id]
    return out
