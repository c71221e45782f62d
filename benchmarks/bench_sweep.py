"""`just bench-sweep`: a sweep's wall time against the same training stages each computing their features on
the fly, measured side by side in one run, next to the planned diffusion ratios.

Everything the sweep writes goes to a fresh temporary folder (its root and its cache root), so the cached
side pays for its extraction:

1. the plan (`llava_sweep.plan.plan_sweep`, before anything is extracted: every image still to compute);
2. cached: `python -m llava_sweep.cli sweep SWEEP stages=[pretrain,sft]` — the real runner: each extraction
   job once, then every training stage reading the stores, each a process of its public command;
3. naive: every training stage of the same sweep (under a second root), each in its own process too,
   computing its features on the fly: `train.cli.prepare(config, source=SpecFeatures(spec, image_root=...,
   compute_missing=True))` then `run(...)`, as `bench_train` does for one stage (VAE + U-Net in the loader).

Evaluation is excluded from both sides. The measured ratio (naive / cached wall time) is printed beside
the plan's diffusion-GFLOP ratio for this sweep and the paper grid's planned bound (docs/sweep.md), with
per stage the wall seconds and each command's own (`OWN_SECONDS`: interpreter start-up and imports left out).

    python -m benchmarks.bench_sweep [--sweep configs/sweeps/sample.yaml] [--workdir DIR]
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Sequence  # noqa: E402

from benchmarks.common import markdown_table, write_results  # noqa: E402
from llava_sweep.plan import plan_sweep  # noqa: E402
from llava_sweep.load import load_sweep  # noqa: E402
from llava_sweep.spec import TRAIN_STAGES, Sweep  # noqa: E402
from stages.config import load_config  # noqa: E402
from stages.flops import ComputeBudget  # noqa: E402

SWEEP = "configs/sweeps/sample.yaml"
# the paper grid's planned bounds, docs/sweep.md "The paper sweeps' plans" (their data is not on this machine)
PAPER_BOUNDS = {"paper-fig3 + paper-table2, empty cache": 11.6, "paper-fig3 alone": 15.5}
# a command's own seconds (config to outputs: interpreter start-up and imports excluded), as it prints them
OWN_SECONDS = {"train": re.compile(r"\(([0-9.]+) s in all\)"),  # `python -m train.cli`, `on_the_fly`
               "extract": re.compile(r"GB written in ([0-9.]+) s")}  # `python -m pipeline.cli extract`


def sweep_overrides(sweep_file: str, root: Path, cache_root: Path) -> list[str]:
    """The sweep file's own extraction overrides plus a cache root of our own, training stages only."""
    extract = load_config(sweep_file).get("base", {}).get("overrides", {}).get("extract", [])
    return [f"root={root}", f"base.overrides.extract=[{','.join([*extract, f'cache_root={cache_root}'])}]",
            f"stages=[{','.join(TRAIN_STAGES)}]"]


def training_stages(sweep: Sweep) -> list[str]:
    """The sweep's training stages in the runner's order: every pretraining, then every SFT."""
    return [name for kind in TRAIN_STAGES for name, stage in sweep.stages.items() if stage.kind == kind]


def on_the_fly(kind: str, overrides: Sequence[str]) -> None:
    """One training stage computing its features from the images: its stores never read."""
    from stages.cache_spec import cache_spec_from_yaml
    from stages.serving import SpecFeatures
    from train.cli import prepare, run
    from train.config import load_stage_config
    from train.stores import resolve_data_path

    started = time.perf_counter()
    config = load_stage_config(kind, list(overrides))
    if len(config.data.extract_configs) != 1:
        raise SystemExit(f"bench-sweep: {config.output_dir} reads {len(config.data.extract_configs)} stores; "
                         "the on-the-fly side serves one spec per stage")
    _, image_root = resolve_data_path(config.data.data_path)
    spec = cache_spec_from_yaml(config.data.extract_configs[0])[0]
    result = run(prepare(config, source=SpecFeatures(spec, image_root=image_root, compute_missing=True)))
    print(f"{result.summary()} ({time.perf_counter() - started:.1f} s in all)")  # as `train.cli` ends


def own_seconds(log: Path, name: str) -> float:
    """The own seconds (`OWN_SECONDS`) of stage or extraction job `name` from its log's last summary line."""
    pattern = OWN_SECONDS["extract" if name.startswith("extract/") else "train"]
    found = pattern.findall(log.read_text(errors="replace"))
    if not found:
        raise SystemExit(f"bench-sweep: no line matching {pattern.pattern!r} in {log}")
    return float(found[-1])


