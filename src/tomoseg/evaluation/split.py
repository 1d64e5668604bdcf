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
connected components, which small debris does not move): ``h = 0.25 r``, ``min_distance =
0.5 r``. Two equal balls of radius ``r`` whose centres are ``d`` apart have a neck of radius
``sqrt(r^2 - d^2 / 4)``: with ``h = 0.25 r`` they are told apart while ``d > 1.32 r``, i.e. while
they overlap by less than about a third of their diameter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from tomoseg.errors import TomosegError

__all__ = ["check_split_params", "split_defaults", "split_mask", "typical_radius"]

#: default seed dynamic and seed distance, as fractions of the typical object radius
H_FRACTION = 0.1
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


def check_split_params(split_h: float | None, split_min_distance: float | None) -> None:
    """Raise :class:`TomosegError` unless ``split_h`` is None or > 0 and ``split_min_distance``
    None or >= 0 (finite numbers)."""
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


def _merge_close(seeds: np.ndarray, n: int, spacing: np.ndarray, min_distance: float) -> int:
    """Give seeds whose centroids are closer than ``min_distance`` one id (in place); the number
    of seeds left."""
    if n < 2 or min_distance <= 0:
        return n
    centres = np.array(ndimage.center_of_mass(seeds > 0, seeds, range(1, n + 1))) * spacing
    parent = list(range(n + 1))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    dist = np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=-1)
    for i, j in zip(*np.nonzero(np.triu(dist < min_distance, 1)), strict=True):
        a, b = find(int(i) + 1), find(int(j) + 1)
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = np.array([find(k) for k in range(n + 1)])
    uniq, new = np.unique(roots, return_inverse=True)
    seeds[...] = new[seeds]
    return len(uniq) - 1


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
    from skimage.morphology import local_maxima, reconstruction
    from skimage.segmentation import watershed

    padded = np.pad(mask, 1)
    dist = ndimage.distance_transform_edt(padded, sampling=spacing_arr)
    rec = reconstruction(np.maximum(dist - h, 0.0), dist, method="dilation")
    peaks = local_maxima(rec, connectivity=3) & padded
    full = ndimage.generate_binary_structure(3, 3)
    seeds, n = ndimage.label(peaks, structure=full)
    n = _merge_close(seeds, n, spacing_arr, min_distance)
    if n < 2:
        return whole, 1
    conn = {6: 1, 18: 2, 26: 3}[connectivity]
    lab = watershed(-dist, seeds, mask=padded, connectivity=conn)[1:-1, 1:-1, 1:-1]
    # number the pieces in raster order of their first voxel
    ids, first = np.unique(lab.ravel(), return_index=True)
    keep = ids > 0
    order = np.argsort(first[keep])
    remap = np.zeros(int(ids.max()) + 1, np.int32)
    remap[ids[keep][order]] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return remap[lab], int(keep.sum())
