"""The figures, with matplotlib's Agg backend (no display): image grids, attention overlays, heatmaps,
line plots, grouped bars and training curves. Each function returns a figure for `RunDir.figure`.

Sizes are for a page: a figure inch is `SCREEN_DPI` pixels on screen (the HTML report shows each PNG at
that size, at most about 1000 px wide), and text is at least `FONT` points, legible at that size."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["SCREEN_DPI", "PRINT_DPI", "image_grid", "overlay_grid", "heatmaps", "line_plot", "grouped_bars",
           "training_curves"]

SCREEN_DPI = 100  # figure inches -> CSS pixels
PRINT_DPI = 2 * SCREEN_DPI  # of plots: sharp on high-density screens and in print (mosaics keep their cell pixels)
FONT = 10  # points: the smallest text of a figure
_WIDTH, _HEIGHT = 880, 2000  # pixels a mosaic's cells may take in all; its labels and colour bar come on top
_MAX_CELL, _MIN_CELL, _GAP = 128, 64, 4
_HEAT = "jet"


def _cell_size(rows: int, columns: int) -> int:
    """Pixels per mosaic cell: `_MAX_CELL`, smaller (down to `_MIN_CELL`) to keep the grid in `_WIDTH` x `_HEIGHT`."""
    return max(_MIN_CELL, min(_MAX_CELL, _WIDTH // max(columns, 1) - _GAP, _HEIGHT // max(rows, 1) - _GAP))


def _cell(image: np.ndarray, size: int, *, smooth: bool) -> np.ndarray:
    """`(H, W, 3)` uint8 or float in [0, 1] -> `(size, size, 3)` float; nearest-neighbour unless `smooth`, so
    token boundaries of small maps stay visible."""
    from PIL import Image

    pixels = np.asarray(image)
    pixels = pixels if pixels.dtype == np.uint8 else (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)
    resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(pixels).resize((size, size), resample), dtype=np.float64) / 255


def _heat(heat: np.ndarray, size: int) -> np.ndarray:
    """`(g, g)` map scaled to its maximum, stretched bilinearly over a cell, as `_HEAT` colours."""
    from PIL import Image

    scaled = np.asarray(heat, dtype=np.float32) / max(float(np.max(heat)), 1e-12)
    stretched = np.asarray(Image.fromarray(scaled, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    return plt.get_cmap(_HEAT)(np.clip(stretched, 0, 1))[..., :3]


def _mosaic(cells: Sequence[Sequence[np.ndarray | None]], *, rows: Sequence[str], columns: Sequence[str], title: str,
            colorbar: str = "") -> Any:
    """One image of `cells[r][c]` (square float RGB cells of one size; None leaves a cell blank) with row and
    column labels, and a `_HEAT` colour bar from 0 to 1 labelled `colorbar` when given: one axes however many
    cells, so large grids stay cheap to draw."""
    size = next(cell.shape[0] for row in cells for cell in row if cell is not None)
    step = size + _GAP
    canvas = np.ones((len(rows) * step - _GAP, len(columns) * step - _GAP, 3))
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            if cell is not None:
                canvas[r * step:r * step + size, c * step:c * step + size] = cell
    height, width = canvas.shape[:2]
    fig = plt.figure(figsize=(width / SCREEN_DPI, height / SCREEN_DPI), dpi=SCREEN_DPI)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))  # labels fall outside; savefig(bbox_inches="tight") keeps them
    ax.imshow(canvas, interpolation="nearest")
    centres = np.arange(max(len(rows), len(columns))) * step + size / 2
    fits = max(map(len, columns), default=0) * 0.62 * FONT * SCREEN_DPI / 72 < size  # a label's width < a cell's
    ax.set_xticks(centres[:len(columns)], columns, rotation=0 if fits else 30, ha="center" if fits else "left",
                  fontsize=FONT)
    ax.xaxis.tick_top()
    ax.set_yticks(centres[:len(rows)], rows, fontsize=FONT)
    ax.tick_params(length=0)
    ax.set_xlabel(title, fontsize=FONT + 1)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if colorbar:
        bar = min(height, 240) / height
        cax = fig.add_axes((1 + 12 / width, 1 - bar, 14 / width, bar))
        fig.colorbar(plt.cm.ScalarMappable(cmap=_HEAT), cax=cax)
        cax.tick_params(labelsize=FONT)
        cax.set_ylabel(colorbar, fontsize=FONT)
    return fig


def image_grid(rows: Sequence[tuple[str, Sequence[np.ndarray]]], columns: Sequence[str], *, title: str = "") -> Any:
    """Rows of images `(H, W, 3)` (float in [0, 1] or uint8), a label per row and a title per column."""
    size = _cell_size(len(rows), len(columns))
    cells = [[_cell(image, size, smooth=image.shape[0] > 32) for image in images] for _, images in rows]
    return _mosaic(cells, rows=[label for label, _ in rows], columns=columns, title=title)


def overlay_grid(image: np.ndarray, maps: Sequence[Sequence[np.ndarray]], *, rows: Sequence[str],
                 columns: Sequence[str], title: str = "") -> Any:
    """`maps[r][c]` (g, g) heatmaps over `image` (H, W, 3), below a first row holding the image alone (the
    paper's Fig. 4 with rows = words, columns = timesteps). Each map is stretched (bilinear) over the whole
    image and scaled to its own maximum, which the colour bar's 1 marks."""
    size = _cell_size(len(rows) + 1, len(columns))
    base = _cell(image, size, smooth=True)
    cells = [[base] + [None] * (len(columns) - 1)] + [[0.5 * base + 0.5 * _heat(heat, size) for heat in row]
                                                      for row in maps]
    return _mosaic(cells, rows=["image", *rows], columns=columns, title=title,
                   colorbar="attention / the map's maximum")


def heatmaps(matrices: Mapping[str, np.ndarray], labels: Sequence[str], *, title: str, vmin: float = 0.0,
             vmax: float = 1.0) -> Any:
    """Square matrices over the same `labels` side by side (a panel per title in `matrices`, row labels on the
    first), their values written in the cells while they fit, one colour bar from `vmin` to `vmax`."""
    side = min(max(0.42 * len(labels), 2.2), 4.5)
    fig, axes = plt.subplots(1, len(matrices), figsize=(min(side * len(matrices) + 2.4, 9.6), side + 2.0),
                             dpi=PRINT_DPI, squeeze=False, layout="constrained")
    for k, (ax, (panel, matrix)) in enumerate(zip(axes[0], matrices.items())):
        shown = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=FONT)
        ax.set_yticks(range(len(labels)), labels if k == 0 else [], fontsize=FONT)
        if len(labels) <= 10:  # two decimals still fit a cell
            for (i, j), value in np.ndenumerate(matrix):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=FONT - 2,
                        color="white" if value < vmin + 0.55 * (vmax - vmin) else "black")
        ax.set_title(panel, fontsize=FONT + 1)
    fig.colorbar(shown, ax=list(axes[0]), fraction=0.04, shrink=0.8).ax.tick_params(labelsize=FONT)
    fig.suptitle(title, fontsize=FONT + 1)
    return fig