def _timed(command: Sequence[str], log: Path) -> float:
    """Wall seconds of `command`, its output in `log`; a failure stops the benchmark with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as out:
        returncode = subprocess.call(list(command), stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"bench-sweep: {' '.join(command[:5])} ... exit {returncode} (log {log}):\n{tail}")
    return seconds


def measure(sweep_file: str, work: Path) -> dict[str, Any]:
    """The plan, then the cached sweep, then the naive stages (see the module doc)."""
    cached_args = sweep_overrides(sweep_file, work / "cached", work / "cache")
    cached = load_sweep(sweep_file, cached_args)
    plan = plan_sweep(cached, ComputeBudget())  # before the run: the stores are still empty
    seconds = _timed([sys.executable, "-m", "llava_sweep.cli", "sweep", sweep_file, *cached_args, "--no-progress"],
                     work / "cached.log")
    summary = json.loads((cached.root / "summary.json").read_text())
    cached_stages = {name: outcome["seconds"] for name, outcome in summary["stages"].items()}
    if any(outcome["status"] != "ran" for outcome in summary["stages"].values()):
        raise SystemExit(f"bench-sweep: not every stage ran in a fresh folder: {summary['stages']}")

    naive = load_sweep(sweep_file, sweep_overrides(sweep_file, work / "naive", work / "naive-cache"))
    naive.write_extraction_configs()  # the specs its stages compute (the naive cache root stays empty)
    naive_stages = {name: _timed([sys.executable, "-m", "benchmarks.bench_sweep", "--on-the-fly",
                                  naive.stages[name].kind, *naive.stages[name].overrides],
                                 work / "naive-logs" / f"{name}.log") for name in training_stages(naive)}
    diffusion = plan.totals["diffusion"]
    extraction = sum(s for name, s in cached_stages.items() if name.startswith("extract/"))
    return {
        "sweep": sweep_file, "overrides": cached_args, "runs": [r.name for r in cached.runs],
        "planned": {"naive_over_cached_diffusion_gflop": diffusion["ratio"], "cached_gflop": diffusion["cached_gflop"],
                    "naive_gflop": diffusion["naive_gflop"], "paper_bounds_documented": PAPER_BOUNDS},
        "cached": {"seconds": seconds, "extraction_s": extraction,
                   "training_s": sum(cached_stages.values()) - extraction, "stages_s": cached_stages,
                   "own_s": {n: own_seconds(Path(o["log"]), n) for n, o in summary["stages"].items()}},
        "naive": {"seconds": sum(naive_stages.values()), "stages_s": naive_stages,
                  "own_s": {n: own_seconds(work / "naive-logs" / f"{n}.log", n) for n in naive_stages}},
    }


def render(result: dict[str, Any]) -> str:
    cached, naive, planned = result["cached"], result["naive"], result["planned"]
    jobs = [n for n in cached["stages_s"] if n.startswith("extract/")]
    stages = list(naive["stages_s"])
    own_cached, own_naive = sum(cached["own_s"].values()), sum(naive["own_s"].values())
    totals = markdown_table(["side (evaluation excluded from both)", "wall s", "naive / cached"], [
        [f"cached: `just sweep` ({len(jobs)} extraction jobs + {len(stages)} training stages, one process each)",
         f"{cached['seconds']:.1f}", ""],
        [f"naive: the {len(stages)} training stages on the fly (one process each)", f"{naive['seconds']:.1f}",
         f"**{naive['seconds'] / cached['seconds']:.2f}x** measured"],
        ["training stages alone (cached: extraction left out)", f"{cached['training_s']:.1f} vs "
         f"{naive['seconds']:.1f}", f"{naive['seconds'] / cached['training_s']:.2f}x"],
        ["the commands' own seconds, summed (interpreter start-up and imports left out)",
         f"{own_cached:.1f} vs {own_naive:.1f}", f"{own_naive / own_cached:.2f}x"],
        ["planned diffusion GFLOP, this sweep (`plan_sweep`)", f"{planned['cached_gflop']:.4g} vs "
         f"{planned['naive_gflop']:.4g} GFLOP", f"{planned['naive_over_cached_diffusion_gflop']:.2f}x"],
        *[[f"planned bound, {name} (docs/sweep.md)", "", f">= {bound}x"]
          for name, bound in planned["paper_bounds_documented"].items()]])
    per_stage = markdown_table(
        ["stage", "cached s", "on the fly s", "own s: cached", "own s: on the fly"],
        [[n, f"{cached['stages_s'][n]:.1f}", "", f"{cached['own_s'][n]:.1f}", ""] for n in jobs]
        + [[n, *(f"{side[key][n]:.1f}" for key in ("stages_s", "own_s") for side in (cached, naive))]
           for n in stages])
    return f"{totals}\n\n{per_stage}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", default=SWEEP, help="the sweep file (default %(default)s)")
    parser.add_argument("--workdir", default=None, help="an empty folder kept afterwards (default: a temporary one)")
    parser.add_argument("--on-the-fly", choices=TRAIN_STAGES, default=None,
                        help="(the naive side's processes) train one stage with the key=value overrides given")
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.on_the_fly:
        on_the_fly(args.on_the_fly, args.overrides)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-sweep-"))
    if args.workdir and work.exists() and any(work.iterdir()):
        parser.error(f"--workdir {work} is not empty: the sweep must start from nothing")
    try:
        result = measure(args.sweep, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(render(result))
    path = write_results("sweep", result)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
