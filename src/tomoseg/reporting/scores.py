"""Pictures and tables for people: overlays, report panels, score tables and files.

Overlay colours for the class of interest follow the seed's figures: true positive white,
true negative black, false negative pink, false positive green.
"""

from __future__ import annotations

import csv
import io as _io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tomoseg.errors import TomosegError
from tomoseg.io.writers import write_image, write_json, write_text
from tomoseg.metrics.segmentation import ScoreSummary, nanmean
from tomoseg.utils.format import cell, fmt

TP_COLOUR = (255, 255, 255)  # white
TN_COLOUR = (0, 0, 0)  # black
FN_COLOUR = (255, 105, 180)  # pink
FP_COLOUR = (0, 200, 0)  # green
#: the overlay's colours and what they mean, in the order of the legend under a panel
LEGEND = (
    (TP_COLOUR, "true positive"),
    (TN_COLOUR, "true negative"),
    (FN_COLOUR, "false negative (missed)"),
    (FP_COLOUR, "false positive (extra)"),
)
#: opacity of the overlay's colours drawn over the image (true negatives leave it as it is),
#: and the brightness of the image under them (dimmed so that white true positives show)
OVERLAY_ALPHA = 0.6
OVERLAY_DIM = 0.6
#: tiles narrower than this are enlarged (nearest neighbour) so their titles fit
_MIN_TILE_PX = 240


def overlay(truth: np.ndarray, pred: np.ndarray, cls: int) -> np.ndarray:
    """Colour-code agreement of a prediction with the truth for one class.

    Args:
        truth: (H, W) class ids.
        pred: (H, W) class ids.
        cls: class of interest.

    Returns:
        (H, W, 3) uint8 RGB: TP white, TN black, FN pink, FP green.
    """
    t, p = truth == cls, pred == cls
    out = np.zeros((*t.shape, 3), np.uint8)
    out[t & p] = TP_COLOUR
    out[t & ~p] = FN_COLOUR
    out[~t & p] = FP_COLOUR
    return out


def to_display(img: np.ndarray) -> np.ndarray:
    """Scale a grayscale image to uint8 by its 0.5-99.5 percentiles for display."""
    a = np.asarray(img, np.float32)
    finite = np.isfinite(a)
    if not finite.all():  # outside the field of view: shown black
        a = np.where(finite, a, np.nanmin(a[finite]) if finite.any() else 0.0)
    lo, hi = np.percentile(a, [0.5, 99.5])
    return (np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1) * 255).astype(np.uint8)


