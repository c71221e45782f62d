"""`inspect`: every analysis on a handful of images and prompts, gathered into one static HTML report —
`runs/analysis/<name>/index.html` beside one folder per analysis (each with its numbers, figures, config
and store fingerprint). ITM and the attention maps run with fewer timesteps and trials than `analyze itm`
(the settings are in each folder's config.json). `--sweeps` adds a section per `just sweep-report` folder
(`analysis.sweeps`)."""
from __future__ import annotations

import argparse
import json
from types import ModuleType

from analysis.commands import attention, cka, itm, pairs, pca
from analysis.commands.common import add_benchmark_roots, add_common, add_images, open_run
from analysis.fixtures import BENCHMARKS, EMBEDDED
from analysis.outputs import RunDir
from analysis.report import Section, write_report
from analysis.sweeps import sweep_sections

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
    parser.add_argument("--sweeps", nargs="*", default=[], metavar="DIR",
                        help="`just sweep-report` folders (<sweep root>/report) shown as sections (default: none)")


def _run(module: ModuleType, name: str, argv: list[str]) -> RunDir:
    """One analysis with its own argument parser (so every default is the command's own)."""
    parser = argparse.ArgumentParser(prog=f"inspect {name}")
    module.configure(parser)
    return module.run(parser.parse_args([*argv, "--name", name]))


def _provenance(run: RunDir) -> list[str]:
    config = json.loads((run.path / "config.json").read_text())
    lines = []
    for name, source in config["sources"].items():
        where = f"store {source['store']}" if source["store"] else "no store"
        lines.append(f"{name} arrays: fingerprint {source['fingerprint'][:16]} ({where}); "
                     f"{source['rows_read']} rows read, {source['rows_computed']} computed")
    return lines


def run(args: argparse.Namespace) -> RunDir:
    out = open_run(args)
    sweeps = sweep_sections(args.sweeps, out.path)  # a folder that is no sweep report stops here, in seconds
    common = ["--out", str(out.path), "--extract-config", args.extract_config]
    common += ["--cache-root", args.cache_root] if args.cache_root else []
    common += ["--device", args.device] if args.device else []
    images = ["--data", args.data] + (["--image-root", args.image_root] if args.image_root else [])
    keys = ["--keys", *args.keys] if args.keys else []
    timesteps = ["--timesteps", *map(str, args.timesteps)]
    runs = {
        "pca": _run(pca, "pca", [*common, *images, *keys]),
        "attention": _run(attention, "attention",
                          [*common, *images, *(["--keys", args.keys[0]] if args.keys else []), *timesteps]),
        "pairs": _run(pairs, "pairs", [*common, "--mmvp-vlm", args.mmvp_vlm, "--clip-config", args.clip_config]),
        "cka": _run(cka, "cka", [*common, *images, *keys]),
        "itm": _run(itm, "itm", [*common, *timesteps, "--trials", str(args.trials), "--clip", args.clip,
                                 *(f"--{b}={getattr(args, b.replace('-', '_'))}" for b in BENCHMARKS)]),
    }
    attention_pngs = [p.name for p in runs["attention"].written if p.suffix == ".png"]
    sections = [
        Section("PCA maps", "Figs. 2, 5a, 7, 8", runs["pca"].path,
                images=["pca-uncond.png", "pca-cond.png", "pca-delta.png", "pca-sweep.png"],
                notes=_provenance(runs["pca"])),
        Section("Per-word cross-attention maps", "Figs. 4, 10, 11", runs["attention"].path, images=attention_pngs,
                notes=_provenance(runs["attention"])),
        Section("Pairwise similarity of MMVP-VLM pairs", "Fig. 2c", runs["pairs"].path, images=["pairs.png"],
                tables=["pairs.csv"], notes=_provenance(runs["pairs"])),
        Section("CKA between arrays and guidance scales", "Figs. 5c, 9", runs["cka"].path,
                images=[p.name for p in runs["cka"].written if p.name.startswith("cka-matrix-")]
                + ["cka-sweep.png"], notes=_provenance(runs["cka"])),
        Section("Image-text matching", "Table 1, Tables 6-7", runs["itm"].path,
                images=[f"{b}.png" for b in BENCHMARKS], tables=[f"{b}.csv" for b in BENCHMARKS],
                notes=_provenance(runs["itm"])),
        *sweeps,
    ]
    write_report(out.path, sections, title="Diffusion features: analysis report", intro=[
        f"Features of {args.extract_config} on {args.data}; every section's folder holds its numbers (CSV/JSON), "
        "figures, config.json and fingerprint.json. Regenerate with `just inspect`."])
    out.record(command="inspect", arguments=vars(args), sources={})
    return out
