"""Serving features for image keys: the one room training, evaluation, analysis and the extraction worker
call (DESIGN §1).

- `locate`: a spec's store, by the fingerprint of an extraction YAML or an explicit directory checked
  against its recorded spec; missing or different stores name the `just extract` command that fills them.
- `source`: `SpecFeatures` (one spec: its store's rows, the spec's encoder for the rest, changed image files
  computed from the file) and `CachedFeatures` (several stores), both `FeatureSource`s.
- `compute`: `compute_arrays`, the extraction's own computation (images or stored latents -> stored
  dtypes), and whether a prompt source needs a U-Net pass when served (`needs_unet_pass`).
- `guidance`: `Guidance`, `X_u + s·(X_c − X_u)` with `X_c` stored or from a pass on stored latents.
"""
from stages.serving.compute import MissingPrompts, compute_arrays, load_encoder, load_images, needs_unet_pass
from stages.serving.guidance import Guidance, prompted_features
from stages.serving.locate import LocatedStore, YamlStore, explicit_store, find_yaml_store
from stages.serving.source import NO_IMAGE_FILE, CachedFeatures, FeatureSource, MissingKey, SpecFeatures

__all__ = ["FeatureSource", "MissingKey", "NO_IMAGE_FILE", "SpecFeatures", "CachedFeatures", "LocatedStore",
           "YamlStore", "find_yaml_store", "explicit_store", "Guidance", "prompted_features", "MissingPrompts",
           "compute_arrays", "load_encoder", "load_images", "needs_unet_pass"]
