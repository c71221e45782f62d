"""`just train-pretrain --dry-run` / `train-sft --dry-run`: samples, steps, FLOPs and bytes of a run, and
what the same run would cost computing its diffusion features on the fly. Nothing trains: the LLM's
config and tokenizer are read (no weights), the stores are opened read-only, DeepSpeed never starts.

FLOPs per training sample (GFLOP, 1e9 operations, a multiply-add = 2):

- LLM: `k · P · L` with `P` its parameters without the input embedding table (a lookup, no
  multiply; tied with the head it is counted once, as the head), `L` the sample's tokens after the
  image placeholder is replaced by the image tokens (capped at `max_length`; no padding), and `k = 6`
  when its weights train (forward 2, weight and input gradients 2 + 2: SFT), `k = 4` when frozen
  (forward 2 and the input gradients 2 that reach the adapter: pretraining);
- adapter: 3 × its forward (counted on the meta device), for image samples;
- diffusion from the cache: 0, except question guidance (`s > 0`): one U-Net pass on the cached latents
  up to the tap per trial plus the question through the text encoder, for the `1 − prompt_dropout` of
  image samples that keep their prompt;
- the naive on-the-fly recipe for comparison: per image sample and epoch, the VAE encode, a full U-Net
  forward for `X_u` and (question guidance) another for `X_c` plus the text encoder (docs/training.md).

Token lengths are measured on up to `TOKEN_SAMPLE` records drawn evenly (all of them when fewer).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from stages.cache_spec import CacheSpec, cache_spec_from_yaml
from stages.config import ConfigError
from stages.console import add_overrides, parse_command_line
from stages.errors import UserError, print_user_error
from stages.flops import ComputeBudget, add_budget_arguments, architecture_dir, budget_from_arguments, count_gflop
from stages.llava import load_llava_json
from stages.models import resolve_model_dir
from stages.serving import CachedFeatures
from stages.store.compact import sample_nbytes, stored_parts
from stages.writable import check_writable_file
from train.conditioning import required_arrays, run_guidance
from train.config import TrainConfig, load_stage_config
from train.conversation import IMAGE_TOKEN_INDEX
from train.data import DataReport, LlavaDataset
from train.model import load_tokenizer
from train.resume import total_steps
from train.sampler import make_sampler
from train.stores import locate_stores, resolve_data_path, shard_cache

__all__ = ["TOKEN_SAMPLE", "TrainPlan", "plan_training", "llm_parameters", "main"]

TOKEN_SAMPLE = 2000


@dataclass(frozen=True)
class _Arrays:
    """What the plan knows about the arrays a run reads: their sample shapes, stored bytes per sample and
    the `CacheSpec` each was extracted with; `source` is the stores (None: none found yet)."""

    shapes: Mapping[str, tuple[int, ...]]
    bytes: Mapping[str, int]
    specs: Mapping[str, CacheSpec]
    source: CachedFeatures | None


def _arrays_from_stores(config: TrainConfig, array_ids: Sequence[str]) -> _Arrays:
    source = CachedFeatures(locate_stores(config.data), array_ids=array_ids, cache=shard_cache(config.data))
    infos = {a: source.reader_for(a).infos[a] for a in array_ids}
    return _Arrays(shapes={a: i.sample_shape for a, i in infos.items()},
                   bytes={a: source.reader_for(a).meta.sample_nbytes(a) for a in array_ids},
                   specs={a: source.spec_of(a) for a in array_ids},
                   source=source)


def _arrays_from_yamls(config: TrainConfig, array_ids: Sequence[str]) -> _Arrays:
    """The same from the extraction YAMLs, for a run whose stores are not extracted yet."""
    shapes, specs = {}, {}
    for yaml_path in config.data.extract_configs:
        spec, _ = cache_spec_from_yaml(yaml_path)
        found = {a for a in array_ids if a in spec.array_ids() and a not in specs}
        if found:
            sample_shapes = spec.kind.sample_shapes(spec, architecture_dir(spec.model)[0])
            shapes.update({a: tuple(sample_shapes[a]) for a in found})
            specs.update({a: spec for a in found})
    missing = [a for a in array_ids if a not in specs]
    if missing:
        raise ConfigError(f"arrays {missing} are in none of data.extract_configs {list(config.data.extract_configs)}")
    dtypes = {a: specs[a].stored_dtype(a) for a in array_ids}  # + a crc32c per zarr array (a compact one has two)
    return _Arrays(shapes=shapes, bytes={a: sample_nbytes(shapes[a], dtypes[a])
                                         + 4 * len(stored_parts(a, shapes[a], dtypes[a])) for a in array_ids},
                   specs=specs, source=None)


def llm_parameters(model: str) -> tuple[int, int]:
    """(parameters counted in `k·P·L`, hidden size) of a causal LM, from its config on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    llm_config = AutoConfig.from_pretrained(resolve_model_dir(model))
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(llm_config)
    total = sum(p.numel() for p in llm.parameters())
    embedding, head = llm.get_input_embeddings().weight, llm.get_output_embeddings().weight
    return (total if embedding is head else total - embedding.numel()), int(llm_config.hidden_size)


