"""The figures, with matplotlib's Agg backend (no display): image grids, attention overlays, heatmaps,
line plots and grouped bars. Each function returns a figure for `RunDir.figure`."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["image_grid", "overlay_grid", "heatmap", "line_plot", "grouped_bars"]

_CELL = 128  # pixels per image cell of a mosaic
_GAP = 4
_DPI = 100


def _cell(image: np.ndarray, *, smooth: bool) -> np.ndarray:
    """`(H, W, 3)` uint8 or float in [0, 1] -> `(_CELL, _CELL, 3)` float; nearest-neighbour unless `smooth`, so
    token boundaries of small maps stay visible."""
    from PIL import Image

    pixels = np.asarray(image)
    pixels = pixels if pixels.dtype == np.uint8 else (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)
    resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(pixels).resize((_CELL, _CELL), resample), dtype=np.float64) / 255


def _heat(heat: np.ndarray) -> np.ndarray:
    """`(g, g)` map scaled to its maximum, stretched bilinearly over a cell, as `jet` colours."""
    from PIL import Image

    scaled = np.asarray(heat, dtype=np.float32) / max(float(np.max(heat)), 1e-12)
    stretched = np.asarray(Image.fromarray(scaled, mode="F").resize((_CELL, _CELL), Image.Resampling.BILINEAR))
    return plt.get_cmap("jet")(np.clip(stretched, 0, 1))[..., :3]


def _mosaic(cells: Sequence[Sequence[np.ndarray]], *, rows: Sequence[str], columns: Sequence[str], title: str) -> Any:
    """One image of `cells[r][c]` (`(_CELL, _CELL, 3)` floats) with row and column labels: one axes however
    many cells, so large grids stay cheap to draw."""
    step = _CELL + _GAP
    canvas = np.ones((len(rows) * step - _GAP, len(columns) * step - _GAP, 3))
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            canvas[r * step:r * step + _CELL, c * step:c * step + _CELL] = cell
    fig = plt.figure(figsize=(canvas.shape[1] / _DPI, canvas.shape[0] / _DPI), dpi=_DPI)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))  # labels fall outside; savefig(bbox_inches="tight") keeps them
    ax.imshow(canvas, interpolation="nearest")
    centres = np.arange(max(len(rows), len(columns))) * step + _CELL / 2
    ax.set_xticks(centres[:len(columns)], columns, rotation=30, ha="left", fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks(centres[:len(rows)], rows, fontsize=7)
    ax.tick_params(length=0)
    ax.set_xlabel(title, fontsize=9)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return fig


def image_grid(rows: Sequence[tuple[str, Sequence[np.ndarray]]], columns: Sequence[str], *, title: str = "") -> Any:
    """Rows of images `(H, W, 3)` (float in [0, 1] or uint8), a label per row and a title per column."""
    cells = [[_cell(image, smooth=image.shape[0] > 32) for image in images] for _, images in rows]
    return _mosaic(cells, rows=[label for label, _ in rows], columns=columns, title=title)


def overlay_grid(image: np.ndarray, maps: Sequence[Sequence[np.ndarray]], *, rows: Sequence[str],
                 columns: Sequence[str], title: str = "") -> Any:
    """`maps[r][c]` (g, g) heatmaps over `image` (H, W, 3), the image alone in column 0. Each map is
    stretched (bilinear) over the whole image and scaled to its own maximum."""
    base = _cell(image, smooth=True)
    cells = [[base] + [0.5 * base + 0.5 * _heat(heat) for heat in row] for row in maps]
    return _mosaic(cells, rows=rows, columns=["image", *columns], title=title)


def heatmap(matrix: np.ndarray, labels: Sequence[str], *, title: str, vmin: float = 0.0, vmax: float = 1.0) -> Any:
    size = 1.2 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    shown = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap="magma")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color="white" if value < 0.6 else "black")
    fig.colorbar(shown, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    return fig


def line_plot(x: Sequence[float], series: Mapping[str, Sequence[float]], *, xlabel: str, ylabel: str, title: str,
              levels: Mapping[str, float] | None = None) -> Any:
    """One line per series over `x`; `levels` are drawn as dashed horizontal lines (e.g. CLIP)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, values in series.items():
        ax.plot(x, values, marker="o", label=label)
    for label, value in (levels or {}).items():
        ax.axhline(value, linestyle="--", color="black", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def grouped_bars(table: Mapping[str, Mapping[str, float]], *, title: str, ylabel: str = "%") -> Any:
    """`table[row][column]`: one group of bars per column, one bar per row (a method)."""
    columns = list(next(iter(table.values())))
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(columns), 3.5))
    width = 0.8 / len(table)
    for i, (row, values) in enumerate(table.items()):
        ax.bar(np.arange(len(columns)) + i * width, [values[c] for c in columns], width, label=row)
    ax.set_xticks(np.arange(len(columns)) + 0.4 - width / 2, columns, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig
