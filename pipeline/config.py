"""Extraction config: the `CacheSpec` fields (what is stored) plus run fields (how it is computed).

One flat YAML (`configs/extract/*.yaml`) with `key=value` overrides; the cache fields decide the
fingerprint, the run fields never do.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from stages.cache_spec import CacheSpec, cache_spec_from
from stages.config import ConfigError, build_dataclass, load_config, parse_overrides
from stages.locations import DEFAULT_CACHE_ROOT, REPO, SAMPLE, is_sample_data, resolve_sample_data
from stages.models import PRECISIONS, resolve_model_dir
from stages.preprocess import ImageSpec
from stages.writable import check_writable_dir

__all__ = ["RunConfig", "ExtractConfig", "DEFAULT_CONFIG", "RUNNERS", "load_extract_config", "split_config",
           "resolve_data", "check_setup"]

DEFAULT_CONFIG = REPO / "configs" / "extract" / "sample.yaml"
RUNNERS = ("ray", "sequential")  # pipeline.runner
RAY_ADDRESS = r"auto|(ray://)?\[?[\w.:-]*[\w\]]:\d+"  # auto, HOST:PORT, ray://HOST:PORT ([::1]:PORT too)


@dataclass(frozen=True)
class RunConfig:
    """How a run executes; none of these fields changes a stored value."""

    data: tuple[str, ...] = (SAMPLE,)  # LLaVA JSON files (558k / mix665k format), or one embedded:sample name
    image_root: str | None = None  # folder the JSON `image` paths are relative to
    cache_root: str = DEFAULT_CACHE_ROOT
    batch_size: int = 8  # images per extractor call, formed deterministically inside a shard
    shard_size: int | None = None  # rows per store shard = the unit of work (None: the store's; 256 for a new one)
    num_actors: int = 1  # extractor actors (one GPU each on CUDA hosts)
    cpus_per_actor: float = 1.0  # CPU actors: also the torch thread count
    actor_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per actor ({"a100": 1})
    retries: int = 2  # re-runs in a row, with no shard completing, when the cluster loses an actor or a node
    ray_address: str | None = None  # None: embedded ray.init(); "auto" or "ray://host:10001": a cluster
    num_cpus: int | None = None  # CPUs of the embedded Ray (None: all)
    device: str = "auto"  # auto: cuda if available, else cpu
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU; or fp32, bf16, fp16 (stages.models.resolve_precision)
    write_webdataset: bool = True
    max_pixels: int = ImageSpec.max_pixels  # decompression-bomb limit
    retry_failed: bool = False  # decode again the images an earlier run recorded as failed
    runner: str = "ray"  # ray: the Ray Data job; sequential: the same work units in this process, no Ray
    # images decoded and resized per second on one CPU core, which sizes the dry run's CPU side: `just
    # bench-decode` measures a machine's; the default is the development machine's (2-core x86 VM, 512 px,
    # the bundled sample's 0.13 MP photos on average, 2026-11-27)
    decode_rate: float = 57.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or (self.shard_size is not None and self.shard_size < 1) or self.num_actors < 1:
            raise ConfigError("batch_size, shard_size and num_actors must be >= 1")
        if not self.data:
            raise ConfigError("data must list at least one LLaVA JSON file (or embedded:sample)")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device {self.device!r} is not auto, cpu, cuda or cuda:N")
        if not isinstance(self.actor_resources, dict) or not all(
                isinstance(k, str) and k not in ("CPU", "GPU", "memory") and isinstance(v, (int, float))
                and not isinstance(v, bool) and math.isfinite(v) and v > 0 for k, v in self.actor_resources.items()):
            raise ConfigError(f"actor_resources must map custom Ray resource names (not CPU, GPU or memory: "
                              f"cpus_per_actor and device set those) to amounts > 0, got {self.actor_resources!r}")
        if self.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {self.retries}")
        if not (math.isfinite(self.cpus_per_actor) and self.cpus_per_actor > 0):
            raise ConfigError(f"cpus_per_actor must be > 0 (fractions are fine: 0.5), got {self.cpus_per_actor}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"num_cpus must be >= 1 (or null: all of this machine's), got {self.num_cpus}")
        if not (math.isfinite(self.decode_rate) and self.decode_rate > 0):
            raise ConfigError(f"decode_rate must be > 0 images/s per core (`just bench-decode` measures it), "
                              f"got {self.decode_rate}")
        if self.max_pixels < 1:
            raise ConfigError(f"max_pixels must be >= 1 (the largest image, in pixels, that is decoded; default "
                              f"{ImageSpec.max_pixels}), got {self.max_pixels}")
        if self.ray_address is not None and not re.fullmatch(RAY_ADDRESS, self.ray_address):
            raise ConfigError(f"ray_address={self.ray_address!r} is not auto, HOST:PORT (the head's GCS, `ray start "
                              "--head --port`) or ray://HOST:PORT (Ray Client); null starts an embedded Ray")
        if self.precision != "auto" and self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is not one of {('auto', *PRECISIONS)}")
        if self.runner not in RUNNERS:
            raise ConfigError(f"runner {self.runner!r} is not one of {RUNNERS}")
        if self.runner == "sequential" and (self.ray_address is not None or self.num_actors > 1):
            raise ConfigError("runner=sequential computes the shards one after another in this process: it takes "
                              "no ray_address and one actor (num_actors=1); use runner=ray for a cluster or a pool")

    @property
    def decode_limits(self) -> dict[str, int]:
        """The settings that decide which images fail to decode, recorded with every shard (a later run with
        other limits tries the recorded failures again)."""
        return {"max_pixels": self.max_pixels}


@dataclass(frozen=True)
class ExtractConfig:
    spec: CacheSpec
    run: RunConfig
    path: Path | None = None  # the YAML it was read from (recorded in the store with the data it extracted)


def split_config(values: Mapping[str, Any]) -> ExtractConfig:
    """Route each top-level field to `CacheSpec` or `RunConfig`; unknown fields are an error."""
    spec_fields = {f.name for f in dataclasses.fields(CacheSpec)}
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - spec_fields - run_fields)
    if unknown:
        raise ConfigError(f"unknown extract config field(s) {unknown}; valid: {sorted(spec_fields | run_fields)}")
    spec = cache_spec_from(values, where="cache")
    run = build_dataclass(RunConfig, {k: v for k, v in values.items() if k in run_fields}, where="run")
    return ExtractConfig(spec=spec, run=run)


def load_extract_config(overrides: Sequence[str] = ()) -> ExtractConfig:
    """`configs/extract/sample.yaml` unless `config=PATH` is among the overrides."""
    config = split_config(load_config(DEFAULT_CONFIG, overrides))
    return dataclasses.replace(config, path=Path(parse_overrides(overrides).get("config", DEFAULT_CONFIG)).resolve())


def resolve_data(run: RunConfig) -> tuple[list[Path], Path]:
    """(LLaVA JSON files, image root). A bundled-sample name (`stages.locations.SAMPLE_DATA`; `embedded:sample`
    is both its JSON files, deduplicated by the manifest) stands alone and is built on first use."""
    samples = [d for d in run.data if is_sample_data(d)]
    if samples:
        if len(run.data) != 1:
            raise ConfigError(f"{samples[0]} cannot be combined with other data files")
        return resolve_sample_data(samples[0])
    if run.image_root is None:
        raise ConfigError("image_root must be set: the folder the `image` paths of the JSON files are relative to")
    return [Path(p) for p in run.data], Path(run.image_root)


def check_setup(config: ExtractConfig) -> None:
    """What can be refused before any store is opened or Ray is started: a cache root this process cannot
    write in, the spec against the model's configs (the registry entry's `check_model`: e.g. SD timesteps
    and feature names), and a CUDA device on a driver without one (a cluster's GPUs are checked once
    connected, in `pipeline.job`). The checks that need the plan follow in `pipeline.driver`."""
    spec, run = config.spec, config.run
    check_writable_dir(run.cache_root, setting="cache_root")
    spec.kind.check_model(spec, resolve_model_dir(spec.model))
    if run.ray_address is None and run.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device={run.device} but torch sees no CUDA GPU on this machine; "
                              "use device=auto or device=cpu (or ray_address=... for a GPU cluster)")
