"""Class statistics of a training set: pixel counts and loss weights."""

from __future__ import annotations

import numpy as np

from tomoseg.errors import TomosegError

# ----------------------------------------------------------------------------- class weights


def class_weights(
    counts: np.ndarray, mode: str = "inverse", names: list[str] | None = None
) -> np.ndarray:
    """Loss weights from per-class pixel counts over the whole training set.

    Args:
        counts: (K,) pixel counts.
        mode: ``inverse``: w_k = 1 / f_k (f_k = class frequency), the seed's method;
            ``median``: w_k = median(f) / f_k (median-frequency balancing); ``none``: all 1.
            ``inverse`` and ``median`` are scaled so that the weights average to 1 (this leaves
            the optimum unchanged and keeps the loss scale near the unweighted one).
        names: class names for the error message.

    Returns:
        (K,) float64 weights.

    Raises:
        TomosegError: a class with no pixel (its weight would be infinite).
    """
    counts = np.asarray(counts, np.float64)
    if mode == "none":
        return np.ones_like(counts)
    if (counts == 0).any():
        k = int(np.flatnonzero(counts == 0)[0])
        name = names[k] if names else str(k)
        raise TomosegError(
            f"class '{name}' has no pixel in the training set, so its inverse-frequency weight "
            "would be infinite (add examples, or use --class-weights none)"
        )
    freq = counts / counts.sum()
    w = (np.median(freq) / freq) if mode == "median" else 1.0 / freq
    return w / w.mean()


def class_counts(masks: list[np.ndarray], n_classes: int) -> np.ndarray:
    """Pixels of each class summed over masks: (K,) int64."""
    total = np.zeros(n_classes, np.int64)
    for m in masks:
        total += np.bincount(m.ravel(), minlength=n_classes)[:n_classes]
    return total
