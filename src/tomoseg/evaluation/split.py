"""Touching objects told apart: a seeded watershed on the distance transform, one object at a time.

The classic split of touching nuclei and cell bodies (Soille, *Morphological Image Analysis*,
2003, ch. 9; scikit-image's "watershed segmentation" example), in physical units:

1. For one connected object (a boolean mask in its bounding box, padded by one voxel of
   background) the Euclidean distance transform with the voxel size
   (``scipy.ndimage.distance_transform_edt(sampling=spacing)``) gives each voxel's distance to the
   background in the voxel size's unit. Two touching bodies are two hills joined by a saddle at
   the neck between them.
2. Seeds: the regional maxima of the h-maximum transform (``skimage.morphology.reconstruction``
   of ``distance - h`` under ``distance``, then ``skimage.morphology.local_maxima``: MATLAB's
   ``imextendedmax``). A body gets a seed of its own when its centre stands at least ``h``
   above the neck that joins it to a higher one; shallower bumps (a rough surface) merge into
   their neighbour's seed. Seeds whose centroids lie closer than ``min_distance`` are then merged
   into one.
3. ``skimage.segmentation.watershed`` floods ``-distance`` from the seeds inside the mask, with
   the objects' connectivity (so every voxel of the object is reached); one seed: the object
   stays whole.

Each object is split on its own, in its own bounding box, so the result does not depend on how
the volume was read (whole or slab by slab), nor on the order the objects are processed in.

Defaults (:func:`split_defaults`) are tied to the typical object radius ``r``: the radius of the
equal-volume sphere of the object holding the median voxel (a voxel-weighted median over the
connected components, which small debris does not move): ``h = 0.05 r``, ``min_distance =
0.5 r`` (chosen on phantoms with touching somas, ``bench/bench_split.py``: a larger ``h``
misses more touching pairs, and the somas' rough surfaces make no seed as deep as ``0.05 r``).
Two equal balls of radius ``r`` whose centres are ``d`` apart have a neck of radius
``sqrt(r^2 - d^2 / 4)``: with ``h = 0.05 r`` they are told apart while ``d > 0.62 r``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from tomoseg.errors import TomosegError

__all__ = ["check_split_params", "split_defaults", "split_mask", "typical_radius"]

#: default seed dynamic and seed distance, as fractions of the typical object radius
H_FRACTION = 0.05
MIN_DISTANCE_FRACTION = 0.5


def typical_radius(counts: np.ndarray, spacing: Sequence[float]) -> float | None:
    """The equal-volume sphere radius of the object holding the median voxel.

    Args:
        counts: (N,) voxel counts of the objects (any order).
        spacing: (z, y, x) voxel size.

    Returns:
        The radius in the voxel size's unit, or None when there is no object.
    """
    c = np.sort(np.asarray(counts, np.float64))
    if c.size == 0 or c.sum() <= 0:
        return None
    median = c[int(np.searchsorted(np.cumsum(c), 0.5 * c.sum()))]
    volume = median * float(np.prod(np.asarray(spacing, np.float64)))
    return float((3.0 * volume / (4.0 * math.pi)) ** (1 / 3))


def check_split_params(
    split_h: float | None, split_min_distance: float | None, split: bool = True
) -> None:
    """Raise :class:`TomosegError` unless ``split_h`` is None or > 0 and ``split_min_distance``
    None or >= 0 (finite numbers), and, when ``split`` is False, both are None (they tune a
    split that would not run)."""
    if not split:
        for name, v in (("split_h", split_h), ("split_min_distance", split_min_distance)):
            if v is not None:
                raise TomosegError(f"{name}={v!r} needs split=True (it tunes the split)")
    for name, v, positive in (
        ("split_h", split_h, True),
        ("split_min_distance", split_min_distance, False),
    ):
        if v is None:
            continue
        number = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not number or v < 0 or (positive and v == 0):
            what = "a positive number" if positive else "a number >= 0"
            raise TomosegError(f"{name}={v!r}: must be {what} (in the voxel size's unit)")


def split_defaults(
    counts: np.ndarray,
    spacing: Sequence[float],
    split_h: float | None,
    split_min_distance: float | None,
) -> tuple[float, float]:
    """``(h, min_distance)`` of the split: the given values, else the fractions of
    :func:`typical_radius` (see the module doc); physical units.

    Raises:
        TomosegError: a value that is not a positive finite number (``min_distance`` may be 0).
    """
    check_split_params(split_h, split_min_distance)
    r = typical_radius(counts, spacing) or 1.0
    h = float(split_h) if split_h is not None else H_FRACTION * r
    md = float(split_min_distance) if split_min_distance is not None else MIN_DISTANCE_FRACTION * r
    return h, md


class _Sets:
    """Union-find over ids 1..n; each set keeps its highest peak (``peak``, the root's)."""

    def __init__(self, peak: np.ndarray) -> None:
        self.parent = np.arange(len(peak))
        self.peak = peak.astype(np.float64).copy()

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = int(p[a])
        return a

    def join(self, low: int, high: int) -> None:
        self.parent[low] = high

    def roots(self) -> np.ndarray:
        return np.array([self.find(k) for k in range(len(self.parent))])


def _saddles(basins: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Adjacent basin pairs ``(E, 2)`` and the height of the pass between them ``(E,)``: the
    highest ``min(dist[a], dist[b])`` over 26-adjacent voxels ``a``, ``b`` of the two basins."""
    pairs, heights = [], []
    offsets = [o for o in np.ndindex(3, 3, 3) if o > (1, 1, 1)]  # 13 half-neighbourhood offsets
    for o in offsets:
        d = [v - 1 for v in o]
        a_sl = tuple(slice(max(0, -k), n - max(0, k)) for k, n in zip(d, basins.shape, strict=True))
        b_sl = tuple(slice(max(0, k), n - max(0, -k)) for k, n in zip(d, basins.shape, strict=True))
        a, b = basins[a_sl], basins[b_sl]
        sel = (a != b) & (a > 0) & (b > 0)
        if sel.any():
            ia, ib = a[sel], b[sel]
            pairs.append(np.stack([np.minimum(ia, ib), np.maximum(ia, ib)], 1))
            heights.append(np.minimum(dist[a_sl][sel], dist[b_sl][sel]))
    if not pairs:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    pair, height = np.concatenate(pairs).astype(np.int64), np.concatenate(heights)
    key = pair[:, 0] * (int(basins.max()) + 1) + pair[:, 1]
    order = np.lexsort((-height, key))  # per pair, its highest pass first
    key, pair, height = key[order], pair[order], height[order]
    first = np.r_[True, key[1:] != key[:-1]]
    return pair[first], height[first]


def _merge_shallow(basins: np.ndarray, n: int, dist: np.ndarray, h: float) -> np.ndarray:
    """Merge basins whose peak stands less than ``h`` above the pass to a higher one: flooding
    the passes from the highest down, the set with the lower peak joins the other when its
    peak minus the pass is under ``h`` (the dynamics of the maxima, Grimaud 1992). Returns the
    root id of every basin id 0..n."""
    peak = np.zeros(n + 1)
    inside = basins > 0
    np.maximum.at(peak, basins[inside], dist[inside])
    sets = _Sets(peak)
    pairs, heights = _saddles(basins, dist)
    for (i, j), pass_height in zip(pairs[np.argsort(-heights, kind="stable")],
                                    np.sort(heights)[::-1], strict=True):  # fmt: skip
        ri, rj = sets.find(int(i)), sets.find(int(j))
        if ri == rj:
            continue
        low, high = (ri, rj) if (sets.peak[ri], -ri) < (sets.peak[rj], -rj) else (rj, ri)
        if sets.peak[low] - pass_height < h:
            sets.join(low, high)
    return sets.roots()


def _merge_close(
    roots: np.ndarray, markers: np.ndarray, spacing: np.ndarray, min_distance: float
) -> np.ndarray:
    """Merge the sets of basins (``roots``: the root of every basin id 0..n, a root being the
    basin with the set's highest peak) whose peaks (the centroids of their root basins' seed
    plateaus, physical) lie closer than ``min_distance``; the new root of every basin id."""
    ids = np.unique(roots[1:])
    if len(ids) < 2 or min_distance <= 0:
        return roots
    where = np.nonzero(markers)
    seed = markers[where]
    count = np.bincount(seed, minlength=len(roots))[ids]
    pos = (
        np.stack(
            [np.bincount(seed, weights=w, minlength=len(roots))[ids] / count for w in where], 1
        )
        * spacing
    )
    sets = _Sets(np.zeros(len(roots)))
    dist_ij = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
    for i, j in zip(*np.nonzero(np.triu(dist_ij < min_distance, 1)), strict=True):
        a, b = sets.find(int(ids[i])), sets.find(int(ids[j]))
        if a != b:
            sets.join(max(a, b), min(a, b))
    return sets.roots()[roots]


def split_mask(
    mask: np.ndarray,
    spacing: Sequence[float],
    h: float,
    min_distance: float,
    connectivity: int = 26,
) -> tuple[np.ndarray, int]:
    """Split one connected object (see the module doc).

    Args:
        mask: (Z, Y, X) bool, the object in its bounding box.
        spacing: (z, y, x) voxel size.
        h: smallest height (physical) of a body's centre above the neck to a higher body.
        min_distance: seeds closer than this (physical) are merged.
        connectivity: 6, 18 or 26 (the objects' connectivity).

    Returns:
        ``(pieces, n)``: int32 (Z, Y, X) piece ids 1..n (0 outside the mask), numbered in raster
        order of each piece's first voxel; ``n = 1`` (the mask as piece 1) when the object is
        not split.
    """
    spacing_arr = np.asarray(spacing, np.float64)
    whole = mask.astype(np.int32)
    # a body needs a ball of radius h inside it: two seeds need twice that volume (halved:
    # the digital ball is smaller than the continuous one)
    if mask.sum() * float(np.prod(spacing_arr)) < 0.5 * 2 * (4 / 3) * math.pi * h**3:
        return whole, 1
    from skimage.morphology import local_maxima
    from skimage.segmentation import watershed

    padded = np.pad(mask, 1)
    dist = ndimage.distance_transform_edt(padded, sampling=spacing_arr)
    full = ndimage.generate_binary_structure(3, 3)
    markers, n = ndimage.label(local_maxima(dist, connectivity=3) & padded, structure=full)
    if n < 2:
        return whole, 1
    conn = {6: 1, 18: 2, 26: 3}[connectivity]
    basins = watershed(-dist, markers, mask=padded, connectivity=conn)
    roots = _merge_close(_merge_shallow(basins, n, dist, h), markers, spacing_arr, min_distance)
    if len(np.unique(roots[1:])) < 2:
        return whole, 1
    pieces = roots[basins[1:-1, 1:-1, 1:-1]]
    # number the pieces in raster order of their first voxel
    ids, first = np.unique(pieces.ravel(), return_index=True)
    keep = ids > 0
    if keep.sum() < 2:
        return whole, 1
    order = np.argsort(first[keep])
    remap = np.zeros(int(ids.max()) + 1, np.int32)
    remap[ids[keep][order]] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return remap[pieces], int(keep.sum())
