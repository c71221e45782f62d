"""`analyze itm`: image–text matching on MMVP-VLM and Winoground (the paper's Table 1, Tables 6–7), one row
per scorer: the SD cross-attention score and the CLIP baseline, through the same metrics."""
from __future__ import annotations

import argparse
from typing import Any

from analysis.commands.common import add_benchmark_roots, add_common, benchmark_root_of, open_run, open_source
from analysis.fixtures import BENCHMARKS, EMBEDDED, tiny_clip_dir
from analysis.itm import DEFAULT_TIMESTEPS, ClipITM, DiffusionITM, ITMOptions, PairScorer
from analysis.matching import score_matrix
from analysis.outputs import RunDir, markdown_table
from analysis.plots import grouped_bars
from analysis.sources import write_llava_manifest
from analysis.text import TOKEN_SETS

HELP = "image-text matching from cross-attention on MMVP-VLM / Winoground, with a CLIP row (Table 1)"


def configure(parser: argparse.ArgumentParser) -> None:
    add_common(parser, name="itm")
    parser.add_argument("--benchmarks", nargs="+", choices=sorted(BENCHMARKS), default=sorted(BENCHMARKS))
    add_benchmark_roots(parser, list(BENCHMARKS))
    parser.add_argument("--layers", nargs="+", default=[],
                        help="Cross-Attn layers (default: every attn2 at 1/4 of the latent side and coarser)")
    parser.add_argument("--timesteps", nargs="+", type=int, default=list(DEFAULT_TIMESTEPS))
    parser.add_argument("--trials", type=int, default=3, help="noise draws per timestep (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="global noise seed g (default %(default)s)")
    parser.add_argument("--tokens", choices=TOKEN_SETS, default="all",
                        help="LogSumExp over all 77 positions or the text's own tokens (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="(image, text) pairs per U-Net forward")
    parser.add_argument("--clip", default=EMBEDDED,
                        help="local CLIPModel directory for the baseline row; 'none' to skip (default: embedded tiny)")


def options_from(args: argparse.Namespace) -> ITMOptions:
    return ITMOptions(layers=tuple(args.layers), timesteps=tuple(args.timesteps), trials=args.trials, seed=args.seed,
                      tokens=args.tokens, batch_size=args.batch_size)


def run(args: argparse.Namespace) -> RunDir:
    options = options_from(args)
    out = open_run(args)
    results: dict[str, Any] = {}
    sources = {}
    for name in args.benchmarks:
        benchmark = BENCHMARKS[name]
        root = benchmark_root_of(args, name)
        groups = benchmark.load(root)
        source = sources[name] = open_source(args, image_root=root)
        diffusion = DiffusionITM(source.encoder.components, options, source.latents)
        scorers: list[PairScorer] = [diffusion]
        if args.clip != "none":
            scorers.append(ClipITM(tiny_clip_dir(args.clip), image_root=root, device=args.device))
        table, score_rows = {}, []
        for scorer in scorers:
            scores = score_matrix(groups, scorer.score)
            table[scorer.name] = benchmark.metrics(groups, scores)
            score_rows += [(scorer.name, g.id, g.category, j, k, float(scores[i, j, k]))
                           for i, g in enumerate(groups) for j in range(2) for k in range(2)]
        columns = list(next(iter(table.values())))
        rows = [[scorer, *(values[c] for c in columns)] for scorer, values in table.items()]
        out.csv(f"{name}.csv", ["method", *columns], rows)
        out.text(f"{name}.md", markdown_table(["method", *columns], rows))
        out.csv(f"{name}-scores.csv", ["method", "group", "category", "text", "image", "score"], score_rows)
        out.figure(f"{name}.png", grouped_bars(table, title=f"{name}: image-text matching ({len(groups)} groups)"))
        results[name] = {"root": str(root), "groups": len(groups), "layers": [str(x) for x in diffusion.layers],
                         "metrics": table}
        if source.counts["computed"]:
            source.report(write_llava_manifest(out.path / f"images-{name}.json",
                                               sorted({k for g in groups for k in g.images})))
    out.json("results.json", {"options": options.to_json(), "clip": args.clip, **results})
    out.record(command="itm", arguments=vars(args), sources=sources,
               models={} if args.clip == "none" else {"CLIP baseline": tiny_clip_dir(args.clip)})
    return out
