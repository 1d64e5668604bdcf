"""Percentile intensity normalisation fitted on training images."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel

from tomoseg.errors import TomosegError

# ----------------------------------------------------------------------------- normalisation


class Normalization(BaseModel):
    """Percentile clip fitted on training images: ``x -> clip((x - lower) / (upper - lower), 0, 1)``."""

    lower: float
    upper: float
    p_low: float = 0.5
    p_high: float = 99.5


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
        if flat.size > max_pixels_per_image:
            flat = flat[rng.integers(0, flat.size, max_pixels_per_image)]
        samples.append(flat.astype(np.float64))
    if not samples:
        raise TomosegError("cannot fit the intensity normalisation: no training images")
    allpx = np.concatenate(samples)
    lo, hi = np.percentile(allpx, [p_low, p_high])
    if not hi > lo:  # constant images: fall back to the full range
        lo, hi = float(allpx.min()), float(allpx.max())
        if not hi > lo:
            hi = lo + 1.0
    return Normalization(lower=float(lo), upper=float(hi), p_low=p_low, p_high=p_high)


def normalize(img: np.ndarray, norm: Normalization) -> np.ndarray:
    """Apply a fitted :class:`Normalization`.

    Returns:
        float32 array in ``[0, 1]`` of the same shape.
    """
    out = (np.asarray(img, dtype=np.float32) - np.float32(norm.lower)) / np.float32(
        norm.upper - norm.lower
    )
    return np.clip(out, 0.0, 1.0, out=out)
