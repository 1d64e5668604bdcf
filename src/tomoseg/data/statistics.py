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
        TomosegError: a class with no pixel, whatever the mode: no loss can learn a class that
            the training set never shows (and its inverse or median-frequency weight would be
            infinite).
    """
    counts = np.asarray(counts, np.float64)
    if (counts == 0).any():
        k = int(np.flatnonzero(counts == 0)[0])
        name = names[k] if names else str(k)
        kind = {"median": "median-frequency", "inverse": "inverse-frequency"}.get(mode)
        weight = f"; its {kind} weight would be infinite" if kind else ""
        raise TomosegError(
            f"class '{name}' has no pixel in the training set (annotated pixels): no loss can "
            f"teach the network that class{weight} (add examples of it, or remove it from the "
            "classes)"
        )
    if mode == "none":
        return np.ones_like(counts)
    freq = counts / counts.sum()
    w = (np.median(freq) / freq) if mode == "median" else 1.0 / freq
    return w / w.mean()


def class_counts(
    masks: list[np.ndarray], n_classes: int, *, ignore_label: int | None = None
) -> np.ndarray:
    """Annotated pixels of each class summed over masks: (K,) int64.

    Only values ``0..K-1`` are counted: unannotated pixels (``ignore_label``, or the negative
    internal ignore index of training masks) count for nothing. With ``ignore_label`` given,
    any other value outside ``0..K-1`` is an error.
    """
    total = np.zeros(n_classes, np.int64)
    for m in masks:
        v = m.ravel()
        if ignore_label is not None:
            v = v[v != ignore_label]
            if v.size and (int(v.min()) < 0 or int(v.max()) >= n_classes):
                raise TomosegError(
                    f"mask values {int(v.min())}..{int(v.max())} outside 0..{n_classes - 1}"
                )
        if v.size and int(v.min()) < 0:
            v = v[v >= 0]
        total += np.bincount(v, minlength=n_classes)[:n_classes]
    return total
