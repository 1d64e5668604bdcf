"""Independent, slow reference implementations of the metrics, used only by the tests.

They share no code with :mod:`tomoseg.metrics`: boundaries by explicit neighbour loops, matching by
a KD-tree nearest-neighbour query (or brute-force pairwise distances), confusion counts by loops.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def ref_boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside the mask (outside the image counts)."""
    m = np.asarray(mask, bool)
    h, w = m.shape
    out = np.zeros_like(m)
    for y, x in zip(*np.nonzero(m), strict=True):
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            yy, xx = y + dy, x + dx
            if not (0 <= yy < h and 0 <= xx < w) or not m[yy, xx]:
                out[y, x] = True
                break
    return out


def _matched(src: np.ndarray, dst: np.ndarray, tol: float, brute: bool) -> float:
    a = np.argwhere(src).astype(float)
    b = np.argwhere(dst).astype(float)
    if brute:
        d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(1)
    else:
        d, _ = cKDTree(b).query(a)
    return float(np.mean(d < tol))


def ref_bf1(truth: np.ndarray, pred: np.ndarray, tol: float, brute: bool = True) -> float:
    """MATLAB-bfscore-style BF1 of one class from boundary point sets."""
    t, p = np.asarray(truth, bool), np.asarray(pred, bool)
    if not t.any():
        return float("nan")
    if not p.any():
        return 0.0
    bt, bp = ref_boundary(t), ref_boundary(p)
    prec = _matched(bp, bt, tol, brute)
    rec = _matched(bt, bp, tol, brute)
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


def ref_scores(truth: np.ndarray, pred: np.ndarray, k: int, tol: float, brute: bool = True):
    """(accuracy, iou[k], bf1[k]) by direct counting."""
    acc = float(np.mean(truth == pred))
    iou, bf1 = [], []
    for c in range(k):
        t, p = truth == c, pred == c
        union = np.count_nonzero(t | p)
        iou.append(np.count_nonzero(t & p) / union if union else float("nan"))
        bf1.append(ref_bf1(t, p, tol, brute))
    return acc, np.array(iou), np.array(bf1)
