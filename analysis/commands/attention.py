"""`analyze attention`: per-word cross-attention maps of an image and its caption (the paper's Figs. 4, 10,
11): softmax attention of each word (its BPE tokens' probabilities summed), averaged over heads and over
the layers of one resolution, per timestep and per layer, overlaid on the image."""
from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

from analysis.commands.common import add_common, add_images, open_run, open_source
from analysis.inputs import image_set, view
from analysis.itm import DEFAULT_TIMESTEPS, ITM_MIN_STRIDE
from analysis.outputs import RunDir
from analysis.plots import overlay_grid
from analysis.text import Word, token_ids, words
from stages.attention import (CROSS_ATTN, CrossAttentionLayer, CrossAttentionRunner, cross_attention_layers,
                              layer_stride)
from stages.config import ConfigError

HELP = "per-word cross-attention maps of an image and its caption, per timestep and per layer (Figs. 4, 10, 11)"


def configure(parser: argparse.ArgumentParser) -> None:
    add_common(parser, name="attention")
    add_images(parser, limit=1)
    parser.add_argument("--prompts", nargs="+", default=None, help="one text per image (default: its caption)")
    parser.add_argument("--stride", type=int, default=ITM_MIN_STRIDE,
                        help="maps this many times smaller than the latents (default %(default)s: 16x16 at 512 px)")
    parser.add_argument("--layers", nargs="+", default=None, help="Cross-Attn layers of one resolution "
                                                                  "(default: every attn2 layer at --stride)")
    parser.add_argument("--timesteps", nargs="+", type=int, default=list(DEFAULT_TIMESTEPS))
    parser.add_argument("--trials", type=int, default=1, help="noise draws averaged (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="global noise seed g (default %(default)s)")


def word_maps(probs: torch.Tensor, word_list: list[Word]) -> np.ndarray:
    """`(1, heads, HW, L)` softmax maps -> `(words, side, side)`: head mean, each word's tokens summed."""
    per_token = probs[0].mean(0)  # (HW, L)
    side = int(round(per_token.shape[0] ** 0.5))
    maps = torch.stack([per_token[:, list(w.positions)].sum(-1) for w in word_list])  # (W, HW)
    return maps.reshape(len(word_list), side, side).numpy()


def choose_layers(unet: torch.nn.Module, names: list[str] | None, stride: int) -> list[CrossAttentionLayer]:
    layers = ([CrossAttentionLayer.parse(n) for n in names] if names
              else [x for x in cross_attention_layers(unet) if layer_stride(unet, x) == stride])
    if not layers:
        raise ConfigError(f"no cross-attention layer at stride {stride}; strides here: "
                          f"{sorted({layer_stride(unet, x) for x in cross_attention_layers(unet)})}")
    strides = {layer_stride(unet, x) for x in layers}
    if len(strides) > 1:
        raise ConfigError(f"layers {[str(x) for x in layers]} have different resolutions (strides {sorted(strides)})")
    return layers


def run(args: argparse.Namespace) -> RunDir:
    images = image_set(args.data, image_root=args.image_root, keys=args.keys, limit=1)
    prompts = list(args.prompts or images.captions)
    if len(prompts) != len(images.keys):
        raise ConfigError(f"--prompts gives {len(prompts)} texts for {len(images.keys)} images")
    source = open_source(args, image_root=images.image_root)
    components = source.encoder.components
    runner = CrossAttentionRunner(components, choose_layers(components.unet, args.layers, args.stride),
                                  record=("probs",))
    out = open_run(args)
    summary = []
    for index, (key, prompt) in enumerate(zip(images.keys, prompts)):
        word_list = words(components.tokenizer, token_ids(components.tokenizer, [prompt])[0])
        z0, text = source.latents([key]), runner.condition([prompt])
        maps: dict[int, dict[CrossAttentionLayer, np.ndarray]] = defaultdict(dict)
        for t in args.timesteps:
            for trial in range(args.trials):
                captured = runner.run(z0, [key], text, timestep=t, trial=trial, seed=args.seed)
                for layer, kinds in captured.items():
                    maps[t][layer] = maps[t].get(layer, 0) + word_maps(kinds["probs"], word_list) / args.trials
        image = view(images.image_root, key, source.image_spec)
        labels = [w.text for w in word_list]
        by_time = [list(np.mean(list(maps[t].values()), axis=0)) for t in args.timesteps]  # [t][word]
        shares = np.mean([[m.mean() for m in row] for row in by_time], axis=0)  # of all attention, per word
        rows = [f"{word} ({100 * share:.1f}%)" for word, share in zip(labels, shares)]
        out.figure(f"attention-{index}-timesteps.png", overlay_grid(
            image, [list(row) for row in zip(*by_time)], rows=rows, columns=[f"t={t}" for t in args.timesteps],
            title=f"{key}: per-word attention (its share of all), mean over {len(runner.layers)} layers"))
        by_layer = [list(np.mean([maps[t][layer] for t in args.timesteps], axis=0)) for layer in runner.layers]
        out.figure(f"attention-{index}-layers.png", overlay_grid(
            image, [list(row) for row in zip(*by_layer)], rows=rows,
            columns=[str(x).removesuffix(f"-{CROSS_ATTN}") for x in runner.layers],
            title=f"{key}: per-word attention per {CROSS_ATTN} layer, mean over {len(args.timesteps)} timesteps"))
        summary.append({"key": key, "prompt": prompt, "words": labels,
                        "mass_by_timestep": {t: [float(m.mean()) for m in row] for t, row in
                                             zip(args.timesteps, by_time)}})
    out.json("words.json", {"layers": [str(x) for x in runner.layers], "images": summary})
    out.record(command="attention", arguments=vars(args), sources={"sd": source})
    source.report()
    return out