def _adapter(config: TrainConfig, arrays: _Arrays, hidden: int) -> tuple[int, float]:
    """(parameters, GFLOP of one training pass = 3 x forward) of the vision adapter for one image."""
    import torch

    from train.fusion import build_adapter

    vision = config.vision
    with torch.device("meta"):
        adapter = build_adapter(vision, feature_dims={a: arrays.shapes[a][-1] for a in vision.array_ids},
                                hidden_size=hidden)
        features = {a: torch.empty(1, *arrays.shapes[a]) for a in vision.array_ids}
    return sum(p.numel() for p in adapter.parameters()), 3 * count_gflop(lambda: adapter(features))


def _token_lengths(dataset: LlavaDataset, image_tokens: int) -> np.ndarray:
    """Tokens the LLM sees for up to `TOKEN_SAMPLE` records drawn evenly: text ids with each image
    placeholder replaced by `image_tokens`, capped at `max_length` (as `splice_image_tokens` cuts)."""
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), TOKEN_SAMPLE)).astype(int))
    lengths = []
    for index in picks:
        ids = dataset[int(index)].input_ids
        images = int((ids == IMAGE_TOKEN_INDEX).sum())
        lengths.append(min(len(ids) + images * (image_tokens - 1), dataset.max_length))
    return np.asarray(lengths, dtype=np.float64)


def _diffusion_gflop(config: TrainConfig, arrays: _Arrays) -> tuple[float, float]:
    """(per image sample from the cache, per image sample naive on the fly) of the SD array's features."""
    vision, guidance = config.vision, config.guidance
    if "sd" not in vision.mode_spec.reads:
        return 0.0, 0.0
    spec = replace(arrays.specs[vision.sd_array], prompt_sources=())
    model_dir, _ = architecture_dir(spec.model)
    settings = run_guidance(vision, guidance)
    naive = sum(spec.kind.image_gflop(spec, model_dir, array_ids=[vision.sd_array], early_exit=False).values())
    if not settings.runs_unet:
        return 0.0, naive
    guided = functools.partial(spec.kind.guided_gflop, spec, model_dir, vision.sd_array, source=settings.prompt_source)
    return (1 - guidance.prompt_dropout) * guided(), naive + guided(early_exit=False)


@dataclass
class TrainPlan:
    """The dry run's answer (`as_dict` is the JSON written, `render` the text printed)."""

    stage: str
    world_size: int
    samples: dict[str, Any]
    steps: dict[str, int]
    tokens_per_sample: dict[str, float]
    parameters: dict[str, int]
    gflop_per_sample: dict[str, float]
    gflop: dict[str, float]
    bytes_read_per_epoch: int
    budget: dict[str, Any]
    gpu_hours: float
    notes: list[str] = field(default_factory=list)
    bytes_to_download: int = 0  # from object stores, given what the local cache holds now

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        s, st, g, f = self.samples, self.steps, self.gflop_per_sample, self.gflop
        lines = [
            f"plan: {self.stage} on {self.world_size} rank(s)",
            f"  samples: {s['total']} ({s['image']} with an image, {s['text_only']} text-only), {s['not_cached']} "
            f"not in the cache, {s['per_epoch_used']} used per epoch",
            f"  steps: {st['per_epoch']} per epoch x {st['epochs']:g} epochs = {st['total']} steps of "
            f"{st['global_batch']} samples ({st['micro_batch']} x {st['accumulation']} accumulation x "
            f"{self.world_size} ranks)",
            f"  tokens per sample: mean {self.tokens_per_sample['mean']:.1f}, max {self.tokens_per_sample['max']:.0f} "
            f"(from {self.tokens_per_sample['measured']} samples)",
            f"  GFLOP per sample: LLM {g['llm']:.3f} ({g['llm_factor']:g} x {self.parameters['llm']:,} params x tokens), "
            f"adapter {g['adapter']:.4f}, diffusion {g['diffusion']:.3f} from the cache vs {g['diffusion_naive']:.3f} "
            f"naive on the fly",
            f"  run: {f['total'] / 1e6:.4g} PFLOP ({f['diffusion'] / 1e6:.4g} of it diffusion); the naive recipe "
            f"would add {f['naive_extra'] / 1e6:.4g} PFLOP ({f['naive_over_cached']:.2f}x the run)",
            f"  at {self.budget['utilization']:.0%} of {self.budget['gpu']} ({self.budget['peak_tflops']:g} TFLOP/s "
            f"dense): {self.gpu_hours:.3g} GPU-hours; reads {self.bytes_read_per_epoch / 1e9:.3f} GB per epoch",
            f"  egress: downloads {self.bytes_to_download / 1e9:.3f} GB from object stores (the local cache holds "
            "the rest; local stores download nothing)",
        ]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