def _labels_to_rgb(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Grey levels for class ids: 0 black, K-1 white."""
    return np.repeat(
        (labels.astype(np.float32) * (255 / max(n_classes - 1, 1))).astype(np.uint8)[..., None],
        3,
        -1,
    )


def reduce_by_area(
    rgb: np.ndarray, factor: int, keep: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Downsample an (H, W, 3) picture by ``factor`` in both axes, each output pixel the mean of
    its ``factor`` x ``factor`` block (skimage's ``block_reduce``; the blocks of the last rows
    and columns are averaged over the pixels they hold).

    Where ``keep`` (an (H, W) bool mask: the class of interest) touches a block, the block is
    the mean colour of its ``keep`` pixels only: a structure thinner than a block (a dendrite
    one pixel wide, a 3-pixel particle) stays visible at full strength, one block wide, instead
    of fading into the background (plain area mean: at a factor of 4 a 1-pixel line keeps a
    quarter of its brightness) or vanishing (taking every ``factor``-th pixel misses it
    entirely). The cost: such a structure looks up to one block thicker; how much of it is
    right or wrong (the overlay's colours) is still averaged by area.

    Returns:
        ``(picture, touched)``: (ceil(H / factor), ceil(W / factor), 3) uint8, and the
        (h, w) bool mask of blocks ``keep`` touches (None without ``keep``).
    """
    if factor <= 1:
        return rgb, (None if keep is None else np.asarray(keep, bool))
    from skimage.measure import block_reduce

    a = rgb.astype(np.float32)
    size = (factor, factor)
    count = block_reduce(np.ones(rgb.shape[:2], np.float32), size, np.sum)
    out = block_reduce(a, (*size, 1), np.sum) / count[..., None]
    touched = None
    if keep is not None:
        k = np.asarray(keep, np.float32)
        n_keep = block_reduce(k, size, np.sum)
        touched = n_keep > 0
        kept = block_reduce(a * k[..., None], (*size, 1), np.sum)
        out[touched] = kept[touched] / n_keep[touched, None]
    return np.round(out).astype(np.uint8), touched


def panel_tiles(
    truth: np.ndarray,
    pred: np.ndarray,
    cls: int,
    n_classes: int,
    image: np.ndarray | None = None,
    max_width: int = 2400,
    class_name: str | None = None,
) -> dict[str, np.ndarray]:
    """The columns of a report panel, downsampled together by area (:func:`reduce_by_area`)
    so that they fit ``max_width`` pixels side by side.

    Args:
        truth, pred: (H, W) class ids.
        cls: class of interest (the overlay's class; kept visible by the downsampling).
        n_classes: K (grey levels of the label columns: 0 black, K-1 white).
        image: optional (H, W) raw image, shown first and under the overlay.
        max_width: the width of all columns together, at most (pixels).
        class_name: the class of interest's name, for the overlay's title (default its id).

    Returns:
        Title -> (h, w, 3) uint8 RGB, in order: ``image``, ``truth``, ``prediction``,
        ``overlay of <class>``, ``overlay on image`` (the image ones only with ``image``).
    """
    columns = 3 + 2 * (image is not None)
    f = max(1, math.ceil(columns * truth.shape[1] / max_width))
    t_cls, p_cls = truth == cls, pred == cls
    tiles: dict[str, np.ndarray] = {}
    if image is not None:
        tiles["image"] = reduce_by_area(np.repeat(to_display(image)[..., None], 3, -1), f)[0]
    tiles["truth"] = reduce_by_area(_labels_to_rgb(truth, n_classes), f, t_cls)[0]
    tiles["prediction"] = reduce_by_area(_labels_to_rgb(pred, n_classes), f, p_cls)[0]
    ov, touched = reduce_by_area(overlay(truth, pred, cls), f, t_cls | p_cls)
    tiles[f"overlay of {class_name if class_name is not None else cls}"] = ov
    if image is not None:
        alpha = OVERLAY_ALPHA * touched[..., None]
        base = tiles["image"].astype(np.float32) * OVERLAY_DIM
        tiles["overlay on image"] = np.round(base * (1 - alpha) + ov * alpha).astype(np.uint8)
    return tiles


def panel_figure(
    truth: np.ndarray,
    pred: np.ndarray,
    cls: int,
    classes: Sequence[str],
    image: np.ndarray | None = None,
    max_width: int = 2400,
    title: str | None = None,
) -> Any:
    """A report panel as a matplotlib figure: the columns of :func:`panel_tiles`, each under
    its title, and a colour legend of the overlay (TP white, TN black, FN pink, FP green)
    below them.

    Args:
        truth, pred: (H, W) class ids.
        cls: index of the class of interest in ``classes``.
        classes: the K class names.
        image: optional raw image.
        max_width: as :func:`panel_tiles`.
        title: an optional line above the panel (the image's id).

    Returns:
        A ``matplotlib.figure.Figure`` (Agg canvas, not shown; close it after use), one pixel
        of a column per pixel of the figure (columns narrower than 240 pixels enlarged).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    tiles = panel_tiles(truth, pred, cls, len(classes), image, max_width, classes[cls])
    h, w = next(iter(tiles.values())).shape[:2]
    zoom = max(1, math.ceil(_MIN_TILE_PX / w))
    h, w = h * zoom, w * zoom
    dpi, gap, top, bottom = 100, 6, 26 + 20 * (title is not None), 30
    width, height = len(tiles) * w + (len(tiles) - 1) * gap, top + h + bottom
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    for i, (name, tile) in enumerate(tiles.items()):
        ax = fig.add_axes(((i * (w + gap)) / width, bottom / height, w / width, h / height))
        ax.imshow(tile, interpolation="nearest", aspect="auto")
        ax.set_axis_off()
        ax.set_title(name, fontsize=10, pad=4)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 4 / height, va="top")
    handles = [Patch(facecolor=np.array(c) / 255, edgecolor="0.5", label=w) for c, w in LEGEND]
    fig.legend(
        handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9,
        bbox_to_anchor=(0.5, 0), columnspacing=1.5, handlelength=1.2,
    )  # fmt: skip
    return fig


def panel(
    truth: np.ndarray,
    pred: np.ndarray,
    cls: int,
    classes: Sequence[str],
    image: np.ndarray | None = None,
    max_width: int = 2400,
    title: str | None = None,
) -> np.ndarray:
    """:func:`panel_figure` drawn as an (H', W', 3) uint8 RGB picture."""
    fig = panel_figure(truth, pred, cls, classes, image, max_width, title)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def per_image_csv(summary: ScoreSummary) -> str:
    """CSV text, one row per image: id, accuracy, iou_<class>..., bf1_<class>... (NaN empty)."""
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "id",
            "accuracy",
            *[f"iou_{c}" for c in summary.classes],
            *[f"bf1_{c}" for c in summary.classes],
        ]
    )

    for s in summary.images:
        w.writerow([s.id, cell(s.accuracy), *map(cell, s.iou), *map(cell, s.bf1)])
    return buf.getvalue()


def write_score_files(summary: ScoreSummary, out: Path) -> None:
    """Write ``metrics.json`` and ``per_image.csv`` atomically into ``out``."""
    write_json(out / "metrics.json", summary.to_dict())
    write_text(out / "per_image.csv", per_image_csv(summary))


def write_overlays(
    out: Path,
    image_id: str,
    truth: np.ndarray,
    pred: np.ndarray,
    cls: int,
    classes: Sequence[str],
    image: np.ndarray | None = None,
) -> None:
    """Write ``overlays/<id>.png`` (the overlay at full resolution: TP white, TN black, FN
    pink, FP green) and ``panels/<id>.png`` (:func:`panel`: titled columns and a legend)."""
    write_image(out / "overlays" / f"{image_id}.png", overlay(truth, pred, cls))
    write_image(
        out / "panels" / f"{image_id}.png", panel(truth, pred, cls, classes, image, title=image_id)
    )


def score_rows(summary: ScoreSummary) -> list[list[dict[str, str]]]:
    """The score table as plain rows, in groups: one row per image; then the mean over images
    and the pooled IoU (and the same without post-processing, when the summary has them).

    Returns:
        Groups of rows; each row maps the column names (``image``, ``accuracy``, ``mean IoU``,
        ``IoU <class>``, ``BF1 <class> (<tolerance> px)``) to cell text (percentages).
    """
    coi = summary.class_of_interest
    k = summary.classes.index(coi)
    cols = (
        "image",
        "accuracy",
        "mean IoU",
        f"IoU {coi}",
        f"BF1 {coi} ({summary.tolerance_px:g} px)",
    )

    def row(*cells: str) -> dict[str, str]:
        return dict(zip(cols, cells, strict=True))

    groups = [
        [
            row(s.id, fmt(s.accuracy), fmt(float(nanmean(s.iou))), fmt(s.iou[k]), fmt(s.bf1[k]))
            for s in summary.images
        ]
    ]
    blocks = [(summary, "mean over images", "pooled (summed confusion)")]
    if summary.without_postprocess is not None:
        blocks.append(
            (
                summary.without_postprocess,
                "mean, without post-processing",
                "pooled, without post-processing",
            )
        )
    for s, mean_label, pooled_label in blocks:
        miou, pooled = s.mean_iou, s.pooled_iou
        mean = row(
            mean_label,
            fmt(s.mean_accuracy),
            fmt(float(nanmean(miou))),
            fmt(miou[k]),
            fmt(s.mean_bf1[k]),
        )
        groups.append(
            [mean, row(pooled_label, "", fmt(float(nanmean(pooled))), fmt(pooled[k]), "")]
        )
    return groups


def class_index(classes: Sequence[str], name: str | None) -> int:
    """Index of a class name; the last class when ``name`` is None."""
    if name is None:
        return len(classes) - 1
    if name not in classes:
        raise TomosegError(f"unknown class '{name}' (classes: {', '.join(classes)})")
    return list(classes).index(name)
