"""Figures: image and mask grids, grouped bar charts, attribution overlays, activation/attention maps.

Functions return the matplotlib ``Figure``; :func:`save` writes it as PNG into the run's ``out_dir``.
No backend is forced here: notebooks show figures inline, scripts can use any backend.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

STRATEGY_COLOURS = {"black": "#333333", "grey": "#9e9e9e", "mean": "#8d6e63", "blur": "#64b5f6",
                    "layer": "#e53935", "drop": "#e53935"}


def _img(x: torch.Tensor) -> np.ndarray:
    x = x.detach().cpu().float()
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).clamp(0, 1).numpy()


def moving_average(values, k: int) -> list[float]:
    """Trailing mean over the last ``k`` values (fewer at the start), same length: smooths loss curves."""
    v = torch.as_tensor(list(values), dtype=torch.float64)
    csum = torch.cat([torch.zeros(1, dtype=v.dtype), v.cumsum(0)])
    idx = torch.arange(1, len(v) + 1)
    return ((csum[idx] - csum[(idx - k).clamp_min(0)]) / (idx - (idx - k).clamp_min(0))).tolist()


def save(fig, out_dir, name: str) -> None:
    """Write ``fig`` to ``<out_dir>/<name>.png``. Returns nothing, so a cell ending in it shows no ``Out[]``."""
    path = Path(out_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def image_grid(rows: list[list[torch.Tensor]], row_titles=None, col_titles=None, cell: float = 1.3,
               cmap: str = "gray"):
    """A grid of images (each (C,H,W) in [0,1]); ``rows[i][j]`` is row i, column j."""
    nr, nc = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nr, nc, figsize=(cell * nc, cell * nr), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(nc):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                ax.imshow(_img(row[j]), cmap=cmap, vmin=0, vmax=1)
            else:
                ax.axis("off")
            if col_titles and i == 0 and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=8)
            if row_titles and j == 0:
                ax.set_ylabel(row_titles[i], fontsize=8)
    fig.tight_layout()
    return fig


def grouped_bars(groups: dict[str, dict[str, float]], ylabel: str, title: str = "", reference=None,
                 reference_label: str = "chance", errors: dict[str, dict[str, float]] | None = None):
    """Bars of ``groups[group][strategy]``, strategies side by side within each group.

    ``reference`` is a dashed level: one number for all groups, or ``{group: level}``.
    """
    names = list(groups)
    strategies = list(dict.fromkeys(s for g in groups.values() for s in g))
    width = 0.8 / len(strategies)
    fig, ax = plt.subplots(figsize=(1.2 + 1.6 * len(names) * max(1, len(strategies) / 3), 3))
    for k, s in enumerate(strategies):
        xs = np.arange(len(names)) + (k - (len(strategies) - 1) / 2) * width
        ys = [groups[g].get(s, np.nan) for g in names]
        err = [errors[g].get(s, 0) for g in names] if errors else None
        ax.bar(xs, ys, width, yerr=err, label=s, color=STRATEGY_COLOURS.get(s), edgecolor="white", capsize=2)
    if isinstance(reference, dict):  # one reference level per group, drawn across that group's bars
        for i, g in enumerate(names):
            ax.hlines(reference[g], i - 0.45, i + 0.45, colors="k", linestyles="--", lw=1,
                      label=reference_label if i == 0 else None)
    elif reference is not None:
        ax.axhline(reference, ls="--", c="k", lw=1, label=reference_label)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def segment_heatmap(attr: torch.Tensor, segments: torch.Tensor) -> np.ndarray:
    """Spread per-segment scores (S,) over the (H,W) segment map."""
    return attr.detach().cpu()[segments].numpy()


def attribution_rows(images, attributions: dict[str, list[torch.Tensor]], segments: list[torch.Tensor],
                     objects=None, cell: float = 1.4):
    """One row per image: the image (with the object outline), then each strategy's segment heatmap."""
    names = list(attributions)
    fig, axes = plt.subplots(len(images), 1 + len(names), figsize=(cell * (1 + len(names)), cell * len(images)),
                             squeeze=False)
    for i, x in enumerate(images):
        axes[i][0].imshow(_img(x), cmap="gray", vmin=0, vmax=1)
        if objects is not None:
            axes[i][0].contour(objects[i].squeeze().numpy(), levels=[0.5], colors="yellow", linewidths=0.8)
        for j, name in enumerate(names):
            heat = segment_heatmap(attributions[name][i], segments[i])
            lim = np.abs(heat).max() + 1e-12
            axes[i][j + 1].imshow(heat, cmap="bwr", vmin=-lim, vmax=lim)
            if objects is not None:
                axes[i][j + 1].contour(objects[i].squeeze().numpy(), levels=[0.5], colors="k", linewidths=0.6)
            if i == 0:
                axes[i][j + 1].set_title(name, fontsize=8)
        if i == 0:
            axes[i][0].set_title("image", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def map_rows(rows: dict[str, list[np.ndarray]], col_titles: list[str], cell: float = 1.3, cmap: str = "magma"):
    """Rows of 2-D maps (e.g. activation energy per layer, attention maps), one colour scale per column."""
    nr, nc = len(rows), len(col_titles)
    fig, axes = plt.subplots(nr, nc, figsize=(cell * nc, cell * nr), squeeze=False)
    for j in range(nc):
        vmax = max(float(np.max(r[j])) for r in rows.values()) + 1e-12
        for i, (name, r) in enumerate(rows.items()):
            axes[i][j].imshow(r[j], cmap=cmap, vmin=0, vmax=vmax)
            axes[i][j].set_xticks([])
            axes[i][j].set_yticks([])
            if i == 0:
                axes[i][j].set_title(col_titles[j], fontsize=8)
            if j == 0:
                axes[i][j].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return fig



def _finish(fig, ax, xlabel: str, ylabel: str, title: str):
    """Labels, a frameless legend, no top/right spines: the look shared by the line and dot plots."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig

def curves(series: dict[str, tuple], xlabel: str, ylabel: str, title: str = "", colours: dict[str, str] | None = None,
           logy: bool = False, markers: bool = True, ax=None):
    """Line plot of ``series[name] = (x, y)`` (sequences or 1-D tensors), one line per name.

    ``colours`` maps a name to a matplotlib colour; ``ax`` draws into an existing axis. Returns the figure.
    """
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(4, 3))
    for name, (x, y) in series.items():
        ax.plot(np.asarray(x, dtype=float), np.asarray(y, dtype=float), marker="o" if markers else None, ms=3,
                label=name, color=(colours or {}).get(name))
    if logy:
        ax.set_yscale("log")
    return _finish(fig, ax, xlabel, ylabel, title)


def scatter(groups: dict[str, tuple], xlabel: str, ylabel: str, title: str = "", logx: bool = False,
            colours: dict[str, str] | None = None, ax=None, alpha: float = 0.6):
    """Scatter plot of ``groups[name] = (x, y)`` (sequences or 1-D tensors), one colour per group.

    ``ax`` draws into an existing axis (e.g. to overlay a binned :func:`curves` line). Returns the figure.
    """
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(4, 3))
    for name, (x, y) in groups.items():
        ax.scatter(np.asarray(x, dtype=float), np.asarray(y, dtype=float), s=10, alpha=alpha, label=name,
                   color=(colours or {}).get(name))
    if logx:
        ax.set_xscale("log")
    return _finish(fig, ax, xlabel, ylabel, title)


def attention_distance(distances: dict[str, torch.Tensor], ylabel: str = "mean attention distance (pixels)",
                       title: str = "", colours: dict[str, str] | None = None, reference: float | None = None,
                       ax=None):
    """The attention-distance plot of ViT/MIM papers: one dot per head at each block, a line through the
    per-block mean, one colour per model. ``distances[name]`` is [depth, heads] (averaged over images);
    ``reference`` draws a dotted horizontal line (e.g. the distance of uniform attention). Returns the figure."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(4.5, 3.2))
    names = list(distances)
    for k, name in enumerate(names):
        d = torch.as_tensor(distances[name], dtype=torch.float64)  # [depth, heads]
        depth, heads = d.shape
        shift = (k - (len(names) - 1) / 2) * 0.12  # side by side within a block
        colour = (colours or {}).get(name, f"C{k}")
        x = np.arange(1, depth + 1) + shift
        ax.scatter(np.repeat(x, heads), d.flatten().numpy(), s=12, alpha=0.6, color=colour)
        ax.plot(x, d.mean(1).numpy(), color=colour, label=name)
    if reference is not None:
        ax.axhline(reference, ls=":", c="grey", lw=1)
    ax.set_xticks(np.arange(1, max(len(d) for d in distances.values()) + 1))
    return _finish(fig, ax, "encoder block", ylabel, title)
