"""`analyze cka`: linear CKA between every pair of arrays at guidance scales s (the paper's Figs. 5c, 9), and
between each array's unconditional and amplified caption-conditioned features as s grows. Gram matrices
are accumulated block by block from the store (`analysis.cka`), so the images never sit in memory together."""
from __future__ import annotations

import argparse
import itertools

import numpy as np

from analysis.cka import Fetch, amplified_gram, cka_from_grams, gram_matrices, minibatch_cka
from analysis.commands.common import add_common, add_images, array_ids, open_run, open_source
from analysis.inputs import image_set
from analysis.outputs import RunDir
from analysis.plots import heatmaps, line_plot
from analysis.sources import AnalysisFeatures
from stages.extractor import amplify
from stages.features import conditioned_id

HELP = "linear CKA between arrays at guidance s, and uncond vs amplified-cond per array (Figs. 5c, 9)"
SOURCE = "caption"
ESTIMATORS = ("gram", "minibatch")


def configure(parser: argparse.ArgumentParser) -> None:
    add_common(parser, name="cka")
    add_images(parser, limit=None)
    parser.add_argument("--features", nargs="+", default=None, help="feature names (default: the config's)")
    parser.add_argument("--timesteps", nargs="+", type=int, default=None, help="timesteps (default: the config's)")
    parser.add_argument("--scales", nargs="+", type=float, default=[0.0, 1.0, 4.0],
                        help="guidance scales of the array-by-array matrices (default %(default)s)")
    parser.add_argument("--sweep", nargs="+", type=float, default=[0.0, 0.5, 1.0, 2.0, 4.0, 7.0],
                        help="scales of the uncond-vs-amplified curves (default %(default)s)")
    parser.add_argument("--block", type=int, default=256, help="images per Gram block (default %(default)s)")
    parser.add_argument("--estimator", choices=ESTIMATORS, default="gram",
                        help="gram: exact, blockwise; minibatch: unbiased HSIC averaged over --block batches")


def _fetcher(source: AnalysisFeatures, keys: list[str], captions: list[str], arrays: list[str]) -> Fetch:
    """Rows -> the unconditional and caption-conditioned arrays of those images."""
    def fetch(rows: slice) -> dict[str, np.ndarray]:
        ids = [*arrays, *(conditioned_id(a, SOURCE) for a in arrays)]
        return source.read(keys[rows], ids, prompts={SOURCE: captions[rows]})
    return fetch


def _scaled_grams(fetch: Fetch, n: int, arrays: list[str], *, scales: list[float],
                  block: int) -> dict[tuple[str, float], np.ndarray]:
    """Gram matrix of `X_u + s(X_c − X_u)` for every array and scale, from three accumulated products."""
    cond = {a: conditioned_id(a, SOURCE) for a in arrays}
    products = [p for a in arrays for p in ((a, a), (a, cond[a]), (cond[a], cond[a]))]
    grams = gram_matrices(fetch, n, products, block=block)
    return {(a, s): amplified_gram(grams[a, a], grams[a, cond[a]], grams[cond[a], cond[a]], s)
            for a in arrays for s in scales}


def _minibatch(fetch: Fetch, n: int, arrays: list[str], *, scales: list[float], block: int,
               pairs: list[tuple[tuple[str, float], tuple[str, float]]]) -> dict[tuple, float]:
    def batches():
        for start in range(0, n, block):
            values = fetch(slice(start, start + block))
            yield {(a, s): amplify(values[a], values[conditioned_id(a, SOURCE)], s) for a in arrays for s in scales}

    return minibatch_cka(batches(), pairs)


def run(args: argparse.Namespace) -> RunDir:
    images = image_set(args.data, image_root=args.image_root, keys=args.keys)
    keys, captions = list(images.keys), list(images.captions)
    source = open_source(args, image_root=images.image_root)
    arrays = array_ids(source, features=args.features, timesteps=args.timesteps)
    scales = list(dict.fromkeys([*args.scales, *args.sweep]))
    between = [((a, s), (b, s)) for s in args.scales for a, b in itertools.product(arrays, repeat=2)]
    along = [((a, 0.0), (a, s)) for a in arrays for s in args.sweep]
    fetch = _fetcher(source, keys, captions, arrays)
    if args.estimator == "gram":
        grams = _scaled_grams(fetch, len(keys), arrays, scales=[*scales, 0.0], block=args.block)
        value = {pair: cka_from_grams(grams[pair[0]], grams[pair[1]]) for pair in [*between, *along]}
    else:
        value = _minibatch(fetch, len(keys), arrays, scales=[*scales, 0.0], block=args.block,
                           pairs=[*between, *along])
    out = open_run(args)
    out.csv("cka.csv", ["estimator", "scale", "array_a", "array_b", "cka"],
            [[args.estimator, s, a, b, value[(a, s), (b, s)]] for (a, s), (b, _) in between])
    matrices = {f"s={scale:g}": np.array([[value[(a, scale), (b, scale)] for b in arrays] for a in arrays])
                for scale in args.scales}
    out.figure("cka-matrices.png", heatmaps(matrices, arrays, title="linear CKA between arrays at guidance scale s "
                                                                   f"({len(keys)} images)"))
    out.csv("cka-sweep.csv", ["estimator", "array", "scale", "cka_uncond_vs_amplified"],
            [[args.estimator, a, s, value[(a, 0.0), (a, s)]] for a in arrays for s in args.sweep])
    curves = {a: [value[(a, 0.0), (a, s)] for s in args.sweep] for a in arrays}
    title = f"uncond vs amplified caption-conditioned features ({len(keys)} images)"
    out.figure("cka-sweep.png", line_plot(args.sweep, curves, xlabel="guidance scale s",
                                          ylabel="CKA(X_u, X_u + s(X_c - X_u))", title=title))
    out.record(command="cka", arguments=vars(args), sources={"sd": source})
    source.report()
    return out
