"""Segmentation metrics on label arrays: confusion matrix, accuracy, IoU and boundary F1.

Conventions (every number tomoseg prints follows them)
-----------------------------------------------------
* Label arrays hold class ids ``0..K-1``; the confusion matrix ``cm[t, p]`` counts pixels of true
  class ``t`` predicted as ``p`` (rows = truth, columns = prediction).
* **Global accuracy** = correctly labelled pixels / all pixels.
* **IoU** of class k = TP / (TP + FP + FN); NaN when the class is in neither truth nor prediction
  (0 when it is predicted but absent from the truth). **Mean IoU** is the NaN-ignoring mean over
  classes.
* **Boundary F1 (BF1)** follows MATLAB's ``bfscore`` with a tolerance in pixels (default 2):
  the boundary of a class is its mask minus its erosion by the 4-neighbour cross, with zero
  padding outside the image (so object pixels on the image frame are boundary pixels). A boundary
  pixel of one mask is *matched* when a boundary pixel of the other mask lies at Euclidean
  distance strictly below the tolerance (so tolerance 0 matches nothing and tolerance 1 matches
  only coincident pixels). Precision = matched fraction of the predicted boundary, recall =
  matched fraction of the true boundary, BF1 = 2PR / (P + R) (0 when P + R = 0). BF1 is NaN when
  the class is absent from the truth, and 0 when it is in the truth but not in the prediction.
* **Unannotated pixels** (``ignore_label``: a mask value that is not a class id, e.g. 255 in
  sparsely annotated masks): the confusion matrix (hence accuracy and IoU) counts annotated
  pixels only. For BF1, ignored pixels first take the predicted label (so an unannotated region
  never makes a boundary of its own), then boundary pixels lying on ignored pixels are left out
  of both boundaries. A prediction that differs from the truth only on ignored pixels therefore
  scores exactly 1.
* **Aggregation over images**: metrics are computed per image, then averaged over images
  ("mean", ignoring NaN, as the seed averaged over its test images). "pooled" IoU is computed once
  from the confusion matrix summed over all images. Every output names which one it is.

BF1 is written by hand (scikit-image and torchmetrics have no bfscore). "Closer than the
tolerance" is the Euclidean distance transform thresholded at the tolerance, computed as a
dilation by the disk of radius < tolerance for small tolerances and with SciPy's exact distance
transform for large ones; never from pairwise distances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from tomoseg.errors import TomosegError

DILATION_MAX_TOLERANCE = 6.0  # above it, within_tolerance uses the distance transform


def _check_ignore_label(ignore_label: int | None, n_classes: int) -> None:
    if ignore_label is None:
        return
    if isinstance(ignore_label, bool) or not isinstance(ignore_label, (int, np.integer)):
        raise TomosegError(f"ignore_label={ignore_label!r}: must be an integer mask value")
    if 0 <= int(ignore_label) < n_classes:
        raise TomosegError(
            f"ignore_label {ignore_label} is a class id (classes are 0..{n_classes - 1}); "
            "choose a mask value that no class uses, e.g. 255"
        )


def _check_pair(
    truth: np.ndarray, pred: np.ndarray, n_classes: int, ignore_label: int | None = None
) -> None:
    if truth.shape != pred.shape:
        raise TomosegError(f"truth shape {truth.shape} differs from prediction shape {pred.shape}")
    if truth.ndim != 2:
        raise TomosegError(f"expected 2D label arrays, got shape {truth.shape}")
    _check_ignore_label(ignore_label, n_classes)
    for name, a in (("truth", truth), ("prediction", pred)):
        if not np.issubdtype(a.dtype, np.integer) and a.dtype != bool:
            raise TomosegError(f"{name} must hold integer class ids, found {a.dtype}")
        if name == "truth" and ignore_label is not None:
            a = a[a != ignore_label]
        if a.size and (int(a.min()) < 0 or int(a.max()) >= n_classes):
            raise TomosegError(
                f"{name} holds class ids {int(a.min())}..{int(a.max())} outside 0..{n_classes - 1}"
            )


def confusion_matrix(
    truth: np.ndarray, pred: np.ndarray, n_classes: int, *, ignore_label: int | None = None
) -> np.ndarray:
    """Pixel confusion matrix.

    Args:
        truth: (H, W) integer class ids.
        pred: (H, W) integer class ids.
        n_classes: number of classes K.
        ignore_label: truth value of unannotated pixels (not a class id): they are not counted.

    Returns:
        (K, K) int64 array, ``cm[t, p]`` = pixels of true class t predicted as p.

    Raises:
        TomosegError: shapes differ, ids outside ``0..K-1``, ``ignore_label`` a class id.
    """
    _check_pair(truth, pred, n_classes, ignore_label)
    t, p = truth.ravel(), pred.ravel()
    if ignore_label is not None:
        keep = t != ignore_label
        t, p = t[keep], p[keep]
    idx = t.astype(np.int64) * n_classes + p.astype(np.int64)
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def accuracy_from_cm(cm: np.ndarray) -> float:
    """Global pixel accuracy from a confusion matrix (NaN for an empty matrix)."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def iou_from_cm(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN) from a confusion matrix.

    Returns:
        (K,) float64; NaN for a class absent from both truth and prediction.
    """
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a binary mask: the mask minus its 4-neighbour erosion.

    Pixels outside the image count as background (zero padding), so object pixels on the image
    frame are boundary pixels, as in MATLAB's ``bfscore``. (Computed with array shifts; equal to
    ``mask & ~scipy.ndimage.binary_erosion(mask, cross, border_value=0)``, but faster.)

    Args:
        mask: (H, W) boolean array.

    Returns:
        (H, W) boolean array.
    """
    m = np.asarray(mask, dtype=bool)
    inner = np.zeros_like(m)
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner


