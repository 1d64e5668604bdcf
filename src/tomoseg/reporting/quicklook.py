"""Quick-look pictures of a segmentation: a few slices with their labels drawn over the image,
written by ``tomoseg predict`` and ``tomoseg segment-stack`` beside their results so that a
glance tells whether the job did what was meant (the labels themselves are class ids: see
:func:`tomoseg.io.writers.write_mask`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tomoseg.errors import TomosegWarning
from tomoseg.io.writers import write_image
from tomoseg.reporting.scores import OVERLAY_ALPHA, OVERLAY_DIM, reduce_by_area, to_display
from tomoseg.utils.format import first_line

QUICKLOOK_NAME = "quicklook.png"
#: colours of classes 1, 2, ... over the image (Trubetskoy's distinct colours); 0 is not drawn
CLASS_COLOURS = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180),
    (70, 240, 240), (245, 130, 48), (240, 50, 230), (210, 245, 60), (0, 128, 128),
)  # fmt: skip
_TILE_PX = 700  # the widest a tile is drawn (pixels)


def class_colour(k: int) -> tuple[int, int, int]:
    """RGB of class id ``k`` >= 1 in quick-looks."""
    return CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)]


def labels_over_image(
    image: np.ndarray, labels: np.ndarray, max_width: int = _TILE_PX
) -> np.ndarray:
    """An (H, W) image with its (H, W) class ids drawn over it (class 0 left out, others in
    :func:`class_colour`, 60 % opaque on the image dimmed to 60 %), downsampled by area to
    at most ``max_width`` pixels wide (:func:`~tomoseg.reporting.scores.reduce_by_area`: a
    labelled structure thinner than a block stays visible).

    Returns:
        (h, w, 3) uint8 RGB.
    """
    f = max(1, math.ceil(image.shape[1] / max_width))
    grey = reduce_by_area(np.repeat(to_display(image)[..., None], 3, -1), f)[0]
    lut = np.zeros((max(int(labels.max(initial=0)) + 1, 2), 3), np.uint8)
    for k in range(1, len(lut)):
        lut[k] = class_colour(k)
    colours, touched = reduce_by_area(lut[labels], f, labels > 0)
    alpha = OVERLAY_ALPHA * touched[..., None]
    out = grey.astype(np.float32) * OVERLAY_DIM * (1 - alpha) + colours * alpha
    out = np.where(touched[..., None], out, grey.astype(np.float32) * OVERLAY_DIM)
    return np.round(out).astype(np.uint8)


def quicklook_figure(
    views: Sequence[tuple[str, np.ndarray, np.ndarray]], classes: Sequence[str], title: str = ""
) -> Any:
    """A row of slices, each ``(name, (H, W) image, (H, W) class ids)`` drawn by
    :func:`labels_over_image` under its name and the share of each class in it, with a legend
    of the class colours.

    Returns:
        A ``matplotlib.figure.Figure`` (Agg canvas, not shown).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    tiles = [labels_over_image(img, lab) for _, img, lab in views]
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    zoom = max(1, math.ceil(240 / w))
    h, w = h * zoom, w * zoom
    dpi, gap, top, bottom = 100, 8, 40 + 18 * bool(title), 30
    width, height = len(tiles) * w + (len(tiles) - 1) * gap, top + h + bottom
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    for i, ((name, _, lab), tile) in enumerate(zip(views, tiles, strict=True)):
        ax = fig.add_axes(((i * (w + gap)) / width, bottom / height, w / width, h / height))
        ax.imshow(tile, interpolation="nearest", aspect="equal")
        ax.set_axis_off()
        counts = np.bincount(lab.ravel(), minlength=len(classes))
        share = ", ".join(
            f"{classes[k]} {100 * counts[k] / lab.size:.1f} %" for k in range(1, len(classes))
        )
        ax.set_title(f"{name}\n{share}", fontsize=9, pad=3)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 4 / height, va="top")
    handles = [
        Patch(facecolor=np.array(class_colour(k)) / 255, label=classes[k])
        for k in range(1, len(classes))
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=max(1, len(handles)), frameon=False,
        fontsize=9, bbox_to_anchor=(0.5, 0), handlelength=1.2,
    )  # fmt: skip
    return fig


def write_quicklook(
    path: str | Path,
    views: Sequence[tuple[str, np.ndarray, np.ndarray]],
    classes: Sequence[str],
    title: str = "",
) -> Path:
    """Draw :func:`quicklook_figure` into ``path`` (PNG), atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(quicklook_figure(views, classes, title))
    canvas.draw()
    return write_image(path, np.asarray(canvas.buffer_rgba())[..., :3].copy())


def spread(n: int, k: int) -> list[int]:
    """Up to ``k`` indices of ``0..n-1`` spread evenly, the middle one among them when ``k``
    is odd (``spread(100, 3) == [25, 50, 75]``)."""
    if n <= k:
        return list(range(n))
    return sorted({min(n - 1, int((i + 1) * n / (k + 1))) for i in range(k)})


def quicklook_or_warn(
    path: Path,
    views: Callable[[], Sequence[tuple[str, np.ndarray, np.ndarray]]],
    classes: Sequence[str],
    title: str = "",
) -> Path | None:
    """:func:`write_quicklook` of the views ``views()`` reads; the quick-look is optional: a
    failure (an unreadable slice, a full disk) is one warning and None, never the job's end.
    """
    try:
        return write_quicklook(path, views(), classes, title)
    except Exception as exc:  # noqa: BLE001 - a picture never costs the results
        warnings.warn(
            f"no quick-look picture {path}: {first_line(exc)}", TomosegWarning, stacklevel=2
        )
        return None
