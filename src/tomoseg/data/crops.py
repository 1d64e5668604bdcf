"""Random square crops of large training images: the project's own sampling method.

Training never sees whole 2300x1920 slices; it sees N random SxS crops drawn once from the
training images. :func:`sample_crops` draws them:

* **Uniform** (default): every valid top-left position of every training image is equally
  likely. An image is chosen with probability proportional to its number of valid positions,
  then a position uniformly within it. So a larger image provides proportionally more crops.
* **Whole extent**: when S is at or above an image's height (width), the crop spans the whole
  height (width), ``h = min(S, H)``, ``w = min(S, W)``; with S at or above both, the crop is
  the whole image (the "full" case) and the image has exactly one valid position.
* **Annotated only** (optional, for partially labelled masks): given the annotated-pixel masks,
  a uniform crop holding no annotated pixel is redrawn (same rule, images without any annotated
  pixel excluded), so every crop teaches something.
* **Focus** (optional): a fraction ``focus_fraction`` of the crops is instead centred on a pixel
  drawn uniformly among all pixels of ``focus_class`` (over all images), shifted as little as
  needed to stay inside the image. This raises the share of a rare class in the crops; use
  :func:`class_fraction_in_crops` to report by how much.

Everything is a pure function of ``seed`` (``numpy.random.default_rng``).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np

import tomoseg.io as io
from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.utils.format import plural

MIN_CROP_SIZE = 16
CROPS_CSV = "crops.csv"
_CROP_FILE = re.compile(r"^crop_\d+\.(tif|png)$")


@dataclass(frozen=True)
class CropBox:
    """A crop of image number ``image``: rows ``y:y+h``, columns ``x:x+w``."""

    image: int
    y: int
    x: int
    h: int
    w: int


# ----------------------------------------------------------------------------- validation


def _check_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, Integral) or size < MIN_CROP_SIZE:
        raise TomosegError(f"crop size must be an integer >= {MIN_CROP_SIZE}, got {size!r}")
    return int(size)


def _check_count(count: object) -> int:
    if isinstance(count, bool) or not isinstance(count, Integral) or count <= 0:
        raise TomosegError(f"crop count must be a positive integer, got {count!r}")
    return int(count)


def _check_fraction(fraction: object) -> float:
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, Real)
        or not math.isfinite(float(fraction))
        or not 0.0 <= float(fraction) <= 1.0
    ):
        raise TomosegError(f"focus fraction must be between 0 and 1, got {fraction!r}")
    return float(fraction)


def _check_shapes(shapes: Sequence[tuple[int, int]]) -> np.ndarray:
    if len(shapes) == 0:
        raise TomosegError("no training images to crop from")
    arr = np.asarray([tuple(s) for s in shapes], dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2 or (arr < 1).any():
        raise TomosegError(f"image shapes must be (height, width) pairs >= 1, got {list(shapes)}")
    return arr


def warn_crop_larger(
    sizes: int | Sequence[int], shapes: Sequence[tuple[int, int]], name: str = "crop_size"
) -> None:
    """One :class:`~tomoseg.errors.TomosegWarning` when a crop side exceeds the smallest side
    of the training images: there the crop is cut to the image (``min(S, H)`` x ``min(S, W)``,
    :func:`crop_extent`), so an image no larger than the crop is trained on whole, as ``full``.

    Args:
        sizes: the crop side S in px, or several (a sweep's); 0 (whole images) is never warned
            about.
        shapes: (H, W) of the training images.
        name: the parameter the sizes come from, as the message names it.
    """
    side = min((min(int(h), int(w)) for h, w in shapes), default=0)
    big = [int(s) for s in ([sizes] if isinstance(sizes, Integral) else sizes) if s and s > side]
    if side and big:
        warnings.warn(
            f"{name}={','.join(map(str, big))} is larger than the smallest side of the "
            f"training images ({side} px): crops are cut to the image there (at most {side} "
            "px on that side; an image no larger than the crop is used whole, as with full "
            "images)",
            TomosegWarning,
            stacklevel=2,
        )


# ----------------------------------------------------------------------------- sampling


def crop_extent(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """Crop height and width for an image of ``shape``: ``(min(size, H), min(size, W))``."""
    return min(size, int(shape[0])), min(size, int(shape[1]))


def valid_positions(shape: tuple[int, int], size: int) -> int:
    """Number of distinct top-left positions of a ``size`` crop in an image of ``shape``."""
    h, w = crop_extent(shape, size)
    return (int(shape[0]) - h + 1) * (int(shape[1]) - w + 1)


def _uniform_boxes(
    shapes: np.ndarray,
    size: int,
    n: int,
    rng: np.random.Generator,
    allowed: np.ndarray | None = None,
) -> list[CropBox]:
    hs = np.minimum(size, shapes[:, 0])
    ws = np.minimum(size, shapes[:, 1])
    ny = shapes[:, 0] - hs + 1
    nx = shapes[:, 1] - ws + 1
    weights = (ny * nx).astype(np.float64)
    if allowed is not None:
        weights = weights * allowed
    images = rng.choice(len(shapes), size=n, p=weights / weights.sum())
    ys = rng.integers(0, ny[images])
    xs = rng.integers(0, nx[images])
    return [
        CropBox(int(i), int(y), int(x), int(hs[i]), int(ws[i]))
        for i, y, x in zip(images, ys, xs, strict=True)
    ]


def _focus_boxes(
    shapes: np.ndarray,
    size: int,
    n: int,
    rng: np.random.Generator,
    masks: Sequence[np.ndarray],
    focus_class: int,
) -> list[CropBox]:
    counts = np.array([int(np.count_nonzero(m == focus_class)) for m in masks], dtype=np.int64)
    images = rng.choice(len(masks), size=n, p=counts / counts.sum())
    ranks = rng.integers(0, counts[images])  # k-th focus pixel of the chosen image
    flat_cache: dict[int, np.ndarray] = {}
    boxes = []
    for i, k in zip(images, ranks, strict=True):
        i = int(i)
        if i not in flat_cache:
            flat_cache[i] = np.flatnonzero(np.asarray(masks[i]) == focus_class)
        H, W = (int(v) for v in shapes[i])
        py, px = divmod(int(flat_cache[i][k]), W)
        h, w = crop_extent((H, W), size)
        y = min(max(py - h // 2, 0), H - h)
        x = min(max(px - w // 2, 0), W - w)
        boxes.append(CropBox(i, y, x, h, w))
    return boxes


def sample_crops(
    shapes: Sequence[tuple[int, int]],
    size: int,
    count: int,
    seed: int,
    focus_fraction: float = 0.0,
    masks: Sequence[np.ndarray] | None = None,
    focus_class: int | None = None,
    *,
    annotated: Sequence[np.ndarray] | None = None,
) -> list[CropBox]:
    """Draw ``count`` random ``size`` x ``size`` crops from images of the given shapes.

    Args:
        shapes: (H, W) of each training image; ``CropBox.image`` indexes this list.
        size: crop side S (>= 16). Where S reaches an image's height or width, the crop spans
            that whole axis.
        count: number of crops N (> 0).
        seed: seed of ``numpy.random.default_rng``; the result is a pure function of it.
        focus_fraction: fraction of the crops (rounded to the nearest integer count) centred on
            a pixel of ``focus_class`` instead of placed uniformly; 0 = all uniform. Focused crops
            are interleaved at random positions of the returned list.
        masks: masks of the images (same shapes), needed when ``focus_fraction > 0``.
        focus_class: class id to focus on, needed when ``focus_fraction > 0``.
        annotated: (H, W) boolean masks of the annotated pixels of each image; uniform crops
            without any annotated pixel are redrawn. None: every pixel is annotated (and the
            draw is unchanged).

    Returns:
        ``count`` crop boxes, each inside its image.

    Raises:
        TomosegError: size not an integer >= 16, count <= 0, focus fraction outside [0, 1],
            focus requested without masks / class or with a class absent from all masks, no
            annotated pixel at all.
    """
    size = _check_size(size)
    count = _check_count(count)
    fraction = _check_fraction(focus_fraction)
    shape_arr = _check_shapes(shapes)
    rng = np.random.default_rng(seed)
    n_focus = int(math.floor(fraction * count + 0.5))
    if fraction > 0:
        masks, focus_class = _check_focus(shape_arr, masks, focus_class)
    uniform = _uniform_boxes(shape_arr, size, count - n_focus, rng) if count > n_focus else []
    if annotated is not None:
        uniform = _redraw_unannotated(uniform, shape_arr, size, rng, annotated)
    if n_focus == 0:
        return uniform
    assert masks is not None and focus_class is not None
    focused = _focus_boxes(shape_arr, size, n_focus, rng, masks, focus_class)
    is_focus = np.zeros(count, dtype=bool)
    is_focus[rng.permutation(count)[:n_focus]] = True
    it_uniform, it_focus = iter(uniform), iter(focused)
    return [next(it_focus) if f else next(it_uniform) for f in is_focus]


def _redraw_unannotated(
    boxes: list[CropBox],
    shapes: np.ndarray,
    size: int,
    rng: np.random.Generator,
    annotated: Sequence[np.ndarray],
    rounds: int = 200,
) -> list[CropBox]:
    """Replace the boxes holding no annotated pixel by fresh uniform draws (seeded by ``rng``)."""
    if len(annotated) != len(shapes):
        raise TomosegError(
            f"got {plural(len(annotated), 'annotation mask')} for {plural(len(shapes), 'image')}"
        )
    # integral images: annotated pixels in a box in O(1)
    integ = []
    for i, a in enumerate(annotated):
        a = np.asarray(a, bool)
        if a.shape != tuple(int(v) for v in shapes[i]):
            raise TomosegError(
                f"annotation mask {i} has shape {a.shape}, its image {tuple(shapes[i])}"
            )
        c = np.zeros((a.shape[0] + 1, a.shape[1] + 1), np.int64)
        c[1:, 1:] = a.cumsum(0).cumsum(1)
        integ.append(c)
    allowed = np.array([c[-1, -1] > 0 for c in integ])
    if not allowed.any():
        raise TomosegError("no annotated pixel in the training masks: nothing to learn from")

    def ok(b: CropBox) -> bool:
        c = integ[b.image]
        return bool(c[b.y + b.h, b.x + b.w] - c[b.y, b.x + b.w] - c[b.y + b.h, b.x] + c[b.y, b.x])

    out = list(boxes)
    bad = [i for i, b in enumerate(out) if not ok(b)]
    for _ in range(rounds):
        if not bad:
            return out
        for i, b in zip(bad, _uniform_boxes(shapes, size, len(bad), rng, allowed), strict=True):
            out[i] = b
        bad = [i for i in bad if not ok(out[i])]
    raise TomosegError(
        f"could not draw {size}px crops holding annotated pixels ({len(bad)} of {len(out)} "
        f"still empty after {rounds} redraws); annotate more, or use a larger crop size"
    )


def _check_focus(
    shapes: np.ndarray, masks: Sequence[np.ndarray] | None, focus_class: int | None
) -> tuple[Sequence[np.ndarray], int]:
    if masks is None or focus_class is None:
        raise TomosegError("focused crops need the masks and a focus class")
    if isinstance(focus_class, bool) or not isinstance(focus_class, Integral):
        raise TomosegError(f"focus class must be an integer class id, got {focus_class!r}")
    if len(masks) != len(shapes):
        raise TomosegError(f"got {plural(len(masks), 'mask')} for {plural(len(shapes), 'image')}")
    for i, (m, s) in enumerate(zip(masks, shapes, strict=True)):
        if np.shape(m) != tuple(int(v) for v in s):
            raise TomosegError(f"mask {i} has shape {np.shape(m)} but its image is {tuple(s)}")
    if not any(np.any(np.asarray(m) == focus_class) for m in masks):
        raise TomosegError(
            f"cannot focus crops on class {focus_class}: no pixel of it in the masks"
        )
    return masks, int(focus_class)


def extract_crop(arr: np.ndarray, box: CropBox) -> np.ndarray:
    """Cut a crop out of an array of shape (..., H, W) (a view of ``arr[..., y:y+h, x:x+w]``).

    Raises:
        TomosegError: the box does not lie inside the array.
    """
    H, W = arr.shape[-2:]
    if box.y < 0 or box.x < 0 or box.y + box.h > H or box.x + box.w > W:
        raise TomosegError(f"crop {box} does not fit in an array of shape {arr.shape}")
    return arr[..., box.y : box.y + box.h, box.x : box.x + box.w]


def class_fraction_in_crops(
    masks: Sequence[np.ndarray], boxes: Sequence[CropBox], cls: int
) -> float:
    """Fraction of all crop pixels (over all boxes) that belong to class ``cls``.

    Args:
        masks: the masks indexed by ``CropBox.image``.
        boxes: crops, e.g. from :func:`sample_crops`.
        cls: class id.

    Returns:
        A value in [0, 1].
    """
    if len(boxes) == 0:
        raise TomosegError("no crops to measure")
    hits = total = 0
    for b in boxes:
        crop = extract_crop(np.asarray(masks[b.image]), b)
        hits += int(np.count_nonzero(crop == cls))
        total += crop.size
    return hits / total


# ----------------------------------------------------------------------------- export


def export_crops(
    data: str | os.PathLike[str],
    size: int,
    count: int,
    seed: int,
    out: str | os.PathLike[str],
    focus_fraction: float = 0.0,
    overwrite: bool = False,
) -> list[Path]:
    """Sample crops of a dataset's training split and write them as files.

    Writes ``out/images/crop_00000.tif`` (image dtype preserved), ``out/masks/crop_00000.png``
    and, last, ``out/crops.csv`` (``index,source_id,y,x,h,w``); every file atomically. Focused
    crops (``focus_fraction > 0``) centre on the dataset's class of interest. With ``overwrite``,
    crop files of an earlier export that the new one does not replace are removed.

    Args:
        data: dataset folder (``dataset.json`` and ``train/{images,masks}``), or a
            :class:`~tomoseg.data.sources.DataSource` (images with their masks; a volume pair
            gives one image per z-slice).
        size: crop side (>= 16).
        count: number of crops.
        seed: sampling seed.
        out: output folder.
        focus_fraction: fraction of crops centred on the class of interest.
        overwrite: replace an earlier export in ``out``.

    Returns:
        The written image paths, in crop order.

    Raises:
        TomosegError: invalid dataset or arguments, or ``out`` holds crops and not ``overwrite``.
    """
    _check_size(size)
    _check_count(count)
    _check_fraction(focus_fraction)
    from tomoseg.data.sources import DataSource, load_training_samples

    loaded = load_training_samples(  # the one label rule, as training reads
        DataSource.of(data), ignore_label=None, val_fraction=0.5, seed=seed, need_val=False
    )
    spec, samples = loaded.spec, loaded.train
    images = [s.image for s in samples]
    masks = [s.mask for s in samples]
    warn_crop_larger(size, [im.shape for im in images], name="size")
    boxes = sample_crops(
        [im.shape for im in images],
        size,
        count,
        seed,
        focus_fraction=focus_fraction,
        masks=masks if focus_fraction > 0 else None,
        focus_class=spec.coi_index if focus_fraction > 0 else None,
    )
    root = io.prepare_output_dir(out, overwrite, [CROPS_CSV])
    written: list[Path] = []
    keep: set[str] = set()
    lines = ["index,source_id,y,x,h,w"]
    for k, b in enumerate(boxes):
        stem = f"crop_{k:05d}"
        img_path = io.write_image(root / "images" / f"{stem}.tif", extract_crop(images[b.image], b))
        io.write_mask(root / "masks" / f"{stem}.png", extract_crop(masks[b.image], b))
        written.append(img_path)
        keep.update({f"{stem}.tif", f"{stem}.png"})
        lines.append(f"{k},{_csv_field(samples[b.image].id)},{b.y},{b.x},{b.h},{b.w}")
    for sub in ("images", "masks"):
        for f in (root / sub).iterdir():
            if _CROP_FILE.match(f.name) and f.name not in keep:
                f.unlink()
    io.write_text(root / CROPS_CSV, "\n".join(lines) + "\n")
    return written


def _csv_field(text: str) -> str:
    """Quote a CSV field when it holds a comma, quote or newline."""
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text