@dataclass(frozen=True)
class _Samples:
    """What the plan reads of a stage's samples: counts (images not in the stores dropped), token lengths
    of up to `TOKEN_SAMPLE` of them, and the sampler's micro-batches per epoch on one rank."""

    total: int
    image: int
    report: DataReport  # samples skipped for their image, trailing human turns dropped
    lengths: np.ndarray
    batches_per_epoch: int


def _samples(config: TrainConfig, arrays: _Arrays, array_ids: Sequence[str], *, image_tokens: int,
             world_size: int) -> _Samples:
    data_path, _ = resolve_data_path(config.data.data_path)
    tokenizer = load_tokenizer(config.model)
    dataset = LlavaDataset(load_llava_json(data_path), template=config.template, tokenizer=tokenizer,
                           max_length=config.max_length, num_image_tokens=image_tokens,
                           feature_source=arrays.source, array_ids=array_ids, missing="skip")
    if len(dataset) == 0:
        raise ConfigError(f"no samples of {data_path} can be trained on: {dataset.report.explain()}")
    text = LlavaDataset(dataset.records, template=config.template, tokenizer=tokenizer, max_length=config.max_length,
                        num_image_tokens=image_tokens, feature_source=None, array_ids=())
    sampler = make_sampler(config, dataset, world_size=world_size, rank=0)
    sampler.set_epoch(0)
    return _Samples(total=len(dataset), image=sum(r.get("image") is not None for r in dataset.records),
                    report=dataset.report, lengths=_token_lengths(text, image_tokens),
                    batches_per_epoch=len(sampler) // config.per_device_batch_size)


# TrainConfig fields that do not change its samples (beyond the arrays read and their token count), or that
# `_samples_key` keys apart (`data`)
_NOT_SAMPLES = ("vision", "guidance", "pretrained_adapter", "output_dir", "data")


def _samples_key(config: TrainConfig, arrays: _Arrays, array_ids: Sequence[str], *, image_tokens: int,
                 world_size: int) -> tuple:
    """What `_samples` depends on: the stores and the arrays read only when stores are there (which images
    they hold), else neither (every image counts as cached)."""
    data = config.data if arrays.source is not None else replace(config.data, extract_configs=(), stores=(),
                                                                     cache_root="")
    return (tuple((f.name, getattr(config, f.name)) for f in fields(config) if f.name not in _NOT_SAMPLES), data,
            tuple(array_ids) if arrays.source is not None else (), image_tokens, world_size)


def plan_training(config: TrainConfig, *, world_size: int, budget: ComputeBudget,
                  shared: dict[Any, Any] | None = None) -> TrainPlan:
    """The plan of `config` on `world_size` ranks; raises the `UserError`s the run would raise first
    (config, data file, model, tokenizer), except a missing store: then the extraction YAMLs are used.

    `shared`: one dict passed to the plans of several stages (a sweep's), so that stages over equal data
    (`_samples_key`) read, check and tokenize their samples once (a minute for mix665k on two cores)."""
    vision, notes = config.vision, []
    array_ids = required_arrays(vision, config.guidance)
    try:
        arrays = _arrays_from_stores(config, array_ids)
    except UserError as exc:
        arrays = _arrays_from_yamls(config, array_ids)
        notes.append(f"no usable store yet ({str(exc).splitlines()[0]}): shapes from the extraction YAMLs, every "
                     "image counted as cached")
    image_tokens = arrays.shapes[vision.token_array][0]
    key = _samples_key(config, arrays, array_ids, image_tokens=image_tokens, world_size=world_size)
    samples = shared.get(key) if shared is not None else None
    if samples is None:
        samples = _samples(config, arrays, array_ids, image_tokens=image_tokens, world_size=world_size)
        if shared is not None:
            shared[key] = samples
    report = samples.report
    if report.skipped:
        then = "the run stops (data.missing=error)" if config.data.missing == "error" else "data.missing=skip"
        notes.append(f"{then}: {report.explain()}")
    elif report.trailing_human_turns:
        notes.append(report.render())
    lengths = samples.lengths
    per_epoch, total = total_steps(config, batches_per_epoch=samples.batches_per_epoch)
    batch = config.per_device_batch_size * config.gradient_accumulation_steps * world_size

    image_share = samples.image / samples.total
    llm_params, hidden = llm_parameters(config.model)
    adapter_params, adapter_gflop = _adapter(config, arrays, hidden)
    factor = 4 if config.freeze_llm else 6
    cached, naive = _diffusion_gflop(config, arrays)
    per_sample = {"llm": factor * llm_params * float(lengths.mean()) / 1e9, "llm_factor": factor,
                  "adapter": image_share * adapter_gflop, "diffusion": image_share * cached,
                  "diffusion_naive": image_share * naive}
    processed = total * batch
    totals = {"llm": per_sample["llm"] * processed, "adapter": per_sample["adapter"] * processed,
              "diffusion": per_sample["diffusion"] * processed}
    totals["total"] = sum(totals.values())
    totals["naive_extra"] = (per_sample["diffusion_naive"] - per_sample["diffusion"]) * processed
    totals["naive_over_cached"] = (totals["total"] + totals["naive_extra"]) / totals["total"]
    bytes_per_image = sum(arrays.bytes.values())
    return TrainPlan(
        stage=config.stage, world_size=world_size,
        samples={"total": samples.total, "image": samples.image, "text_only": samples.total - samples.image,
                 "not_cached": report.num_skipped, "per_epoch_used": per_epoch * batch, **report.as_dict()},
        steps={"per_epoch": per_epoch, "total": total, "epochs": total / per_epoch, "global_batch": batch,
               "micro_batch": config.per_device_batch_size, "accumulation": config.gradient_accumulation_steps},
        tokens_per_sample={"mean": float(lengths.mean()), "max": float(lengths.max()), "measured": len(lengths),
                           "image_tokens": image_tokens},
        parameters={"llm": llm_params, "adapter": adapter_params}, gflop_per_sample=per_sample, gflop=totals,
        bytes_read_per_epoch=round(per_epoch * batch * image_share * bytes_per_image),
        budget=budget.as_dict(), gpu_hours=budget.gpu_hours(totals["total"]), notes=notes,
        bytes_to_download=0 if arrays.source is None else sum(
            reader.download_bytes() for reader in arrays.source.readers))


def main(stage: str, argv: Sequence[str]) -> int:
    """`python -m train.cli STAGE --dry-run [key=value ...] [--world-size N] [--plan-json FILE] [--gpu ...]`."""
    parser = argparse.ArgumentParser(prog=f"train {stage} --dry-run", description=__doc__.splitlines()[0])
    add_overrides(parser, help="config=PATH and any config field as key=value")
    parser.add_argument("--dry-run", action="store_true", help="(this plan)")
    parser.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", "1")),
                        help="ranks (GPUs) the run would use (default: $WORLD_SIZE or 1)")
    parser.add_argument("--plan-json", default=None,
                        help=f"where the plan is written (default: <output_dir>/train-{stage}-plan.json)")
    add_budget_arguments(parser)
    args = parse_command_line(parser, argv)
    try:
        if args.world_size < 1:
            raise ConfigError(f"--world-size must be >= 1, got {args.world_size}")
        config = load_stage_config(stage, args.overrides)
        path = Path(args.plan_json or Path(config.output_dir) / f"train-{stage}-plan.json")
        check_writable_file(path, setting="--plan-json" if args.plan_json else "the plan file (in output_dir)")
        plan = plan_training(config, world_size=args.world_size, budget=budget_from_arguments(args))
    except UserError as exc:
        return print_user_error(f"train {stage}", exc)
    print(plan.render())
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **plan.as_dict()}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0

