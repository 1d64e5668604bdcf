"""Figures of training runs and sweeps: a run's training curves, a sweep's heatmaps.

Drawn with matplotlib's Agg backend (no display needed) and written atomically as PNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tomoseg.io.writers import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def best_epoch(history: Sequence[Mapping[str, Any]], key: str) -> int | None:
    """The epoch of the highest ``key`` (the first of equal ones, NaN and missing values
    skipped), as Lightning's ``ModelCheckpoint(mode="max")`` chooses ``best.safetensors``;
    None when no epoch has a value."""
    best: tuple[float, int] | None = None
    for r in history:
        v = r.get(key)
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if not math.isnan(v) and (best is None or v > best[0]):
            best = (v, int(r["epoch"]))
    return None if best is None else best[1]


def plot_curves(history: Sequence[Mapping[str, Any]], path: Path, coi: str) -> None:
    """Write :func:`curves_figure` to ``path`` (PNG), atomically."""
    fig = curves_figure(history, coi)
    atomic_write(path, lambda t: fig.savefig(t, dpi=90, format="png"))
    _pyplot().close(fig)


def curves_figure(history: Sequence[Mapping[str, Any]], coi: str) -> Any:
    """Loss, accuracy, IoU of the class of interest, BF1 and seconds per epoch against the
    epoch (train and val), one panel each, as a matplotlib figure (close it after use). Where a
    run averages its weights, validation scores the averaged weights (``val``, the delivered
    ones) and, while the average warms up, the raw ones too (``val_raw_iou_<coi>``,
    ``val_raw_bf1_<coi>``: a third line, "val, raw weights").

    The scores (accuracy, IoU, BF1: fractions) are drawn on a fixed 0-1 axis, so that runs
    compare at a glance and a flat curve is not magnified; the best epoch (highest validation
    IoU of the class of interest, the one ``best.safetensors`` holds) is marked in every panel.

    Args:
        history: one row per epoch (``metrics.csv``'s columns: ``epoch``, ``train_loss``,
            ``val_loss``, ``train_iou_<coi>``, ...); missing keys are left out of the panels.
        coi: name of the class of interest.
    """
    plt = _pyplot()
    ep = [r["epoch"] for r in history]
    panels = [  # title, a score in [0, 1], train key, val key, raw-weights val key
        ("loss", False, "train_loss", "val_loss"),
        ("global accuracy", True, "train_accuracy", "val_accuracy"),
        (f"IoU {coi}", True, f"train_iou_{coi}", f"val_iou_{coi}", f"val_raw_iou_{coi}"),
        (f"BF1 {coi} (val, full images)", True, None, f"val_bf1_{coi}", f"val_raw_bf1_{coi}"),
        ("seconds per epoch", False, "seconds", None),
    ]
    best = best_epoch(history, f"val_iou_{coi}")
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (title, score, tr, va, *raw) in zip(axes, panels, strict=True):
        averaged = bool(raw) and any(raw[0] in r for r in history)
        lines = [(tr, "train"), (va, "val, averaged weights" if averaged else "val")]
        for key, label in lines + [(k, "val, raw weights") for k in raw]:
            if key and any(key in r for r in history):
                ax.plot(ep, [r.get(key, np.nan) for r in history], marker="o", ms=3, label=label)
        if best is not None:
            ax.axvline(best, color="0.4", ls="--", lw=1, label=f"best (epoch {best})")
        if score:
            ax.set_ylim(0, 1)
        elif ax.lines:
            ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_heatmap(
    mean: np.ndarray,
    std: np.ndarray,
    missing: Sequence[Sequence[str]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    path: Path,
    xlabel: str = "crop count N",
    ylabel: str = "crop size S (px)",
) -> None:
    """A heatmap of fractions (shown in %), mean (± std) written in each cell.

    Args:
        mean: (R, C) fractions in [0, 1]; NaN where the cell has no value.
        std: (R, C) standard deviations (NaN: none, e.g. a single repeat).
        missing: (R, C) words written in the cells without a value (``failed``, ``pending``).
        row_labels, col_labels: tick labels of the R rows and C columns.
        title: the figure's title.
        path: the PNG file to write.
    """
    plt = _pyplot()
    grid = np.asarray(mean, float)
    fig, ax = plt.subplots(figsize=(1.6 * len(col_labels) + 2.5, 0.9 * len(row_labels) + 1.8))
    im = ax.imshow(
        grid * 100,
        cmap="viridis",
        vmin=np.nanmin(grid * 100) if np.isfinite(grid).any() else 0,
        aspect="auto",
    )
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            m, sd = float(grid[i, j]), float(std[i, j])
            if math.isnan(m):
                txt = missing[i][j]
            else:
                txt = f"{100 * m:.1f}" + (f"\n± {100 * sd:.1f}" if not math.isnan(sd) else "")
            ax.text(
                j,
                i,
                txt,
                ha="center",
                va="center",
                color="white" if math.isnan(m) or m < np.nanmean(grid) else "black",
                fontsize=9,
            )
    ax.set_xticks(range(len(col_labels)), list(col_labels))
    ax.set_yticks(range(len(row_labels)), list(row_labels))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="%")
    fig.tight_layout()
    atomic_write(path, lambda t: fig.savefig(t, dpi=90, format="png"))
    plt.close(fig)
