"""`analyze pca`: PCA maps of a group of images (the paper's Figs. 2, 5a, 7, 8) for unconditional, conditioned
and Δ = cond − uncond features of each array, and an amplification sweep `X_u + s·(X_c − X_u)`."""
from __future__ import annotations

import argparse

import numpy as np

from analysis.commands.common import add_common, add_images, array_ids, open_run, open_source
from analysis.inputs import image_set, view
from analysis.outputs import RunDir
from analysis.pca import pca_rgb
from analysis.plots import image_grid
from stages.config import ConfigError
from stages.extractor import amplify
from stages.features import ArrayId, conditioned_id

HELP = "joint PCA maps (first 3 components as RGB) of uncond / cond / delta features and a guidance sweep"
SOURCE = "caption"  # conditioned ids NAME@tT:caption: read from the store when it has them, else computed
SWEEP = (0.0, 1.0, 2.0, 4.0, 7.0)


def configure(parser: argparse.ArgumentParser) -> None:
    add_common(parser, name="pca")
    add_images(parser, limit=4)
    parser.add_argument("--features", nargs="+", default=None, help="feature names (default: the config's)")
    parser.add_argument("--timesteps", nargs="+", type=int, default=None, help="timesteps (default: the config's)")
    parser.add_argument("--prompts", nargs="+", default=None,
                        help="one conditioning text per image (default: each image's caption from --data)")
    parser.add_argument("--scales", nargs="+", type=float, default=list(SWEEP), help="sweep scales s")
    parser.add_argument("--sweep-array", default=None, help="array id of the sweep (default: the first array)")


def run(args: argparse.Namespace) -> RunDir:
    images = image_set(args.data, image_root=args.image_root, keys=args.keys, limit=4)
    prompts = list(args.prompts or images.captions)
    if len(prompts) != len(images.keys):
        raise ConfigError(f"--prompts gives {len(prompts)} texts for {len(images.keys)} images")
    source = open_source(args, image_root=images.image_root)
    uncond = array_ids(source, features=args.features, timesteps=args.timesteps)
    sweep_array = args.sweep_array or uncond[0]
    if ArrayId.parse(sweep_array).source is not None:
        raise ConfigError(f"--sweep-array {sweep_array!r} must be an unconditional id like {uncond[0]}")
    # a store's caption arrays hold the captions of --data; other prompts are never read from a store
    source_name = SOURCE if args.prompts is None else "prompt"
    cond = {a: conditioned_id(a, source_name) for a in dict.fromkeys([*uncond, sweep_array])}
    values = source.read(images.keys, [*cond, *cond.values()], prompts={source_name: prompts})
    out = open_run(args)
    thumbnails = [view(images.image_root, k, source.image_spec) for k in images.keys]
    columns = [f"{i}: {k}" for i, k in enumerate(images.keys)]
    variance_rows = []
    variants = {"uncond": lambda a: values[a], "cond": lambda a: values[cond[a]],
                "delta": lambda a: values[cond[a]] - values[a]}
    for variant, select in variants.items():
        rows = [("image", thumbnails)]
        for array in uncond:
            rgb, ratios = pca_rgb(select(array))
            rows.append((array, list(rgb)))
            variance_rows.append([variant, array, *ratios])
        out.figure(f"pca-{variant}.png", image_grid(rows, columns, title=f"PCA maps, {variant} features"))
    rows = [("image", thumbnails)]
    for scale in args.scales:
        rgb, ratios = pca_rgb(amplify(values[sweep_array], values[cond[sweep_array]], scale))
        rows.append((f"s={scale:g}", list(rgb)))
        variance_rows.append([f"s={scale:g}", sweep_array, *ratios])
    out.figure("pca-sweep.png", image_grid(rows, columns, title=f"PCA maps of {sweep_array}, X_u + s(X_c - X_u)"))
    out.csv("explained_variance.csv", ["variant", "array", "pc1", "pc2", "pc3"],
            [row + [np.nan] * (5 - len(row)) for row in variance_rows])
    out.json("images.json", {"keys": list(images.keys), "prompts": prompts, "source": source_name})
    out.record(command="pca", arguments=vars(args), sources={"sd": source})
    source.report()
    return out