def tolerance_disk(tolerance: float) -> np.ndarray:
    """Boolean structuring element of the integer offsets ``v`` with ``|v| < tolerance``."""
    r = max(int(np.ceil(tolerance)) - 1, 0)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy * yy + xx * xx) < tolerance * tolerance


def within_tolerance(dst: np.ndarray, tolerance: float) -> np.ndarray:
    """Pixels whose Euclidean distance to the nearest True pixel of ``dst`` is < ``tolerance``.

    This is the distance transform of ``~dst`` thresholded at the tolerance. For tolerances up to
    :data:`DILATION_MAX_TOLERANCE` it is computed, exactly and faster, as the dilation of ``dst``
    by :func:`tolerance_disk`; above it with SciPy's exact Euclidean distance transform over the
    bounding box of ``dst`` grown by the tolerance. ``dst`` must not be empty.
    """
    if tolerance <= 0:
        return np.zeros_like(dst, dtype=bool)
    if tolerance <= DILATION_MAX_TOLERANCE:
        return ndi.binary_dilation(dst, structure=tolerance_disk(tolerance), border_value=0)
    out = np.zeros_like(dst, dtype=bool)
    ys, xs = np.nonzero(dst)
    g = int(np.ceil(tolerance))
    box = (
        slice(max(ys.min() - g, 0), ys.max() + g + 1),
        slice(max(xs.min() - g, 0), xs.max() + g + 1),
    )
    out[box] = ndi.distance_transform_edt(~dst[box]) < tolerance
    return out