def line_plot(x: Sequence[float], series: Mapping[str, Sequence[float]], *, xlabel: str, ylabel: str, title: str,
              levels: Mapping[str, float] | None = None) -> Any:
    """One line per series over `x`; `levels` are drawn as dashed horizontal lines (e.g. CLIP)."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=PRINT_DPI)
    for label, values in series.items():
        ax.plot(x, values, marker="o", label=label)
    for label, value in (levels or {}).items():
        ax.axhline(value, linestyle="--", color="black", label=label)
    ax.set_xlabel(xlabel, fontsize=FONT + 1)
    ax.set_ylabel(ylabel, fontsize=FONT + 1)
    ax.set_title(title, fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.legend(fontsize=FONT, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.grid(alpha=0.3)
    return fig


def grouped_bars(table: Mapping[str, Mapping[str, float]], *, title: str, ylabel: str = "%") -> Any:
    """`table[row][column]` in percent: one group of bars per column, one bar per row (a method), each bar
    labelled with its value, so a 0 shows as a labelled 0 rather than as nothing."""
    columns = list(next(iter(table.values())))
    fig, ax = plt.subplots(figsize=(min(1.6 + 0.75 * len(columns) * max(len(table), 2) / 2, 8.2), 4), dpi=PRINT_DPI)
    width = 0.8 / len(table)
    for i, (row, values) in enumerate(table.items()):
        colour = f"C{i}"  # the edge too: a bar of 0 is a line of its colour
        bars = ax.bar(np.arange(len(columns)) + i * width, [values[c] for c in columns], width, label=row,
                      color=colour, edgecolor=colour, linewidth=1.5)
        ax.bar_label(bars, fmt="%.0f", fontsize=FONT - 1, padding=2)
    long = max(map(len, columns)) > 8
    ax.set_xticks(np.arange(len(columns)) + 0.4 - width / 2, columns, rotation=30 if long else 0,
                  ha="right" if long else "center", fontsize=FONT)
    ax.tick_params(axis="y", labelsize=FONT)
    ax.set_ylabel(ylabel, fontsize=FONT + 1)
    ax.set_ylim(-1.5, 108)  # room for the labels of 100 % bars, and below the lines of 0 % ones
    ax.set_title(title, fontsize=FONT + 1)
    ax.legend(fontsize=FONT, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def training_curves(steps: Sequence[int], curves: Mapping[str, Sequence[float]], *, title: str) -> Any:
    """One panel per curve (`{"loss": [...], "lr": [...], ...}`) over the optimizer steps, side by side; a
    positive curve spanning more than two decades gets a log axis."""
    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 2.9), dpi=PRINT_DPI, squeeze=False)
    for ax, (name, values) in zip(axes[0], curves.items()):
        ax.plot(steps, values, marker="o" if len(steps) <= 40 else None, markersize=3)
        finite = [v for v in values if math.isfinite(v)]
        if finite and min(finite) > 0 and max(finite) / min(finite) > 100:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=FONT + 1)
        ax.set_xlabel("optimizer step", fontsize=FONT)
        ax.tick_params(labelsize=FONT)
        if ax.get_yscale() == "linear":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=FONT + 1)
    fig.tight_layout()
    return fig
