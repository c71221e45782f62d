"""Where a training run's features come from: cache stores found by fingerprint, or the images themselves.

A train config names its stores by the extraction YAMLs that filled them (`data.extract_configs`): the
`CacheSpec` fields of a YAML give the fingerprint (DESIGN §4) and the fingerprint the directory under the
cache root — the lookup `just extract` itself does, so the two sides agree without paths. Explicit store
directories (`data.stores`) are accepted too. `CachedFeatures` serves each array id from the store that
holds it (SD features and latents from one, CLIP tokens from another); `OnTheFlyFeatures` computes the
SD arrays from the images exactly as the extraction writes them (a debugging aid and the reference of
the cached-equals-on-the-fly test). Both implement `train.data.FeatureSource` and pickle for workers.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from stages.cache_spec import (LATENTS, CacheSpec, array_shapes_for, cache_spec_from, cache_spec_from_yaml,
                               fingerprint_for, image_spec_for, spec_summary)
from stages.config import ConfigError
from stages.encoders import SDFeatureEncoder
from stages.image_files import ImageError, safe_image_path
from stages.preprocess import load_image, preprocess
from stages.locations import SAMPLE_DATA, is_sample_data, resolve_sample_data
from stages.store import Fingerprint, FingerprintMismatch, KeyNotInStore, StoreNotFound, StoreReader, find_store
from stages.store.meta import read_header
from stages.store.registry import describe_missing

__all__ = ["StoreNotFound", "resolve_data_path", "LocatedStore", "locate_stores",
           "CachedFeatures", "OnTheFlyFeatures"]


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


def _extract_hint(yaml_path: str, root: str, yaml_root: str) -> str:
    extra = f" cache_root={root}" if root != yaml_root else ""
    return f"fill it with:  just extract config={yaml_path}{extra}"


class LocatedStore(NamedTuple):
    """A store directory and the fingerprint it must have (every `StoreReader` on it checks it again)."""

    path: Path
    fingerprint: Fingerprint


def _explicit_store(store: str) -> LocatedStore:
    """A `data.stores` directory. It must match the fingerprint that its own recorded `cache_spec` gives
    with the model weights as they are now: the question-conditioned U-Net pass reloads that model."""
    try:
        _, attrs = read_header(store, expect=None)
    except StoreNotFound as exc:
        raise StoreNotFound(f"data.stores entry: {exc}") from exc
    if "cache_spec" not in attrs:
        raise StoreNotFound(f"data.stores entry {store} records no cache_spec; re-create it with `just extract`")
    expected = fingerprint_for(cache_spec_from(attrs["cache_spec"], where=f"{store} (recorded cache_spec)"))
    try:
        read_header(store, expect=expected)
    except FingerprintMismatch as exc:
        raise StoreNotFound(f"data.stores entry {store} does not have the fingerprint its recorded cache_spec "
                            f"gives with the model as it is now; re-extract it with `just extract`.\n{exc}") from exc
    return LocatedStore(Path(store), expected)


def locate_stores(data: Any) -> list[LocatedStore]:
    """The stores of a `DataConfig`, each with the fingerprint it must have: `data.stores` (checked against
    their recorded `cache_spec`), then one per `data.extract_configs` (found by the YAML's fingerprint)."""
    located = [_explicit_store(store) for store in data.stores]
    for yaml_path in data.extract_configs:
        spec, yaml_root = cache_spec_from_yaml(yaml_path)
        root = data.cache_root or yaml_root
        fingerprint = fingerprint_for(spec)
        try:
            found = find_store(root, fingerprint)
        except FingerprintMismatch as exc:
            raise StoreNotFound(f"{exc}\n{_extract_hint(yaml_path, root, yaml_root)}") from exc
        if found is None:
            raise StoreNotFound(f"no feature store for {yaml_path}: {describe_missing(root, fingerprint)}\n"
                                f"{_extract_hint(yaml_path, root, yaml_root)}")
        located.append(LocatedStore(found, fingerprint))
    if not located:
        raise ConfigError("no feature stores: set data.extract_configs (extraction YAMLs) or data.stores")
    return located


class CachedFeatures:
    """A `FeatureSource` over several stores; each array id is read from the first store that has it.

    A key is `in` the source only when every store serving one of `array_ids` has it complete. `stores`
    come from `locate_stores`: each is opened expecting its fingerprint.
    """

    def __init__(self, stores: Sequence[LocatedStore], *, array_ids: Sequence[str]) -> None:
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
        self.readers = [StoreReader(store.path, expect=store.fingerprint,
                                    array_ids=[a for a in self.array_ids if owners[a] == store])
                        for store in dict.fromkeys(owners[a] for a in self.array_ids)]
        self._owner = {a: i for i, reader in enumerate(self.readers) for a in reader.array_ids}
        self._keys = frozenset.intersection(*(frozenset(r.keys) for r in self.readers))

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"CachedFeatures({[str(r.paths.root) for r in self.readers]})"

    def why_missing(self, key: str) -> str:
        """Why `key` is not served: never planned, in an incomplete shard, or failed (with the reason)."""
        for reader in self.readers:
            try:
                reader.row_of(key)
            except KeyNotInStore as exc:
                return str(exc)
        return f"key {key!r} is not in {self!r}"

    def reader_for(self, array_id: str) -> StoreReader:
        if array_id not in self._owner:
            raise KeyError(f"array {array_id!r} is not served here; serving {list(self.array_ids)}")
        return self.readers[self._owner[array_id]]

    def sample_shape(self, array_id: str) -> tuple[int, ...]:
        return self.reader_for(array_id).sample_shape(array_id)

    def cache_spec(self, array_id: str) -> Mapping[str, Any]:
        """The extraction settings recorded by the store holding `array_id` (model, grid, trials, seed)."""
        reader = self.reader_for(array_id)
        if "cache_spec" not in reader.attrs:
            raise StoreNotFound(f"store {reader.paths.root} records no cache_spec; re-create it with `just extract`")
        return reader.attrs["cache_spec"]

    def read(self, keys: list[str], array_ids: list[str]) -> dict[str, np.ndarray]:
        """`{array_id: (len(keys), *sample_shape)}` in the stored dtypes."""
        unknown = [a for a in array_ids if a not in self._owner]
        if unknown:
            raise KeyError(f"arrays {unknown} are not served here; serving {list(self.array_ids)}")
        out: dict[str, np.ndarray] = {}
        for index in dict.fromkeys(self._owner[a] for a in array_ids):
            wanted = [a for a in array_ids if self._owner[a] == index]
            out.update(self.readers[index].read(keys, wanted))
        return out


class OnTheFlyFeatures:
    """A `FeatureSource` computing an SD store's arrays from the images with the same `FeatureEncoder`
    the extraction uses: load → preprocess → latents rounded to the stored dtype → U-Net taps → arrays
    cast to the stored dtypes.

    Serves `latents` and the unconditional `NAME@tT` arrays of `spec` (DESIGN §3). Seconds per image at
    512 px on a CPU: for checks and debugging, not training.
    """

    def __init__(self, spec: CacheSpec, *, image_root: str | Path, device: str | None = None) -> None:
        if not spec.kind.has_latents:
            raise ValueError(f"on-the-fly features need a backbone with latents (sd), got encoder {spec.encoder!r}")
        # no prompt-conditioned arrays: the unconditional pass runs alone, as a store without them has it
        self.spec, self.image_root, self.device = replace(spec, prompt_sources=()), Path(image_root), device
        self.image_spec = image_spec_for(spec)
        self.served = tuple(self.spec.array_ids())
        self._encoder: SDFeatureEncoder | None = None
        self._shapes: dict[str, tuple[int, ...]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_encoder": None}  # each worker loads its own models

    def __contains__(self, key: object) -> bool:
        try:
            return isinstance(key, str) and safe_image_path(self.image_root, key).is_file()
        except ImageError:
            return False

    def __repr__(self) -> str:
        return f"OnTheFlyFeatures({self.spec.model}, images={self.image_root})"

    def why_missing(self, key: str) -> str:
        return f"no image file {key!r} under {self.image_root}"

    def sample_shape(self, array_id: str) -> tuple[int, ...]:
        if self._shapes is None:  # a forward on the meta device: no weights, no compute
            self._shapes = {a: shape for a, (shape, _) in array_shapes_for(self.spec).items()}
        return tuple(self._shapes[array_id])

    def cache_spec(self, array_id: str) -> Mapping[str, Any]:
        """The settings a store of these arrays would record (what `encoder_builder` reads)."""
        return spec_summary(self.spec)

    @property
    def encoder(self) -> SDFeatureEncoder:
        if self._encoder is None:
            self._encoder = SDFeatureEncoder.load(self.spec, device=self.device)
        return self._encoder

    def read(self, keys: list[str], array_ids: list[str]) -> dict[str, np.ndarray]:
        unknown = [a for a in array_ids if a not in self.served]
        if unknown:
            raise KeyError(f"on-the-fly features serve {list(self.served)}, not {unknown}")
        images = np.stack([np.asarray(preprocess(load_image(self.image_root, k, max_pixels=self.image_spec.max_pixels),
                                                 self.image_spec)) for k in keys])  # (B, R, R, 3) uint8
        latents = self.encoder.latents(images)
        computed = {LATENTS: latents, **self.encoder.features(latents, keys, array_ids=array_ids)}
        return self.encoder.stored({a: computed[a] for a in array_ids})
