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

import numpy as np

from tomoseg.errors import TomosegError
from tomoseg.io.writers import write_image, write_json, write_text
from tomoseg.metrics.segmentation import ScoreSummary, nanmean
from tomoseg.utils.format import cell, fmt

TP_COLOUR = (255, 255, 255)  # white
TN_COLOUR = (0, 0, 0)  # black
FN_COLOUR = (255, 105, 180)  # pink
FP_COLOUR = (0, 200, 0)  # green


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


def _to_display(img: np.ndarray) -> np.ndarray:
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


def panel(
    truth: np.ndarray,
    pred: np.ndarray,
    cls: int,
    n_classes: int,
    image: np.ndarray | None = None,
    max_width: int = 2400,
) -> np.ndarray:
    """Side-by-side panel ``[image |] truth | prediction | overlay`` for reports.

    Args:
        truth, pred: (H, W) class ids.
        cls: class of interest for the overlay.
        n_classes: K (for grey levels of the label panels).
        image: optional raw image shown first.
        max_width: the panel is downsampled (by an integer step) to at most this width.

    Returns:
        (H', W', 3) uint8 RGB with 4-pixel grey separators.
    """
    tiles = []
    if image is not None:
        tiles.append(np.repeat(_to_display(image)[..., None], 3, -1))
    tiles += [
        _labels_to_rgb(truth, n_classes),
        _labels_to_rgb(pred, n_classes),
        overlay(truth, pred, cls),
    ]
    step = max(1, math.ceil(len(tiles) * truth.shape[1] / max_width))
    tiles = [t[::step, ::step] for t in tiles]
    sep = np.full((tiles[0].shape[0], 4, 3), 128, np.uint8)
    parts: list[np.ndarray] = []
    for t in tiles:
        parts += [t, sep]
    return np.concatenate(parts[:-1], axis=1)


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
    n_classes: int,
    image: np.ndarray | None = None,
) -> None:
    """Write ``overlays/<id>.png`` (full resolution) and ``panels/<id>.png`` (downsampled)."""
    write_image(out / "overlays" / f"{image_id}.png", overlay(truth, pred, cls))
    write_image(out / "panels" / f"{image_id}.png", panel(truth, pred, cls, n_classes, image))


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
