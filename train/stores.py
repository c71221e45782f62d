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

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from stages.cache_spec import (LATENTS, CacheSpec, array_ids_for, array_shapes_for, cache_spec_from, extraction_spec_for,
                               fingerprint_for, image_spec_for, spec_summary)
from stages.config import ConfigError, load_config
from stages.store import FingerprintMismatch, StoreReader, find_store
from stages.store.registry import describe_missing

__all__ = ["SAMPLE_DATA", "StoreNotFound", "resolve_data_path", "cache_spec_from_yaml", "locate_stores",
           "CachedFeatures", "OnTheFlyFeatures"]

# data_path values naming the bundled sample's JSON files (built on first use, never downloaded)
SAMPLE_DATA = {"embedded:sample-pretrain": "pretrain_json", "embedded:sample-sft": "sft_json"}


class StoreNotFound(FileNotFoundError):
    """No store holds what the config asks for; the message says which command fills it."""


def _sample():
    from stages.embedded.sample import bundled_sample_dir, ensure_sample

    return ensure_sample(bundled_sample_dir())


def resolve_data_path(data_path: str) -> tuple[Path, Path | None]:
    """(LLaVA JSON, image root or None): `embedded:sample-*` is the bundled sample, anything else a file."""
    if data_path in SAMPLE_DATA:
        sample = _sample()
        return Path(getattr(sample, SAMPLE_DATA[data_path])), Path(sample.image_root)
    if data_path.startswith("embedded:"):
        raise ConfigError(f"unknown data_path {data_path!r}; embedded data: {sorted(SAMPLE_DATA)}")
    path = Path(data_path)
    if not path.is_file():
        raise ConfigError(f"data.data_path {data_path!r} is not a file (a LLaVA JSON)")
    return path, None


def cache_spec_from_yaml(path: str | Path) -> tuple[CacheSpec, str]:
    """The `CacheSpec` of an extraction YAML (its run fields ignored) and the YAML's `cache_root`."""
    values = load_config(path)
    return cache_spec_from(values, where=str(path)), str(values.get("cache_root", "cache"))


def _extract_hint(yaml_path: str, root: str, yaml_root: str) -> str:
    extra = f" cache_root={root}" if root != yaml_root else ""
    return f"fill it with:  just extract config={yaml_path}{extra}"


def locate_stores(data: Any) -> list[Path]:
    """Store directories for a `DataConfig`: `data.stores` as given, then one per `data.extract_configs`."""
    paths = []
    for store in data.stores:
        if not (Path(store) / "fingerprint.json").is_file():
            raise StoreNotFound(f"data.stores entry {store} is not a feature store (no fingerprint.json)")
        paths.append(Path(store))
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
        paths.append(found)
    if not paths:
        raise ConfigError("no feature stores: set data.extract_configs (extraction YAMLs) or data.stores")
    return paths


class CachedFeatures:
    """A `FeatureSource` over several stores; each array id is read from the first store that has it.

    A key is `in` the source only when every store serving one of `array_ids` has it complete.
    """

    def __init__(self, stores: Sequence[str | Path], *, array_ids: Sequence[str]) -> None:
        owners: dict[str, Path] = {}
        held: dict[Path, list[str]] = {}
        for store in map(Path, stores):
            held[store] = sorted(StoreReader(store).infos)
            for array_id in held[store]:
                owners.setdefault(array_id, store)
        missing = [a for a in array_ids if a not in owners]
        if missing:
            listing = "; ".join(f"{p} has {ids}" for p, ids in held.items())
            raise StoreNotFound(f"arrays {missing} are in none of the stores ({listing}); add the feature name, "
                                "timestep or prompt source to the extraction YAML and run `just extract` again")
        self.array_ids = tuple(array_ids)
        self.readers = [StoreReader(store, array_ids=[a for a in self.array_ids if owners[a] == store])
                        for store in dict.fromkeys(owners[a] for a in self.array_ids)]
        self._owner = {a: i for i, reader in enumerate(self.readers) for a in reader.array_ids}
        self._keys = frozenset.intersection(*(frozenset(r.keys) for r in self.readers))

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"CachedFeatures({[str(r.paths.root) for r in self.readers]})"

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
            raise KeyError(f"store {reader.paths.root} records no cache_spec; re-create it with `just extract`")
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
    """A `FeatureSource` computing an SD store's arrays from the images: load → preprocess → VAE →
    latents rounded to the stored dtype → U-Net taps → pooled features cast to the stored dtype.

    Serves `latents` and the unconditional `NAME@tT` arrays of `spec` with the values the extraction
    writes (DESIGN §3). Seconds per image at 512 px on a CPU: for checks and debugging, not training.
    """

    def __init__(self, spec: CacheSpec, *, image_root: str | Path, device: str | None = None) -> None:
        if spec.encoder != "sd":
            raise ValueError(f"on-the-fly features need an SD spec, got encoder {spec.encoder!r}")
        self.spec, self.image_root, self.device = spec, Path(image_root), device
        self.image_spec = image_spec_for(spec)
        self.served = tuple(a for a in array_ids_for(spec) if ":" not in a)  # no prompt-conditioned arrays
        self._extractor = None
        self._shapes: dict[str, tuple[int, ...]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_extractor": None}  # each worker loads its own models

    def __contains__(self, key: object) -> bool:
        from stages.preprocess import ImageError, safe_image_path

        try:
            return isinstance(key, str) and safe_image_path(self.image_root, key).is_file()
        except ImageError:
            return False

    def __repr__(self) -> str:
        return f"OnTheFlyFeatures({self.spec.model}, images={self.image_root})"

    def sample_shape(self, array_id: str) -> tuple[int, ...]:
        if self._shapes is None:  # a forward on the meta device: no weights, no compute
            self._shapes = {a: shape for a, (shape, _) in array_shapes_for(self.spec).items()}
        return tuple(self._shapes[array_id])

    def cache_spec(self, array_id: str) -> Mapping[str, Any]:
        """The settings a store of these arrays would record (what `extractor_builder` reads)."""
        return spec_summary(self.spec)

    @property
    def extractor(self) -> Any:
        if self._extractor is None:
            from stages.extractor import SDExtractor
            from stages.models import load_sd_components

            spec = self.spec
            self._extractor = SDExtractor(load_sd_components(spec.model, device=self.device),
                                          extraction_spec_for(spec))
        return self._extractor

    def read(self, keys: list[str], array_ids: list[str]) -> dict[str, np.ndarray]:
        import torch

        from stages.preprocess import load_image, preprocess, to_tensor

        unknown = [a for a in array_ids if a not in self.served]
        if unknown:
            raise KeyError(f"on-the-fly features serve {list(self.served)}, not {unknown}")
        images = [load_image(self.image_root, k, max_pixels=self.image_spec.max_pixels) for k in keys]
        pixels = torch.stack([to_tensor(preprocess(im, self.image_spec)) for im in images])  # (B, 3, R, R)
        z0 = self.extractor.encode(pixels).to(getattr(torch, self.spec.latents_dtype)).float()  # (B, 4, h, w)
        computed = {LATENTS: z0, **self.extractor.features(z0, keys)}
        dtypes = {a: self.spec.latents_dtype if a == LATENTS else self.spec.feature_dtype for a in array_ids}
        return {a: computed[a].float().cpu().numpy().astype(dtypes[a]) for a in array_ids}
