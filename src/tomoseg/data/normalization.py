"""Percentile intensity normalisation fitted on training images, and the non-finite pixel rule.

Non-finite pixels (NaN, +-inf; e.g. outside the reconstructed circle of a CT slice) are "outside
the field of view": :func:`fit_normalization` ignores them, :func:`normalize` fills them with the
normalisation's lower bound (0 after normalising), and inference labels them background (class 0,
see :func:`tomoseg.inference.predictor.segment_batch`). :func:`nonfinite_mask` finds them, for
callers that must also treat them specially (training: ignored pixels).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel

from tomoseg.errors import TomosegError

# ----------------------------------------------------------------------------- normalisation


class Normalization(BaseModel):
    """Percentile clip fitted on training images: ``x -> clip((x - lower) / (upper - lower), 0, 1)``
    (``clip=False``: not clipped; a bioimage.io package's own preprocessing follows it)."""

    lower: float
    upper: float
    p_low: float = 0.5
    p_high: float = 99.5
    clip: bool = True


def fit_normalization(
    images: Iterable[np.ndarray],
    p_low: float = 0.5,
    p_high: float = 99.5,
    max_pixels_per_image: int = 200_000,
    seed: int = 0,
) -> Normalization:
    """Fit percentile bounds on (a reproducible sample of the pixels of) training images.

    Args:
        images: 2D arrays of any numeric dtype.
        p_low: lower percentile (0..100).
        p_high: upper percentile (0..100), above ``p_low``.
        max_pixels_per_image: pixels sampled per image to bound time and memory.
        seed: sampling seed.

    Returns:
        The fitted :class:`Normalization`; ``upper > lower`` is guaranteed.
    """
    if not 0 <= p_low < p_high <= 100:
        raise TomosegError(
            f"percentiles must satisfy 0 <= low < high <= 100, got {p_low}, {p_high}"
        )
    rng = np.random.default_rng(seed)
    samples = []
    for img in images:
        flat = np.asarray(img).ravel()
        bad = nonfinite_mask(flat)
        if bad is not None:
            flat = flat[~bad]  # outside the field of view: not part of the intensity range
        if flat.size > max_pixels_per_image:
            flat = flat[rng.integers(0, flat.size, max_pixels_per_image)]
        samples.append(flat.astype(np.float64))
    if not samples:
        raise TomosegError("cannot fit the intensity normalisation: no training images")
    allpx = np.concatenate(samples)
    if allpx.size == 0:
        raise TomosegError(
            "cannot fit the intensity normalisation: the training images hold no finite pixel"
        )
    lo, hi = np.percentile(allpx, [p_low, p_high])
    if not hi > lo:  # constant images: fall back to the full range
        lo, hi = float(allpx.min()), float(allpx.max())
        if not hi > lo:
            hi = lo + 1.0
    return Normalization(lower=float(lo), upper=float(hi), p_low=p_low, p_high=p_high)


class NormalizedImage(np.ndarray):
    """A float32 image that :func:`normalize` already normalised with ``norm`` (by an I/O worker
    process of ``segment_stack``): ``normalize(image, norm)`` passes it through without a copy,
    and :func:`nonfinite_mask` knows it is finite. Made by :func:`as_normalized`."""

    norm: tuple[float, float] | None = None

    def __array_finalize__(self, obj: object) -> None:
        self.norm = getattr(obj, "norm", None)


def as_normalized(arr: np.ndarray, norm: Normalization) -> NormalizedImage:
    """Mark ``arr`` (a view, no copy), the float32 output of ``normalize(image, norm)``, as such."""
    out = np.asarray(arr, dtype=np.float32).view(NormalizedImage)
    out.norm = (norm.lower, norm.upper)
    return out


def normalize(img: np.ndarray, norm: Normalization) -> np.ndarray:
    """Apply a fitted :class:`Normalization`; non-finite pixels become 0 (the lower bound).

    A :class:`NormalizedImage` of the same bounds is returned as it is (as a plain array view).

    Returns:
        float32 array in ``[0, 1]`` of the same shape (never NaN).
    """
    if isinstance(img, NormalizedImage) and img.norm == (norm.lower, norm.upper):
        return img.view(np.ndarray)
    arr = np.asarray(img)
    out = (arr.astype(np.float32) - np.float32(norm.lower)) / np.float32(norm.upper - norm.lower)
    bad = nonfinite_mask(arr)
    if bad is not None:
        out[bad] = 0.0  # outside the field of view: the normalisation's lower bound
    return np.clip(out, 0.0, 1.0, out=out) if norm.clip else out


#: what to do with non-finite pixels at inference: label them background, or refuse the image
NONFINITE_RULES = ("background", "error")


def nonfinite_mask(img: np.ndarray) -> np.ndarray | None:
    """Where an image holds NaN or +-inf (outside the field of view).

    Args:
        img: array of any shape and numeric dtype.

    Returns:
        bool array of ``img``'s shape, or None when every pixel is finite (always for integers).
    """
    if isinstance(img, NormalizedImage):  # normalised: finite by construction
        return None
    arr = np.asarray(img)
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(
        arr.dtype, np.complexfloating
    ):
        return None
    bad = ~np.isfinite(arr)
    return bad if bad.any() else None


def count_nonfinite(img: np.ndarray) -> int:
    """Number of NaN / +-inf pixels of an image (0 for integer dtypes)."""
    bad = nonfinite_mask(img)
    return 0 if bad is None else int(bad.sum())


def check_nonfinite_rule(rule: str) -> str:
    """Validate a ``nonfinite`` option (``background`` or ``error``).

    Raises:
        TomosegError: another value.
    """
    if rule not in NONFINITE_RULES:
        raise TomosegError(f"nonfinite must be 'background' or 'error', got {rule!r}")
    return rule


def refuse_nonfinite(img: np.ndarray, where: str) -> int:
    """The ``nonfinite="error"`` rule: raise when an image holds non-finite pixels.

    Returns:
        0 (the count, for symmetry with :func:`count_nonfinite`).

    Raises:
        TomosegError: naming ``where`` (the slice or file) and the count.
    """
    n = count_nonfinite(img)
    if n:
        raise TomosegError(
            f"{where} holds {n} non-finite (NaN or infinite) pixels of {np.asarray(img).size}; "
            "remove them, or pass nonfinite='background' to label them background "
            "(outside the field of view)"
        )
    return 0