def bf1_binary(
    truth: np.ndarray,
    pred: np.ndarray,
    tolerance: float = 2.0,
    *,
    ignore: np.ndarray | None = None,
) -> float:
    """Boundary F1 of one binary mask against the true one (MATLAB ``bfscore`` semantics).

    Args:
        truth: (H, W) boolean true mask of one class.
        pred: (H, W) boolean predicted mask of the same class.
        tolerance: distance in pixels; a boundary pixel is matched when the other boundary lies
            strictly closer than this.
        ignore: (H, W) boolean, True on unannotated pixels: there the truth takes the predicted
            value before boundaries are traced, and boundary pixels on them are left out of both
            boundaries (see the module docstring).

    Returns:
        BF1 in [0, 1]; NaN if the (annotated) truth is empty; 0 if the prediction is empty.
    """
    if tolerance < 0:
        raise TomosegError(f"tolerance must be >= 0, got {tolerance}")
    t, p = np.asarray(truth, bool), np.asarray(pred, bool)
    if ignore is not None:
        ign = np.asarray(ignore, bool)
        if not (t & ~ign).any():
            return float("nan")
        if not p.any():
            return 0.0
        t = np.where(ign, p, t)
        bt, bp = boundary(t) & ~ign, boundary(p) & ~ign
        if not bt.any() or not bp.any():
            return 1.0 if not bt.any() and not bp.any() else 0.0
    else:
        if not t.any():
            return float("nan")
        if not p.any():
            return 0.0
        bt, bp = boundary(t), boundary(p)
    precision = np.count_nonzero(bp & within_tolerance(bt, tolerance)) / np.count_nonzero(bp)
    recall = np.count_nonzero(bt & within_tolerance(bp, tolerance)) / np.count_nonzero(bt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


@dataclass
class ImageScore:
    """Metrics of one image: confusion matrix, global accuracy, per-class IoU and BF1."""

    id: str
    cm: np.ndarray
    accuracy: float
    iou: np.ndarray
    bf1: np.ndarray


def score_image(
    truth: np.ndarray,
    pred: np.ndarray,
    n_classes: int,
    tolerance: float = 2.0,
    image_id: str = "",
    classes_for_bf1: Sequence[int] | None = None,
    *,
    ignore_label: int | None = None,
) -> ImageScore:
    """Score one predicted label image against its truth.

    Args:
        truth: (H, W) class ids (and ``ignore_label`` on unannotated pixels).
        pred: (H, W) class ids.
        n_classes: K.
        tolerance: BF1 tolerance in pixels.
        image_id: name carried into the result.
        classes_for_bf1: compute BF1 only for these classes (others NaN); all by default.
        ignore_label: truth value of unannotated pixels (not a class id); they count for
            nothing (see the module docstring). None: every pixel is annotated.

    Returns:
        An :class:`ImageScore` (accuracy and IoU NaN when no pixel is annotated).

    Raises:
        TomosegError: bad shapes or ids, negative tolerance, ``ignore_label`` a class id.
    """
    if tolerance < 0:
        raise TomosegError(f"tolerance must be >= 0, got {tolerance}")
    cm = confusion_matrix(truth, pred, n_classes, ignore_label=ignore_label)
    ign = None
    if ignore_label is not None:
        ign = truth == ignore_label
        if not ign.any():
            ign = None
    ks = range(n_classes) if classes_for_bf1 is None else classes_for_bf1
    bf1 = np.full(n_classes, np.nan)
    for k in ks:
        bf1[k] = bf1_binary(truth == k, pred == k, tolerance, ignore=ign)
    return ImageScore(image_id, cm, accuracy_from_cm(cm), iou_from_cm(cm), bf1)


def nanmean(values, axis: int = 0) -> np.ndarray:
    """Mean ignoring NaN; NaN (without a warning) where every value is NaN or there is none.

    Returns:
        The means along ``axis`` (a 0-d array for 1-D input; ``float()`` it for a number).
    """
    v = np.asarray(values, dtype=np.float64)
    n = np.sum(~np.isnan(v), axis=axis)
    s = np.nansum(v, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


@dataclass
class ScoreSummary:
    """Per-image scores and their aggregates (see the module docstring for the conventions)."""

    classes: list[str]
    class_of_interest: str
    tolerance_px: float
    images: list[ImageScore] = field(default_factory=list)
    #: the same images scored without the run's tuned post-processing (``tomoseg evaluate``)
    without_postprocess: ScoreSummary | None = None
    #: how the predictions were made (``tomoseg evaluate``: TTA, the decision applied)
    inference: dict | None = None

    @property
    def mean_accuracy(self) -> float:
        """Mean over images of the global accuracy."""
        return float(nanmean(np.array([s.accuracy for s in self.images])))

    @property
    def mean_iou(self) -> np.ndarray:
        """(K,) mean over images of each class's IoU (NaN-ignoring)."""
        return nanmean(np.stack([s.iou for s in self.images]))

    @property
    def mean_bf1(self) -> np.ndarray:
        """(K,) mean over images of each class's BF1 (NaN-ignoring)."""
        return nanmean(np.stack([s.bf1 for s in self.images]))

    @property
    def pooled_cm(self) -> np.ndarray:
        """Confusion matrix summed over images."""
        return np.sum([s.cm for s in self.images], axis=0)

    @property
    def pooled_iou(self) -> np.ndarray:
        """(K,) IoU from the summed confusion matrix."""
        return iou_from_cm(self.pooled_cm)

    def to_dict(self) -> dict:
        """The ``metrics.json`` layout: classes, class_of_interest, tolerance_px, per_image, mean,
        pooled_iou (NaN kept as float NaN; :func:`tomoseg.io.write_json` writes it as null)."""

        def per_class(v: np.ndarray) -> dict[str, float]:
            return {c: float(x) for c, x in zip(self.classes, v, strict=True)}

        return {
            "classes": list(self.classes),
            "class_of_interest": self.class_of_interest,
            "tolerance_px": float(self.tolerance_px),
            "per_image": [
                {
                    "id": s.id,
                    "accuracy": float(s.accuracy),
                    "iou": per_class(s.iou),
                    "bf1": per_class(s.bf1),
                }
                for s in self.images
            ],
            "mean": {
                "accuracy": self.mean_accuracy,
                "iou": per_class(self.mean_iou),
                "bf1": per_class(self.mean_bf1),
            },
            "pooled_iou": per_class(self.pooled_iou),
            **({"inference": self.inference} if self.inference is not None else {}),
            **(
                {"without_postprocess": self.without_postprocess.to_dict()}
                if self.without_postprocess is not None
                else {}
            ),
        }
