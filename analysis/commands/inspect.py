"""`inspect`: every analysis on a handful of images and prompts, gathered into one static HTML report —
`runs/analysis/<name>/index.html` beside one folder per analysis (each with its numbers, figures, config
and store fingerprint). ITM and the attention maps run with fewer timesteps and trials than `analyze itm`
(the settings are in each folder's config.json). Before them come the training curves of `--runs`
(`analysis.training`) and the tables `just eval-table` wrote (`--eval-table`, `analysis.eval_tables`); after
them a section per `just sweep-report` folder of `--sweeps` (`analysis.sweeps`)."""
from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType
from typing import Sequence

from analysis.commands import attention, cka, itm, pairs, pca
from analysis.commands.common import add_benchmark_roots, add_common, add_images, open_run
from analysis.eval_tables import DEFAULT_PREFIX, eval_section, table_files
from analysis.fixtures import BENCHMARKS, EMBEDDED
from analysis.outputs import RunDir
from analysis.provenance import run_provenance
from analysis.report import Section, Table, write_report
from analysis.sweeps import sweep_sections
from analysis.training import METRICS_FILE, checked_runs, sample_runs, training_section

HELP = "static HTML report (index.html + PNGs) of every analysis on a handful of images and prompts"


def configure(parser: argparse.ArgumentParser) -> None:
    add_common(parser, name="inspect")
    add_images(parser, limit=4)
    parser.add_argument("--timesteps", nargs="+", type=int, default=[189, 589, 989],
                        help="timesteps of the attention maps and ITM (default %(default)s)")
    parser.add_argument("--trials", type=int, default=1, help="noise draws for ITM (default %(default)s)")
    add_benchmark_roots(parser, list(BENCHMARKS))
    parser.add_argument("--clip", default=EMBEDDED, help="CLIPModel directory of the ITM baseline ('none' to skip)")
    parser.add_argument("--clip-config", default=pairs.DEFAULT_CLIP,
                        help="extraction YAML of the CLIP arrays for pairs ('none' to skip; default %(default)s)")
    parser.add_argument("--runs", nargs="*", default=None, metavar="DIR",
                        help="training runs whose curves to show (default: runs/sample-pretrain and runs/sample-sft "
                             "where they exist; none: --runs with no folder)")
    parser.add_argument("--eval-table", default=None, metavar="PREFIX",
                        help=f"the --out of `just eval-table`: PREFIX.csv and PREFIX-*.csv are shown "
                             f"(default {DEFAULT_PREFIX} where it exists; 'none' to leave them out)")
    parser.add_argument("--sweeps", nargs="*", default=[], metavar="DIR",
                        help="`just sweep-report` folders (<sweep root>/report) shown as sections (default: none)")


def _run(module: ModuleType, name: str, argv: list[str]) -> RunDir:
    """One analysis with its own argument parser (so every default is the command's own)."""
    parser = argparse.ArgumentParser(prog=f"inspect {name}")
    module.configure(parser)
    return module.run(parser.parse_args([*argv, "--name", name]))


def _default_runs() -> list[Path]:
    return [run for run in sample_runs() if (run / METRICS_FILE).is_file()]


def run(args: argparse.Namespace) -> RunDir:
    out = open_run(args)
    # what the user named is checked first: a folder that is no run, table or sweep report stops here, in seconds
    runs = checked_runs(args.runs) if args.runs is not None else _default_runs()
    eval_prefix = args.eval_table or DEFAULT_PREFIX
    tables = [] if eval_prefix == "none" else table_files(eval_prefix, required=args.eval_table is not None)
    sweeps = sweep_sections(args.sweeps, out.path)
    common = ["--out", str(out.path), "--extract-config", args.extract_config]
    common += ["--cache-root", args.cache_root] if args.cache_root else []
    common += ["--device", args.device] if args.device else []
    images = ["--data", args.data] + (["--image-root", args.image_root] if args.image_root else [])
    keys = ["--keys", *args.keys] if args.keys else []
    timesteps = ["--timesteps", *map(str, args.timesteps)]
    runs_of = {
        "pca": _run(pca, "pca", [*common, *images, *keys]),
        "attention": _run(attention, "attention",
                          [*common, *images, *(["--keys", args.keys[0]] if args.keys else []), *timesteps]),
        "pairs": _run(pairs, "pairs", [*common, "--mmvp-vlm", args.mmvp_vlm, "--clip-config", args.clip_config]),
        "cka": _run(cka, "cka", [*common, *images, *keys]),
        "itm": _run(itm, "itm", [*common, *timesteps, "--trials", str(args.trials), "--clip", args.clip,
                                 *(f"--{b}={getattr(args, b.replace('-', '_'))}" for b in BENCHMARKS)]),
    }

    def section(name: str, title: str, reference: str, tables: Sequence[Table] = ()) -> Section:
        """An analysis's section: its provenance, tables and every figure it wrote."""
        done = runs_of[name]
        return Section(title, reference, done.path, provenance=run_provenance(done.path), tables=tables,
                       images=[p.name for p in done.written if p.suffix == ".png"])

    sections = [
        training_section(runs, out.path),
        *([] if eval_prefix == "none" else [eval_section(tables, out.path, prefix=eval_prefix)]),
        section("pca", "PCA maps", "Figs. 2, 5a, 7, 8: the first three principal components of each array's tokens "
                "as RGB, fitted jointly on the images"),
        section("attention", "Per-word cross-attention maps", "Figs. 4, 10, 11: rows are the caption's words, "
                "columns timesteps (or layers), each cell the word's softmax attention over the image"),
        section("pairs", "Pairwise similarity of MMVP-VLM pairs", "Fig. 2c: how alike the two near-identical "
                "images of a pair look to each array (lower tells them apart better)",
                tables=[Table(pairs.BY_TIMESTEP, "mean cosine similarity within a pair; CLIP has no timestep, "
                              "its one value is repeated")]),
        section("cka", "CKA between arrays and guidance scales", "Figs. 5c, 9: linear CKA of per-image features"),
        section("itm", "Image-text matching", "Table 1, Tables 6-7: the SD cross-attention score against the "
                "CLIP baseline", tables=[Table(f"{b}.csv", f"{b}: accuracy in %", decimals=1) for b in BENCHMARKS]),
        *sweeps,
    ]
    write_report(out.path, sections, title="Diffusion features: analysis report", intro=[
        f"Features of `{args.extract_config}` on `{args.data}`. Each section opens with what its numbers come from "
        "and lists its files: numbers as CSV/JSON with every digit, figures as PNG and PDF, `config.json` and "
        "`fingerprint.json`. Regenerate with `just inspect`."])
    out.record(command="inspect", arguments=vars(args), sources={})
    return out
