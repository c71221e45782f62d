"""`analyze pairs`: how alike the two near-identical images of each MMVP-VLM pair look to each array (the
paper's Fig. 2c): mean cosine similarity of their flattened features, per block and timestep, CLIP included."""
from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from analysis.commands.common import (add_benchmark_roots, add_common, array_ids, benchmark_root_of, open_run,
                                      open_source)
from analysis.mmvp_vlm import MMVP_VLM
from analysis.outputs import RunDir
from analysis.plots import line_plot
from analysis.sources import AnalysisFeatures, write_llava_manifest
from stages.features import ArrayId

HELP = "mean cosine similarity between the two images of each MMVP-VLM pair, per array and CLIP (Fig. 2c)"
DEFAULT_CLIP = "configs/extract/sample-clip.yaml"
BY_TIMESTEP = "pairs-by-timestep.csv"  # mean cosine, a row per feature, a column per timestep (CLIP: one value)


def configure(parser: argparse.ArgumentParser) -> None:
    add_common(parser, name="pairs")
    add_benchmark_roots(parser, [MMVP_VLM.name])
    parser.add_argument("--features", nargs="+", default=None, help="feature names (default: the config's)")
    parser.add_argument("--timesteps", nargs="+", type=int, default=[50, 250, 500, 750],
                        help="timesteps (default %(default)s)")
    parser.add_argument("--clip-config", default=DEFAULT_CLIP,
                        help="extraction YAML of the CLIP arrays ('none' to skip; default %(default)s)")
    parser.add_argument("--batch-pairs", type=int, default=16, help="pairs read at a time (default %(default)s)")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of `(n, ...)` feature sets flattened per row: `(n,)`."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def pair_similarities(source: AnalysisFeatures, pairs: list[tuple[str, str]], arrays: list[str], *,
                      batch: int) -> dict[str, np.ndarray]:
    """`{array: (n_pairs,) cosine}`, reading `batch` pairs at a time."""
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        first = source.read([a for a, _ in chunk], arrays)
        second = source.read([b for _, b in chunk], arrays)
        for array in arrays:
            out[array].append(cosine(first[array], second[array]))
    return {array: np.concatenate(values) for array, values in out.items()}


def run(args: argparse.Namespace) -> RunDir:
    root = benchmark_root_of(args, MMVP_VLM.name)
    groups = MMVP_VLM.load(root)
    pairs = [g.images for g in groups]
    timesteps = list(dict.fromkeys(args.timesteps))
    sources = {"sd": open_source(args, image_root=root)}
    arrays = {"sd": array_ids(sources["sd"], features=args.features, timesteps=timesteps)}
    if args.clip_config != "none":
        sources["clip"] = open_source(args, image_root=root, extract_config=args.clip_config)
        arrays["clip"] = sources["clip"].spec.array_ids()
    similarity = {a: s for name, source in sources.items()
                  for a, s in pair_similarities(source, pairs, arrays[name], batch=args.batch_pairs).items()}
    out = open_run(args)
    out.csv("pairs.csv", ["array", "mean_cosine", "std", "pairs"],
            [[a, float(s.mean()), float(s.std()), len(s)] for a, s in similarity.items()])
    out.csv("pairs-per-pair.csv", ["array", "pair", "category", "cosine"],
            [[a, g.id, g.category, float(v)] for a, s in similarity.items() for g, v in zip(groups, s)])
    series: dict[str, list[float]] = defaultdict(list)
    for array in arrays["sd"]:
        series[str(ArrayId.parse(array).feature)].append(float(similarity[array].mean()))
    levels = {f"CLIP {a}": float(similarity[a].mean()) for a in arrays.get("clip", [])}
    out.csv(BY_TIMESTEP, ["feature", *(f"t={t}" for t in timesteps)],
            [*([name, *values] for name, values in series.items()),
             *([name, *[value] * len(timesteps)] for name, value in levels.items())])
    out.figure("pairs.png", line_plot(timesteps, series,
                                      xlabel="timestep", ylabel="mean cosine similarity within a pair",
                                      title=f"MMVP-VLM pairs ({len(pairs)}): how alike the two images look",
                                      levels=levels))
    out.record(command="pairs", arguments=vars(args), sources=sources)
    if any(s.counts["computed"] for s in sources.values()):
        manifest = write_llava_manifest(out.path / "images-mmvp-vlm.json", sorted({k for p in pairs for k in p}))
        for source in sources.values():
            source.report(manifest)
    return out
