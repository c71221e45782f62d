"""`just sweep SWEEP --dry-run`: what a sweep would extract, train and cost, before anything is spent.

The numbers are the public commands' own dry runs, never derived again here: `pipeline.plan.plan_extract`
for each unique extraction job (one per store, DESIGN §4: the union of the arrays its runs need) and
`train.plan.plan_training` for each training stage (a stage shared by several runs, e.g. one pretraining
feeding two SFTs, is planned and counted once). Nothing trains, extracts or starts Ray; the plan JSON and
the sweep's generated extraction YAMLs (the files the run writes first, which the training stages'
`data.extract_configs` name) are the only files written. Evaluation is listed, not priced (it has no
planner).

The headline, diffusion compute with the cache against the naive recipe:

    cached = sum over diffusion extraction jobs j of  E_j  +  sum over training stages s of  D_s
    naive  = sum over training stages s of  N_s
    ratio  = naive / cached

- `E_j`: `ExtractPlan.gflop["total"]` of job j — VAE, U-Net passes and text encoder for the images the
  job would compute (a store already filled costs nothing more). A job is diffusion when its encoder
  stores latents (`EncoderKind.has_latents`); a CLIP job is listed but not counted, as the naive recipe's
  CLIP tower is not (`train.plan` prices SD features only).
- `D_s`: `TrainPlan.gflop["diffusion"]` — what training still runs on the cached latents: the guided
  U-Net passes of a prompt known only at training time (question guidance, s > 0); 0 for unguided stages
  and for prompts the store holds (caption guidance reads `NAME@tT:caption`).
- `N_s`: `TrainPlan.gflop["diffusion"] + gflop["naive_extra"]` — the stage computing its features on the
  fly in every epoch: VAE encode and a full U-Net (plus, with question guidance, the text encoder and a
  second full U-Net) per image sample processed. It leaves out the `X_c` of a prompt source the store
  holds (caption guidance), which the cached side pays for in `E_j`: such ratios are conservative.

Both sides count the same training stages (sharing a pretraining between runs is the sweep's doing, not
the cache's). GPU-hours are `ComputeBudget.gpu_hours` of those GFLOP on the named GPU.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from llava_sweep.load import load_sweep
from llava_sweep.spec import TRAIN_STAGES, ExtractionJob, Stage, Sweep
from pipeline.config import split_config
from pipeline.plan import ExtractPlan, plan_extract, write_plan
from stages.config import ConfigError
from stages.console import add_overrides, parse_command_line
from stages.errors import UserError, print_user_error
from stages.flops import ComputeBudget, add_budget_arguments, budget_from_arguments
from stages.writable import check_writable_dir, check_writable_file
from train.config import load_stage_config
from train.plan import TrainPlan, plan_training

__all__ = ["PLAN_FILE", "SweepPlan", "plan_sweep", "main"]

PLAN_FILE = "sweep-plan.json"  # under the sweep's root unless --plan-json says


@dataclass
class SweepPlan:
    """The dry run's answer (`as_dict` is the JSON written, `render` the text printed). `extractions`,
    `stages` and `runs` are keyed by their names in the sweep; `totals["diffusion"]` holds the headline."""

    sweep: str
    root: str
    budget: dict[str, Any]
    world_size: int
    extractions: dict[str, dict[str, Any]]
    stages: dict[str, dict[str, Any]]
    runs: dict[str, dict[str, Any]]
    totals: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        gb = lambda n: f"{n / 1e9:.3f} GB"  # noqa: E731
        b, t, d, hours = self.budget, self.totals, self.totals["diffusion"], self.totals["gpu_hours"]
        trained = [s for s in self.stages.values() if "gflop" in s]
        lines = [f"sweep {self.sweep} ({self.root}): {len(self.runs)} runs, {len(trained)} training stages, "
                 f"{len(self.stages) - len(trained)} evaluations, {len(self.extractions)} extraction jobs",
                 f"  priced at {b['utilization']:.0%} of {b['gpu']} ({b['peak_tflops']:g} TFLOP/s dense), "
                 f"{self.world_size} rank(s) per training stage",
                 "extraction jobs (one per store: the union of the arrays its runs need):"]
        for name, e in self.extractions.items():
            lines += [f"  {name}: {e['store'] or '(store known once the model is downloaded)'}, {e['images']} images "
                      f"to compute, {gb(e['bytes'])}, {e['gflop']:.4g} GFLOP "
                      f"{'diffusion' if e['diffusion'] else '(not diffusion)'}, {e['gpu_hours']:.3g} GPU-h",
                      f"    arrays: {', '.join(e['arrays'])}", f"    runs: {', '.join(e['runs'])}"]
        lines.append("runs (training stages: samples, steps; GFLOP: diffusion from the cache / naive, LLM):")
        for name, r in self.runs.items():
            parts = [f"{s} ({self.stages[s]['samples']} samples, {self.stages[s]['steps']} steps)"
                     if "gflop" in self.stages[s] else s for s in r["stages"]]
            g = r["gflop"]
            lines += [f"  {name}: {' -> '.join(parts)}",
                      f"    diffusion {g['diffusion']:.4g} / {g['diffusion_naive']:.4g}, LLM {g['llm']:.4g}"]
        lines += [
            f"totals: {gb(t['bytes'])} stored; {hours['total']:.3g} GPU-hours on {b['gpu']} (extraction "
            f"{hours['extraction']:.3g}, training {hours['training']:.3g}; evaluation not priced)",
            f"diffusion with the cache: {d['cached_gflop']:.4g} GFLOP = extraction {d['extraction_gflop']:.4g} + "
            f"guided passes in training {d['guided_gflop']:.4g}; {d['cached_gpu_hours']:.3g} GPU-hours",
            f"diffusion naive (every training stage on the fly, every epoch): {d['naive_gflop']:.4g} GFLOP; "
            f"{d['naive_gpu_hours']:.3g} GPU-hours",
            f"naive / cached = {d['ratio']:.2f}x" if d["ratio"] is not None else "naive / cached: no ratio",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _extraction_row(job: ExtractionJob, plan: ExtractPlan, *, diffusion: bool) -> dict[str, Any]:
    return {"yaml": str(job.path), "store": plan.store, "arrays": list(plan.bytes_per_array),
            "images": plan.images["new"], "bytes": plan.bytes["total"], "gflop": plan.gflop["total"],
            "gpu_hours": plan.gpu_hours, "diffusion": diffusion, "runs": list(job.runs), "plan": plan.as_dict()}


def _stage_row(stage: Stage, plan: TrainPlan | None, runs: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": stage.kind, "output_dir": str(stage.output_dir), "after": list(stage.after),
                           "runs": list(runs)}
    if plan is None:  # evaluation: listed, not priced
        return row
    g = plan.gflop
    return {**row, "samples": plan.samples["total"], "steps": plan.steps["total"], "gpu_hours": plan.gpu_hours,
            "gflop": {"llm": g["llm"], "adapter": g["adapter"], "diffusion": g["diffusion"],
                      "diffusion_naive": g["diffusion"] + g["naive_extra"]},
            "plan": plan.as_dict()}


def _run_row(settings: Mapping[str, Any], stages: Sequence[str], extractions: Sequence[str],
             rows: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    trained = [rows[s] for s in stages if "gflop" in rows[s]]
    return {"settings": dict(settings), "stages": list(stages), "extractions": list(extractions),
            "gflop": {k: sum(r["gflop"][k] for r in trained) for k in ("diffusion", "diffusion_naive", "llm")}}


def plan_sweep(sweep: Sweep, budget: ComputeBudget, *, world_size: int = 1) -> SweepPlan:
    """The plan of `sweep` priced on `budget`, each training stage on `world_size` ranks; raises the
    `UserError`s the planners raise (a missing data file, model or tokenizer). The extraction jobs are
    planned first, from their values: their YAMLs are written only once those plans stand."""
    extractions = {}
    for name, job in sweep.extractions.items():
        config = split_config(job.values)
        extractions[name] = _extraction_row(job, plan_extract(config, budget=budget),
                                            diffusion=config.spec.kind.has_latents)
    sweep.write_extraction_configs()
    users: dict[str, list[str]] = {}
    for run in sweep.runs:
        for stage in run.stages:
            users.setdefault(stage, []).append(run.name)
    stages, shared = {}, {}  # `shared`: stages over equal data read and tokenize it once
    for name, stage in sweep.stages.items():
        plan = plan_training(load_stage_config(stage.kind, list(stage.overrides)), world_size=world_size,
                             budget=budget, shared=shared) if stage.kind in TRAIN_STAGES else None
        stages[name] = _stage_row(stage, plan, users.get(name, []))
    runs = {r.name: _run_row(r.settings, r.stages, r.extractions, stages) for r in sweep.runs}

    trained = [s for s in stages.values() if "gflop" in s]
    extraction = sum(e["gflop"] for e in extractions.values() if e["diffusion"])
    guided = sum(s["gflop"]["diffusion"] for s in trained)
    naive = sum(s["gflop"]["diffusion_naive"] for s in trained)
    cached = extraction + guided
    diffusion = {"extraction_gflop": extraction, "guided_gflop": guided, "cached_gflop": cached,
                 "naive_gflop": naive, "cached_gpu_hours": budget.gpu_hours(cached),
                 "naive_gpu_hours": budget.gpu_hours(naive), "ratio": naive / cached if cached else None}
    extract_hours = sum(e["gpu_hours"] for e in extractions.values())
    train_hours = sum(s["gpu_hours"] for s in trained)
    totals = {"bytes": sum(e["bytes"] for e in extractions.values()),
              "gpu_hours": {"extraction": extract_hours, "training": train_hours,
                            "total": extract_hours + train_hours},
              "diffusion": diffusion}
    notes = sorted({f"{e['yaml']}: {n}" for e in extractions.values() for n in e["plan"]["notes"]}
                   | {n for s in trained for n in s["plan"]["notes"]})
    if not cached:
        notes.append("nothing to compute with the cache (no diffusion store to fill, no guided pass): no ratio")
    return SweepPlan(sweep=sweep.name, root=str(sweep.root), budget=budget.as_dict(), world_size=world_size,
                     extractions=extractions, stages=stages, runs=runs, totals=totals, notes=notes)


def main(argv: Sequence[str]) -> int:
    """`python -m llava_sweep.cli sweep SWEEP [key=value ...] --dry-run [--plan-json FILE] [--world-size N]
    [--gpu NAME] [--gpu-tflops X] [--utilization U]`; exit 0, or 2 with one line for a setup problem."""
    parser = argparse.ArgumentParser(prog="sweep --dry-run", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="the sweep file (configs/sweeps/*.yaml)")
    add_overrides(parser, help="key=value overrides of the sweep file (root=..., ...)")
    parser.add_argument("--plan-json", default=None, help=f"where the plan is written (default: <root>/{PLAN_FILE})")
    parser.add_argument("--world-size", type=int, default=1, help="ranks (GPUs) of each training stage")
    add_budget_arguments(parser)
    args = parse_command_line(parser, argv)
    try:
        if args.world_size < 1:
            raise ConfigError(f"--world-size must be >= 1, got {args.world_size}")
        budget = budget_from_arguments(args)
        sweep = load_sweep(args.sweep, args.overrides)
        path = Path(args.plan_json or sweep.root / PLAN_FILE)
        check_writable_file(path, setting="--plan-json" if args.plan_json else "the plan file (in the sweep's root)")
        check_writable_dir(sweep.root, setting="root")  # the generated extraction YAMLs go there
        plan = plan_sweep(sweep, budget, world_size=args.world_size)
    except UserError as exc:
        return print_user_error("sweep", exc)
    print(plan.render())
    print(f"wrote {write_plan(plan, path)}")
    return 0
