"""PCA maps (the paper's Figs. 2, 5a, 7, 8): one PCA fitted jointly on the tokens of a group of images, its
first three components shown as RGB on each image's token grid, so the same colour means the same feature
direction across the images of the group."""
from __future__ import annotations

import numpy as np

__all__ = ["pca_projection", "pca_rgb"]


def pca_projection(x: np.ndarray, components: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """`(N, C)` samples -> (`(N, components)` scores on the top principal axes, explained variance ratios).

    Float64 SVD of the mean-centred data; each axis' sign is fixed so its largest loading is positive.
    """
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0, keepdims=True)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)  # axes: (min(N, C), C)
    axes = axes[:components]
    axes *= np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])[:, None]
    variance = singular**2
    return centred @ axes.T, variance[:components] / variance.sum()


def pca_rgb(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(n_images, T, C)` tokens on a square grid -> (`(n_images, g, g, 3)` RGB in [0, 1], explained variance
    ratios): joint PCA over all `n_images * T` tokens, each component min-max scaled over the group."""
    n, tokens, channels = features.shape
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise ValueError(f"{tokens} tokens are not a square grid")
    scores, ratios = pca_projection(features.reshape(n * tokens, channels), components=3)
    if scores.shape[1] < 3:  # fewer than 3 channels or tokens: pad the missing colours with zeros
        scores = np.pad(scores, ((0, 0), (0, 3 - scores.shape[1])))
    low, high = scores.min(axis=0), scores.max(axis=0)
    rgb = (scores - low) / np.where(high > low, high - low, 1.0)
    return rgb.reshape(n, side, side, 3), ratios
