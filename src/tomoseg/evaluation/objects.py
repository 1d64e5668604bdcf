"""3D objects of a segmented stack: connected components, measurements, meshes, truth check
(figures: :mod:`tomoseg.reporting.objects`).

``analyze_objects`` reads a class-id volume written by :func:`tomoseg.stack.segment_stack` (the
output folder, its ``labels.zarr``, its ``labels/`` folder of TIFFs, or any (Z, Y, X) stack that
``segment_stack`` accepts as input), takes one class, labels its 3D connected components with
``cc3d`` and measures them.

Larger than memory: with ``chunk_slices`` the volume is labelled slab by slab (slabs of that many
slices along z); labels that touch across the face between two slabs are merged with a
union-find over the touching pairs (for 6-connectivity only the voxel straight across, for 18 and
26 also its 4 / 8 in-plane neighbours). Final labels are numbered in raster order (z, y, x) of
each object's first voxel, after removing objects under ``min_volume`` voxels, so the chunked
result is the same array as labelling the whole volume at once.

Measurements (``objects.csv``) carry ``skimage.measure.regionprops_table``'s names and
definitions (with ``spacing`` = the voxel size), so the table agrees with
:func:`measure_objects` (which calls regionprops on an in-memory volume): ``label``,
``num_pixels`` (voxels), ``area`` (physical volume), ``centroid-0..2`` (z, y, x, physical),
``bbox-0..5`` (voxel indices, end exclusive), ``axis_major_length`` / ``axis_minor_length`` (full
axis lengths of the ellipsoid with the object's second moments, ``2 sqrt(5 lambda)`` for the
eigenvalues ``lambda`` of its covariance), ``equivalent_diameter_area``, ``extent`` (voxels /
bounding-box voxels). Extra columns: ``axis_middle_length``, ``elongation = major / minor`` (about
1-2 for a soma, large for a vessel segment; empty when the minor axis is 0, e.g. a 1-voxel-thick
sheet), ``ellipsoid_fill`` (volume / that ellipsoid's volume), ``touches_border``, and
``surface_area`` and ``sphericity = pi^(1/3) (6 V)^(2/3) / A`` (1 for a ball) from the
marching-cubes mesh, for the meshed (largest) objects only.

The table and ``summary.json`` are written before the optional products (meshes, histogram,
preview): a mesh that cannot be made (e.g. of a 1-voxel-thick sheet) is skipped with a
:class:`~tomoseg.errors.TomosegWarning` naming the object, never at the cost of the table.

Touching objects (``split``): each connected component is split on its own, in its bounding
box, by a seeded watershed on its distance transform (:mod:`tomoseg.evaluation.split`); the
pieces are numbered like components (raster order of their first voxel), so a chunked run gives
the same array as an in-memory one (:func:`measure_objects` with ``split=True`` too).

Units: the voxel size comes from ``voxel_size``, else ``stack.json`` / the volume's metadata;
without one every physical column is in voxels, the summary says so (``"units": "voxels"``)
and a warning names ``voxel_size``.

Truth check (``truth``, a multi-page TIFF of instance labels such as the phantom's
``truth3d/labels.tif``): a predicted object matches a true object when their voxel IoU is at
least 0.5 (``match="iou"``, the default) or when it covers at least half of the true object
(``match="coverage"``); matching is one-to-one, greedy by decreasing score. True objects under
``min_volume`` voxels are left out (they could not be detected by construction); both counts are
reported. Precision, recall and F1 are also given at IoU >= 0.75 (``precision_75``, ...: the
strict matching of the MitoEM challenge). A truth that holds class ids rather than instance
labels (at most 8 values, more than twice as many connected objects) gives a warning and no
scores.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cc3d
import numpy as np

from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.evaluation.split import check_split_params, split_defaults, split_mask
from tomoseg.io.jobs import finish_job_folder, open_job_folder
from tomoseg.io.ome_zarr import create_label_array
from tomoseg.io.sources import (
    FolderSource,
    SliceSource,
    ZarrSource,
    is_array,
    open_source,
    parse_voxel_size,
    resolve_voxel_size,
    split_dataset,
)
from tomoseg.io.volumes import STACK_FILE, read_stack_info
from tomoseg.io.writers import atomic_write, write_json, write_text, writing
from tomoseg.reporting.objects import mesh_preview, volume_histogram
from tomoseg.utils.format import first_line, plural
from tomoseg.utils.progress import CancelToken, ProgressCallback, job_progress

__all__ = [
    "CONNECTIVITIES",
    "analyze_objects",
    "canonical_partition",
    "detection_scores",
    "label_objects",
    "measure_objects",
    "split_labels",
]

CONNECTIVITIES = (6, 18, 26)
#: the files whose presence means an output folder holds results
RESULT_NAMES = ("objects.csv", "summary.json")
#: everything else ``analyze_objects`` writes (removed when an earlier job is replaced)
_PRODUCTS = ("objects.zarr", "meshes", "preview.png", "volume_histogram.png")
_MOMENTS = ("z", "y", "x", "zz", "yy", "xx", "zy", "zx", "yx")
COLUMNS = (
    "label",
    "num_pixels",
    "area",
    "centroid-0",
    "centroid-1",
    "centroid-2",
    "bbox-0",
    "bbox-1",
    "bbox-2",
    "bbox-3",
    "bbox-4",
    "bbox-5",
    "equivalent_diameter_area",
    "axis_major_length",
    "axis_middle_length",
    "axis_minor_length",
    "elongation",
    "extent",
    "ellipsoid_fill",
    "touches_border",
    "surface_area",
    "sphericity",
)

# ----------------------------------------------------------------------------- reading


@dataclass
class _Volume:
    src: SliceSource
    classes: list[str] | None
    class_of_interest: str | None
    voxel_size: tuple[float, float, float]
    unit: str | None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.src.n, *self.src.shape)


def _open_volume(volume: Any, voxel_size: Any, unit: str | None = None) -> _Volume:
    """The class-id volume to analyse: a ``segment_stack`` output folder (its ``stack.json``
    gives the classes, the voxel size and the slice order), its volume, any stack input, or a
    (Z, Y, X) array (:func:`tomoseg.io.sources.open_source`)."""
    info = None
    target = volume
    if not is_array(volume):
        file, dataset = split_dataset(volume, None)  # scan.h5:/labels
        path = Path(file)
        if not path.exists():
            raise TomosegError(f"label volume not found: {Path(volume)}")
        target = path if dataset is None else volume
        if path.is_dir() and (path / STACK_FILE).is_file():
            info = read_stack_info(path)
            target = path / info.get("volume", "labels.zarr")  # type: ignore[union-attr]
        elif (path.parent / STACK_FILE).is_file():
            info = read_stack_info(path.parent)
    # label volumes: writers (tomoseg's own, zarr's default) leave all-background chunks out
    src = open_source(target, allow_gaps=True, missing="ignore")
    if info and isinstance(src, FolderSource):  # order the slice files as the input was ordered
        src = src.in_order(info.get("input", {}).get("ids") or [])
    classes = coi = None
    if info:
        classes, coi = info.get("classes"), info.get("class_of_interest")
    elif isinstance(src, ZarrSource):
        meta = src.attrs().get("tomoseg")
        meta = meta if isinstance(meta, dict) else {}
        classes, coi = meta.get("classes"), meta.get("class_of_interest")
        if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            classes = None  # attributes of another writer: the labels speak for themselves
        coi = coi if isinstance(coi, str) else None
    if src.n < 2:
        raise TomosegError(
            f"{src.where} is one 2D image (shape {src.shape}): 3D objects need a (Z, Y, X) "
            "volume of at least 2 slices"
        )
    recorded, recorded_unit = src.voxel_size, src.unit
    if info and info.get("voxel_size") and info.get("unit"):
        recorded, recorded_unit = parse_voxel_size(info["voxel_size"]), info.get("unit")
    elif info:  # a job on an input without a voxel size records (1, 1, 1) and no unit: unknown
        recorded, recorded_unit = None, None
    voxel, unit = resolve_voxel_size(parse_voxel_size(voxel_size), unit, recorded, recorded_unit)
    return _Volume(src, classes, coi, voxel, unit)


def _in_voxels(vol: _Volume) -> bool:
    """No voxel size is known: lengths and volumes are in voxels."""
    return vol.unit is None and tuple(vol.voxel_size) == (1.0, 1.0, 1.0)


def _class_value(vol: _Volume, class_name: str | None) -> tuple[int | None, str]:
    """(label value, name) of the class to analyse; None value = any non-zero label."""
    if vol.classes:
        name = class_name or vol.class_of_interest or vol.classes[-1]
        if name not in vol.classes:
            raise TomosegError(f"unknown class '{name}': the volume's classes are {vol.classes}")
        return vol.classes.index(name), name
    if class_name is None:
        return None, "foreground"
    if str(class_name).isdigit():
        return int(class_name), str(class_name)
    raise TomosegError(
        f"unknown class '{class_name}': the volume has no class names (give a class id)"
    )


def _slab_reader(src: SliceSource) -> Callable[[Any, int, int], np.ndarray]:
    def read(reader: Any, z0: int, z1: int) -> np.ndarray:
        return np.stack([reader(z) for z in range(z0, z1)])

    return read


# ----------------------------------------------------------------------------- labelling


class _UnionFind:
    """Union-find over provisional ids; the root of a set is its smallest id."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p.get(root, root) != root:
            root = p[root]
        while p.get(a, a) != root:
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)
            self.parent[hi] = lo


def _face_pairs(prev: np.ndarray, cur: np.ndarray, connectivity: int) -> np.ndarray:
    """Unique (a, b) label pairs touching across a z face: ``prev`` below, ``cur`` above."""
    if connectivity == 6:
        offsets = [(0, 0)]
    elif connectivity == 18:
        offsets = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
    else:
        offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    h, w = cur.shape
    found = []
    for dy, dx in offsets:
        # cur[y, x] touches prev[y + dy, x + dx]
        cy = slice(max(0, -dy), h - max(0, dy))
        cx = slice(max(0, -dx), w - max(0, dx))
        py = slice(max(0, dy), h - max(0, -dy))
        px = slice(max(0, dx), w - max(0, -dx))
        a, b = prev[py, px], cur[cy, cx]
        m = (a > 0) & (b > 0)
        if m.any():
            found.append(np.stack([a[m], b[m]], 1).astype(np.int64))
    if not found:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(found), axis=0)


def _slab_stats(
    lab: np.ndarray, n: int, z0: int, y0: int = 0, x0: int = 0
) -> dict[str, np.ndarray]:
    """Per-label (1..n) voxel counts, first and second coordinate moments, bounding boxes, for
    labels ``lab`` whose first voxel lies at ``(z0, y0, x0)`` of the volume."""
    st = cc3d.statistics(lab, no_slice_conversion=True)
    counts = np.asarray(st["voxel_counts"], np.int64)[1 : n + 1]
    bb = np.asarray(st["bounding_boxes"], np.int64)[1 : n + 1]
    idx = np.flatnonzero(lab)
    ids = lab.ravel()[idx].astype(np.int64)
    z, y, x = (c.astype(np.float64) for c in np.unravel_index(idx, lab.shape))
    z += z0
    y += y0
    x += x0
    coords = {"z": z, "y": y, "x": x}
    out = {"count": counts}
    for m in _MOMENTS:
        w = coords[m[0]] if len(m) == 1 else coords[m[0]] * coords[m[1]]
        out[m] = np.bincount(ids, weights=w, minlength=n + 1)[1:]
    out["lo"] = np.stack([bb[:, 0] + z0, bb[:, 2] + y0, bb[:, 4] + x0], 1)
    out["hi"] = np.stack([bb[:, 1] + z0, bb[:, 3] + y0, bb[:, 5] + x0], 1) + 1  # half-open
    return out


@dataclass
class _Labelling:
    final_of: np.ndarray  # provisional id -> final label (0 = removed)
    stats: dict[str, np.ndarray]  # per final object (index 0 = label 1)
    single: np.ndarray | None  # final labels when the volume was one slab (in memory)
    slabs: list[tuple[int, int]]
    offsets: list[int]  # provisional id offset of each slab


def _label(
    vol: _Volume,
    value: int | None,
    connectivity: int,
    min_volume: int,
    chunk: int,
    each_slab: Callable[[], None] | None = None,
) -> _Labelling:
    nz = vol.shape[0]
    slabs = [(z, min(z + chunk, nz)) for z in range(0, nz, chunk)]
    read = _slab_reader(vol.src)
    uf = _UnionFind()
    parts: list[dict[str, np.ndarray]] = []
    offset = 0
    prev_face = None
    single = None
    offsets: list[int] = []
    with vol.src.reader() as reader:
        for z0, z1 in slabs:
            binary = _binary(read(reader, z0, z1), value)
            lab, n = cc3d.connected_components(
                binary, connectivity=connectivity, return_N=True, out_dtype=np.uint32
            )
            del binary
            offsets.append(offset)
            parts.append(_slab_stats(lab, n, z0) if n else _empty_stats())
            glob = lab.astype(np.int64)
            glob[lab > 0] += offset
            if prev_face is not None:
                for a, b in _face_pairs(prev_face, glob[0], connectivity):
                    uf.union(int(a), int(b))
            prev_face = glob[-1].copy()
            if len(slabs) == 1:
                single = lab
            offset += n
            if each_slab is not None:
                each_slab()
    total = offset
    roots = np.arange(total + 1, dtype=np.int64)
    for a in list(uf.parent):
        roots[a] = uf.find(a)
    prov = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    if total == 0:
        return _Labelling(np.zeros(1, np.uint32), _empty_stats(), single, slabs, offsets)
    r = roots[1:]  # root of provisional ids 1..total
    uniq, inv = np.unique(r, return_inverse=True)  # ascending root = raster order of first voxel
    merged = {}
    for k in ("count", *_MOMENTS):
        merged[k] = np.bincount(inv, weights=prov[k], minlength=len(uniq))
    merged["count"] = merged["count"].round().astype(np.int64)
    lo = np.full((len(uniq), 3), np.iinfo(np.int64).max, np.int64)
    hi = np.zeros((len(uniq), 3), np.int64)
    np.minimum.at(lo, inv, prov["lo"])
    np.maximum.at(hi, inv, prov["hi"])
    merged["lo"], merged["hi"] = lo, hi
    keep = merged["count"] >= max(min_volume, 1)
    new_id = np.zeros(len(uniq), np.int64)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1)
    final_of = np.zeros(total + 1, np.uint32)
    final_of[1:] = new_id[inv]
    stats = {k: v[keep] for k, v in merged.items()}
    if single is not None:
        single = final_of[single]
    return _Labelling(final_of, stats, single, slabs, offsets)


def _binary(slab: np.ndarray, value: int | None) -> np.ndarray:
    return slab != 0 if value is None else slab == value


def _empty_stats() -> dict[str, np.ndarray]:
    out = {k: np.zeros(0, np.float64) for k in _MOMENTS}
    out["count"] = np.zeros(0, np.int64)
    out["lo"] = np.zeros((0, 3), np.int64)
    out["hi"] = np.zeros((0, 3), np.int64)
    return out


def label_objects(
    volume: np.ndarray,
    connectivity: int = 26,
    min_volume: int = 0,
    chunk_slices: int | None = None,
    value: int | None = None,
) -> np.ndarray:
    """Label the 3D connected components of a (Z, Y, X) array, numpy or lazy (dask: read slab by
    slab).

    The same code path as :func:`analyze_objects`: ``chunk_slices`` labels slab by slab and
    merges across slab faces. Foreground is ``volume == value`` (non-zero when None).

    Returns:
        uint32 labels numbered in raster order of each object's first voxel.
    """
    _check_connectivity(connectivity)
    src = open_source(volume if is_array(volume) else np.asarray(volume))
    vol = _Volume(src, None, None, (1.0, 1.0, 1.0), None)
    chunk = int(chunk_slices or src.n)
    lab = _label(vol, value, connectivity, min_volume, chunk)
    if lab.single is not None:
        return lab.single.astype(np.uint32)
    out = np.zeros(vol.shape, np.uint32)
    with src.reader() as reader:
        for k, (z0, z1) in enumerate(lab.slabs):
            binary = _binary(np.stack([reader(z) for z in range(z0, z1)]), value)
            s = cc3d.connected_components(binary, connectivity=connectivity, out_dtype=np.uint32)
            out[z0:z1] = _relabel_slab(s, lab, k)
    return out


def _relabel_slab(s: np.ndarray, lab: _Labelling, k: int) -> np.ndarray:
    """Map slab ``k``'s cc3d labels (recomputed: cc3d is deterministic) to final labels."""
    g = s.astype(np.int64)
    g[s > 0] += lab.offsets[k]
    return lab.final_of[g]


def canonical_partition(labels: np.ndarray) -> np.ndarray:
    """Relabel so that equal partitions give equal arrays (raster order of first voxel)."""
    flat = np.asarray(labels).ravel()
    u, first = np.unique(flat, return_index=True)
    fg = u != 0
    order = np.argsort(first[fg])
    mapping = np.zeros(len(u), np.uint32)
    mapping[np.flatnonzero(fg)[order]] = np.arange(1, fg.sum() + 1)
    return mapping[np.searchsorted(u, flat)].reshape(np.shape(labels))


# ----------------------------------------------------------------------------- splitting

#: objects whose bounding box holds more voxels are not split (distance transform, h-maxima and
#: watershed take about 40 bytes a voxel): a warning names them
SPLIT_MAX_VOXELS = 1 << 26


@dataclass
class _Pieces:
    """What :func:`_split_objects` made of objects 1..N: ids 1..N stay (unsplit objects) or are
    replaced by new ids N+1.. (the pieces of a split object)."""

    keys: dict[int, int]  # id -> raster index of its first voxel (ids that exist)
    stats: dict[int, dict[str, np.ndarray]]  # new id -> its statistics (one-row arrays)
    split: int  # objects split
    skipped: list[int]  # objects too large to split (left whole)


def _first_key(mask: np.ndarray, origin: np.ndarray, shape: tuple[int, int, int]) -> int:
    """Raster index in the volume of the first voxel of ``mask`` (a box at ``origin``)."""
    z, y, x = np.unravel_index(int(np.argmax(mask.ravel())), mask.shape)
    return int(np.ravel_multi_index((z + origin[0], y + origin[1], x + origin[2]), shape))


def _split_objects(
    arr: Any,
    lo: np.ndarray,
    hi: np.ndarray,
    chunk: int,
    spacing: tuple[float, float, float],
    h: float,
    min_distance: float,
    connectivity: int,
    each: Callable[[], None] | None = None,
) -> _Pieces:
    """Split objects 1..N of ``arr`` in place (:func:`tomoseg.evaluation.split.split_mask`).

    ``arr``: (Z, Y, X) uint32 labels 1..N (numpy or zarr, read and written slab by slab);
    ``lo``, ``hi``: (N, 3) bounding boxes (end exclusive). An object no taller than ``chunk``
    slices lies in two consecutive slabs, which are held in memory together (the memory bound
    of the chunked run); a taller one is read in its bounding box on its own. Every object is
    split on its own mask, so the result does not depend on ``chunk``.
    """
    shape = tuple(int(v) for v in arr.shape)
    nz = shape[0]
    n = len(lo)
    out = _Pieces({}, {}, 0, [])
    next_id = [n + 1]

    def one(label: int, crop: np.ndarray, origin: np.ndarray) -> bool:
        mask = crop == label
        pieces, m = split_mask(mask, spacing, h, min_distance, connectivity)
        if m < 2:
            out.keys[label] = _first_key(mask, origin, shape)  # type: ignore[arg-type]
            return False
        st = _slab_stats(pieces.astype(np.uint32), m, *(int(v) for v in origin))
        ids = np.arange(next_id[0], next_id[0] + m, dtype=np.int64)
        for j in range(m):
            t = int(ids[j])
            out.keys[t] = _first_key(pieces == j + 1, origin, shape)  # type: ignore[arg-type]
            out.stats[t] = {k: v[j : j + 1] for k, v in st.items()}
        crop[mask] = ids[pieces[mask] - 1]
        next_id[0] += m
        out.split += 1
        return True

    tall, by_slab = [], {}
    for i in range(n):
        box = hi[i] - lo[i]
        if int(np.prod(box)) > SPLIT_MAX_VOXELS:
            first = np.asarray(arr[lo[i][0], lo[i][1] : hi[i][1], lo[i][2] : hi[i][2]]) == i + 1
            out.keys[i + 1] = _first_key(first[None], lo[i], shape)  # type: ignore[arg-type]
            out.skipped.append(i + 1)
        elif box[0] > chunk:
            tall.append(i)
        else:
            by_slab.setdefault(int(hi[i][0] - 1) // chunk, []).append(i)
    held: tuple[int, np.ndarray, bool] | None = None  # (z0, labels, modified) of the slab below
    for k, z0 in enumerate(range(0, nz, chunk)):
        z1 = min(z0 + chunk, nz)
        cur = np.array(arr[z0:z1])
        buf, zb = (cur, z0) if held is None else (np.concatenate([held[1], cur]), held[0])
        changed = False
        for i in by_slab.get(k, []):
            sl = tuple(slice(int(a) - (zb if d == 0 else 0), int(b) - (zb if d == 0 else 0))
                       for d, (a, b) in enumerate(zip(lo[i], hi[i], strict=True)))  # fmt: skip
            changed |= one(i + 1, buf[sl], lo[i])
        if held is not None:
            below = len(held[1])
            if changed or held[2]:
                arr[held[0] : held[0] + below] = buf[:below]
            cur, modified = buf[below:], changed
        else:
            modified = changed
        held = (z0, cur, modified)
        if each is not None:
            each()
    if held is not None and held[2]:
        arr[held[0] : held[0] + len(held[1])] = held[1]
    for i in tall:
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo[i], hi[i], strict=True))
        crop = np.array(arr[sl])
        if one(i + 1, crop, lo[i]):
            arr[sl] = crop
    if each is not None:
        each()
    return out


def split_labels(
    objects: np.ndarray,
    spacing: Any = (1.0, 1.0, 1.0),
    *,
    connectivity: int = 26,
    split_h: float | None = None,
    split_min_distance: float | None = None,
) -> np.ndarray:
    """Tell touching objects apart in an in-memory object label volume.

    Args:
        objects: (Z, Y, X) uint32 labels 1..N of connected objects (as :func:`label_objects`).
        spacing: (z, y, x) voxel size.
        connectivity: the objects' connectivity (6, 18 or 26).
        split_h, split_min_distance: see :func:`analyze_objects` (physical units).

    Returns:
        uint32 labels, numbered in raster order of each object's first voxel.
    """
    _check_connectivity(connectivity)
    spacing = parse_voxel_size(spacing)
    work = np.array(objects, dtype=np.uint32)
    n = int(work.max()) if work.size else 0
    counts = np.bincount(work.ravel(), minlength=n + 1)[1:]
    boxes = _boxes(work, n)
    lo = np.array([[s.start for s in b] for b in boxes], np.int64).reshape(-1, 3)
    hi = np.array([[s.stop for s in b] for b in boxes], np.int64).reshape(-1, 3)
    h, md = split_defaults(counts, spacing, split_h, split_min_distance)
    pieces = _split_objects(work, lo, hi, max(1, work.shape[0]), spacing, h, md, connectivity)
    mapping, _ = _renumber(pieces, n)
    return mapping[work]


def _boxes(labels: np.ndarray, n: int) -> list[tuple[slice, slice, slice]]:
    """Bounding boxes of labels 1..n (``scipy.ndimage.find_objects``; every label present)."""
    from scipy import ndimage

    boxes = ndimage.find_objects(labels, n)
    if any(b is None for b in boxes):
        raise TomosegError("objects must be numbered 1..N without gaps")
    return boxes  # type: ignore[return-value]


def _renumber(pieces: _Pieces, n: int) -> tuple[np.ndarray, list[int]]:
    """``(mapping, order)``: ``mapping[id]`` is the final label of an id of
    :func:`_split_objects` (numbered in raster order of first voxels, as unsplit labelling
    numbers them); ``order[f - 1]`` is the id that became label ``f``."""
    order = sorted(pieces.keys, key=pieces.keys.__getitem__)
    size = max([n, *pieces.keys]) + 1
    mapping = np.zeros(size, np.uint32)
    mapping[np.asarray(order, np.int64)] = np.arange(1, len(order) + 1, dtype=np.uint32)
    return mapping, order


def _split_stats(
    stats: dict[str, np.ndarray], pieces: _Pieces, order: list[int]
) -> dict[str, np.ndarray]:
    """Per final label statistics: an unsplit object's own, a piece's from its box."""
    rows = [
        {k: v[t - 1 : t] for k, v in stats.items()} if t not in pieces.stats else pieces.stats[t]
        for t in order
    ]
    if not rows:
        return _empty_stats()
    return {k: np.concatenate([r[k] for r in rows]) for k in stats}


def _check_connectivity(c: int) -> None:
    if c not in CONNECTIVITIES:
        raise TomosegError(f"connectivity must be 6, 18 or 26, got {c}")


# ----------------------------------------------------------------------------- measuring


def _measure(stats: dict[str, np.ndarray], voxel: tuple[float, float, float], shape) -> list[dict]:
    """One row of measurements per object (labels 1..N in order)."""
    v = np.asarray(voxel, np.float64)
    vox_vol = float(np.prod(v))
    rows = []
    for k in range(len(stats["count"])):
        n = float(stats["count"][k])
        m = np.array([float(stats[a][k]) for a in "zyx"]) / n
        cov = np.empty((3, 3))
        for i, a in enumerate("zyx"):
            for j, b in enumerate("zyx"):
                key = a + b if a + b in stats else b + a
                cov[i, j] = (stats[key][k] / n - m[i] * m[j]) * v[i] * v[j]
        lam = np.sort(np.clip(np.linalg.eigvalsh(cov), 0.0, None))[::-1]
        axes = 2.0 * np.sqrt(5.0 * lam)  # as regionprops: no voxel-cube correction
        volume = n * vox_vol
        lo, hi = stats["lo"][k], stats["hi"][k]
        box = float(np.prod(hi - lo))
        touches = bool((lo == 0).any() or (hi == np.asarray(shape)).any())
        ell = math.pi / 6.0 * float(np.prod(axes))
        rows.append(
            {
                "label": k + 1,
                "num_pixels": int(n),
                "area": volume,
                "centroid-0": m[0] * v[0],
                "centroid-1": m[1] * v[1],
                "centroid-2": m[2] * v[2],
                "bbox-0": int(lo[0]),
                "bbox-1": int(lo[1]),
                "bbox-2": int(lo[2]),
                "bbox-3": int(hi[0]),
                "bbox-4": int(hi[1]),
                "bbox-5": int(hi[2]),
                "equivalent_diameter_area": (6.0 * volume / math.pi) ** (1 / 3),
                "axis_major_length": axes[0],
                "axis_middle_length": axes[1],
                "axis_minor_length": axes[2],
                "elongation": axes[0] / axes[2] if axes[2] > 1e-9 else None,
                "extent": n / box,
                "ellipsoid_fill": volume / ell if ell > 1e-12 else None,
                "touches_border": touches,
                "surface_area": None,
                "sphericity": None,
            }
        )
    return rows


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_cell(r[c]) for c in COLUMNS])
    return buf.getvalue()


def _summary_stats(volumes: np.ndarray) -> dict[str, Any]:
    if len(volumes) == 0:
        return {"count": 0, "total_volume": 0.0, "mean_volume": None, "median_volume": None}
    q = [5, 25, 50, 75, 95]
    return {
        "count": int(len(volumes)),
        "total_volume": float(volumes.sum()),
        "mean_volume": float(volumes.mean()),
        "median_volume": float(np.median(volumes)),
        "min_volume": float(volumes.min()),
        "max_volume": float(volumes.max()),
        "volume_quantiles": {
            f"p{p}": float(v) for p, v in zip(q, np.percentile(volumes, q), strict=True)
        },
    }


# ----------------------------------------------------------------------------- meshes


def _object_mask(arr, row: dict) -> tuple[np.ndarray, np.ndarray]:
    """Binary mask of one object on its bbox padded by one voxel, and the mask's origin (voxels)."""
    lo = np.array([row["bbox-0"], row["bbox-1"], row["bbox-2"]])
    hi = np.array([row["bbox-3"], row["bbox-4"], row["bbox-5"]])
    crop = np.asarray(arr[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
    return np.pad(crop == row["label"], 1), lo - 1


def _mesh(mask: np.ndarray, origin: np.ndarray, voxel, step: int = 1):
    """Marching-cubes surface of a padded mask, in physical (x, y, z) coordinates."""
    import trimesh
    from skimage.measure import marching_cubes

    verts, faces, _, _ = marching_cubes(
        mask.astype(np.float32), 0.5, spacing=tuple(voxel), step_size=step
    )
    verts = verts + origin * np.asarray(voxel)
    # (z, y, x) -> (x, y, z) mirrors the axes: reverse the faces to keep the normals outward
    return trimesh.Trimesh(verts[:, ::-1], faces[:, ::-1], process=False)


# ----------------------------------------------------------------------------- truth


def detection_scores(
    pairs: dict[tuple[int, int], int],
    pred_sizes: dict[int, int],
    true_sizes: dict[int, int],
    match: str = "iou",
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Object-level precision / recall / F1 from voxel overlaps (one-to-one, greedy by score).

    Args:
        pairs: (predicted label, true label) -> overlapping voxels.
        pred_sizes: predicted label -> voxels (the objects that count).
        true_sizes: true label -> voxels (the objects that count).
        match: ``iou`` (IoU >= threshold) or ``coverage`` (covers >= threshold of the true
            object).
        threshold: the score a match needs (0.5; 0.75 for the MitoEM challenge's strict
            matching).
    """
    cands = []
    for (p, t), inter in pairs.items():
        if p not in pred_sizes or t not in true_sizes:
            continue
        if match == "iou":
            score = inter / (pred_sizes[p] + true_sizes[t] - inter)
        else:
            score = inter / true_sizes[t]
        if score >= threshold:
            cands.append((score, p, t))
    cands.sort(key=lambda c: (-c[0], c[1], c[2]))
    used_p, used_t = set(), set()
    for _, p, t in cands:
        if p not in used_p and t not in used_t:
            used_p.add(p)
            used_t.add(t)
    tp, n_pred, n_true = len(used_p), len(pred_sizes), len(true_sizes)
    return {
        "match": match,
        "true_objects": n_true,
        "predicted_objects": n_pred,
        "matched": tp,
        "precision": tp / n_pred if n_pred else None,
        "recall": tp / n_true if n_true else None,
        "f1": 2 * tp / (n_pred + n_true) if n_pred + n_true else None,
        "count_relative_error": (n_pred - n_true) / n_true if n_true else None,
    }


# ----------------------------------------------------------------------------- main entry


def analyze_objects(
    volume: str | os.PathLike[str] | Any,
    out: str | os.PathLike[str],
    class_name: str | None = None,
    connectivity: int = 26,
    min_volume: int = 0,
    truth: str | os.PathLike[str] | None = None,
    chunk_slices: int | None = None,
    meshes: int = 20,
    mesh_format: str = "ply",
    voxel_size: Any = None,
    match: str = "iou",
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    split: bool = False,
    split_h: float | None = None,
    split_min_distance: float | None = None,
    unit: str | None = None,
) -> dict[str, Any]:
    """Label, measure and mesh the 3D objects of one class of a segmented stack.

    Args:
        volume: ``segment_stack`` output folder, its ``labels.zarr`` / ``labels``, any
            (Z, Y, X) class-id stack (Zarr, multi-page TIFF, folder of slices), or a (Z, Y, X)
            integer array (numpy, or dask: read slab by slab).
        out: output folder: ``objects.csv``, ``summary.json``, ``volume_histogram.png``,
            ``objects.zarr`` (uint32 object labels, OME-NGFF 0.4), ``meshes/object_<label>.ply``,
            ``preview.png``.
        class_name: class to analyse (default: the run's class of interest).
        connectivity: 6, 18 or 26.
        min_volume: objects with fewer voxels are removed.
        truth: true instance labels, any stack input (e.g. the phantom's truth3d/labels.tif,
            an HDF5 dataset as ``file.h5:/truth``).
        chunk_slices: label slab by slab (this many slices each) to bound memory.
        meshes: surface meshes for this many of the largest objects.
        mesh_format: ``ply`` or ``stl``.
        voxel_size: (z, y, x); default: from ``stack.json`` / the volume's metadata, else 1.
        match: truth matching rule, ``iou`` or ``coverage`` (see the module doc).
        overwrite: replace earlier results in ``out``.
        progress: receives one ``step`` event per slab labelled, per slab written to
            ``objects.zarr`` and per mesh.
        cancel: a token (:class:`threading.Event`) checked after each step.
        split: tell touching objects apart (:mod:`tomoseg.evaluation.split`: a seeded
            watershed on the distance transform of each connected component, in its bounding
            box; the chunked run gives the same objects). ``min_volume`` applies to the
            connected components before the split.
        split_h: smallest height of a body's centre above the neck to its neighbour, in the
            voxel size's unit (default: 0.05 times the typical object radius).
        split_min_distance: seeds closer than this are merged, in the voxel size's unit
            (default: half the typical object radius).
        unit: unit of ``voxel_size`` (default: the volume's, else ``micrometer`` when
            ``voxel_size`` is given). Without a voxel size from the volume or ``voxel_size``,
            every physical column is in voxels and the summary says so (``unit: null``).

    After a ``kill -9``, a full disk or a cancel (at any step, meshes and preview included)
    the same call starts the job again, without ``overwrite``, to the uninterrupted result
    (:func:`~tomoseg.io.jobs.open_job_folder`; every file is written atomically, and
    the job record in ``out`` is marked complete only at the end).

    Returns:
        The summary (also written to ``summary.json``), with ``detection`` when ``truth`` is given.

    Raises:
        TomosegError: bad parameters, an unknown class, a truth of another shape, an output
            folder holding results.
        Cancelled: ``cancel`` was set.
    """
    t0 = time.perf_counter()
    _check_connectivity(connectivity)
    if int(min_volume) < 0:
        raise TomosegError(f"min_volume={min_volume!r}: must be >= 0")
    if chunk_slices is not None and int(chunk_slices) < 1:
        raise TomosegError(f"chunk_slices={chunk_slices!r}: must be >= 1")
    if mesh_format not in ("ply", "stl"):
        raise TomosegError(f"mesh format must be ply or stl, got {mesh_format!r}")
    if match not in ("iou", "coverage"):
        raise TomosegError(f"match must be iou or coverage, got {match!r}")
    check_split_params(split_h, split_min_distance, split)
    vol = _open_volume(volume, voxel_size, unit)
    value, name = _class_value(vol, class_name)
    if _in_voxels(vol):
        _warn(
            "the volume records no voxel size: volumes, centroids and lengths are in voxels "
            "(give voxel_size=Z,Y,X for physical units)"
        )
    tsrc = None
    if truth is not None:
        tsrc = open_source(truth, allow_gaps=True, missing="ignore")
        if (tsrc.n, *tsrc.shape) != vol.shape:
            raise TomosegError(
                f"truth {truth} has shape {(tsrc.n, *tsrc.shape)} but the volume has {vol.shape}"
            )
    identity = {
        "volume": vol.src.where if is_array(volume) else str(Path(volume).resolve()),
        "class": name,
        "connectivity": connectivity,
        "min_volume": int(min_volume),
        "truth": None if truth is None else str(Path(truth).resolve()),
        "chunk_slices": chunk_slices,
        "meshes": int(meshes),
        "mesh_format": mesh_format,
        "voxel_size": list(vol.voxel_size),
        "match": match,
    }
    if split:  # absent without it: earlier unfinished jobs keep their identity
        identity["split"] = {"h": split_h, "min_distance": split_min_distance}
    out = Path(out)
    open_job_folder(
        out, "objects", identity, overwrite=overwrite, result_names=RESULT_NAMES,
        replaced=(*RESULT_NAMES, *_PRODUCTS),
    )  # fmt: skip
    job = job_progress("objects", "step", None, progress, cancel, hint="the same call redoes it")
    job.start()
    nz = vol.shape[0]
    chunk = int(chunk_slices or nz)
    lab = _label(vol, value, connectivity, int(min_volume), chunk, each_slab=job.advance)
    if value is not None and not vol.classes and len(lab.final_of) == 1:
        raise TomosegError(f"class_name={class_name}: no voxel of the volume holds this class id")
    n_slabs, n_cc = len(lab.slabs), len(lab.stats["count"])
    passes = 2 * n_slabs + (2 * n_slabs + 1 if split else 0)
    job.set_total(passes + min(max(0, int(meshes)), n_cc))

    # label volume for napari (uint32), written slab by slab; truth overlaps on the way
    arr = create_label_array(
        out / "objects.zarr",
        vol.shape,
        "uint32",
        (1, min(vol.shape[1], 1024), min(vol.shape[2], 1024)),
        vol.voxel_size,
        vol.unit,
        name=f"{name} objects",
    )
    overlaps: dict[tuple[int, int], int] = {}
    true_sizes: dict[int, int] = {}
    truth_pass = (tsrc, overlaps, true_sizes)
    _write_labels(vol, value, connectivity, lab, arr, None if split else truth_pass, job.advance)
    stats, split_info = lab.stats, None
    if split:
        stats, split_info = _split_pass(
            arr, lab, vol, chunk, connectivity, split_h, split_min_distance, truth_pass,
            job.advance,
        )  # fmt: skip
    rows = _measure(stats, vol.voxel_size, vol.shape)
    order = sorted(rows, key=lambda r: (-r["num_pixels"], r["label"]))[: max(0, int(meshes))]
    job.set_total(passes + len(order))

    volumes = np.array([r["area"] for r in rows], np.float64)
    summary: dict[str, Any] = {
        "volume": vol.src.where if is_array(volume) else str(volume),
        "class": name,
        "connectivity": connectivity,
        "min_volume_voxels": int(min_volume),
        "chunk_slices": chunk_slices,
        "shape": list(vol.shape),
        "voxel_size": list(vol.voxel_size),
        "unit": vol.unit,
        "units": "voxels" if _in_voxels(vol) else (vol.unit or "voxel size (no unit)"),
        **_summary_stats(volumes),
        "touching_border": int(sum(r["touches_border"] for r in rows)),
    }
    if split_info is not None:
        summary["split"] = split_info
    kind = _truth_kind(tsrc, true_sizes, chunk, connectivity) if tsrc is not None else None
    if kind is not None:
        _warn(f"truth {truth} {kind}: no detection scores (give instance labels, one per object)")
        summary["truth_warning"] = kind
    elif tsrc is not None:
        pred_sizes = {r["label"]: r["num_pixels"] for r in rows}
        kept_true = {t: n for t, n in true_sizes.items() if n >= max(int(min_volume), 1)}
        det = detection_scores(overlaps, pred_sizes, kept_true, match)
        strict = detection_scores(overlaps, pred_sizes, kept_true, match, threshold=0.75)
        for k in ("precision", "recall", "f1"):
            det[f"{k}_75"] = strict[k]  # at 0.75 (the MitoEM challenge's strict matching)
        det["true_objects_all"] = len(true_sizes)
        det["truth"] = str(truth)
        det["match_rule"] = (
            "IoU >= 0.5" if match == "iou" else "covers >= 50 % of the true object"
        ) + ", one-to-one (greedy by decreasing score); true objects under min_volume ignored"
        summary["detection"] = det
    # the main products first: nothing optional below can cost them
    summary["meshes"] = 0
    with writing("the objects table", out):
        write_text(out / "objects.csv", _csv_text(rows))
        write_json(out / "summary.json", summary)

    # optional: meshes of the largest objects, a 3D preview, the volume histogram
    previews = []
    skipped: list[int] = []
    if order:
        (out / "meshes").mkdir(exist_ok=True)
    for r in order:
        try:
            mask, origin = _object_mask(arr, r)
            m = _mesh(mask, origin, vol.voxel_size)
            path = out / "meshes" / f"object_{r['label']:06d}.{mesh_format}"
            atomic_write(path, lambda t, m=m: m.export(t, file_type=mesh_format))
        except Exception as exc:  # marching cubes fails on degenerate shapes
            skipped.append(r["label"])
            _warn(
                f"no mesh for object {r['label']} ({plural(r['num_pixels'], 'voxel')}): "
                f"{first_line(exc)}"
            )
            job.advance()
            continue
        area, mvol = float(m.area), abs(float(m.volume))
        r["surface_area"] = area
        r["sphericity"] = math.pi ** (1 / 3) * (6 * mvol) ** (2 / 3) / area if area else None
        step = max(1, int(max(mask.shape)) // 24)
        coarse = m
        if step > 1:
            try:
                coarse = _mesh(mask, origin, vol.voxel_size, step)
            except Exception:  # too thin for the coarse step: show the full mesh
                coarse = m
        previews.append((r["label"], coarse))
        job.advance()
    summary["meshes"] = len(order) - len(skipped)
    if skipped:
        summary["meshes_skipped"] = skipped
    for what, make in (
        ("volume_histogram.png", lambda: volume_histogram(volumes, "voxel" if _in_voxels(vol) else vol.unit, out / "volume_histogram.png", name)),
        ("preview.png", lambda: mesh_preview(previews, out / "preview.png", f"{len(previews)} largest {name} {'object' if len(previews) == 1 else 'objects'}")),
    ):  # fmt: skip
        try:
            make()
        except Exception as exc:
            _warn(f"{what} was not written: {first_line(exc)}")
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    with writing("the objects table", out):
        write_text(out / "objects.csv", _csv_text(rows))  # now with the mesh measures
        write_json(out / "summary.json", summary)
        finish_job_folder(out)
    job.end(f"{plural(summary['count'], 'object')} -> {out}")
    return summary


def _warn(message: str) -> None:
    warnings.warn(message, TomosegWarning, stacklevel=3)


def _write_labels(
    vol: _Volume,
    value: int | None,
    connectivity: int,
    lab: _Labelling,
    arr: Any,
    truth_pass: tuple[SliceSource | None, dict, dict] | None,
    advance: Callable[[], None],
) -> None:
    """Write the final connected-component labels slab by slab (relabelled from cc3d again,
    or the in-memory labels), with the truth overlaps when ``truth_pass`` is given."""
    from contextlib import ExitStack

    read = _slab_reader(vol.src)
    tsrc, overlaps, true_sizes = truth_pass or (None, {}, {})
    with ExitStack() as stack:
        reader = stack.enter_context(vol.src.reader()) if lab.single is None else None
        treader = stack.enter_context(tsrc.reader()) if tsrc is not None else None
        for k, (z0, z1) in enumerate(lab.slabs):
            if lab.single is not None:
                final = lab.single
            else:
                s = cc3d.connected_components(
                    _binary(read(reader, z0, z1), value),
                    connectivity=connectivity,
                    out_dtype=np.uint32,
                )
                final = _relabel_slab(s, lab, k)
            arr[z0:z1] = final
            if treader is not None:
                tl = read(treader, z0, z1).astype(np.int64)
                _accumulate_truth(final, tl, overlaps, true_sizes)
            del final
            advance()


def _split_pass(
    arr: Any,
    lab: _Labelling,
    vol: _Volume,
    chunk: int,
    connectivity: int,
    split_h: float | None,
    split_min_distance: float | None,
    truth_pass: tuple[SliceSource | None, dict, dict],
    advance: Callable[[], None],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Split the touching objects of the written labels, renumber them slab by slab (with the
    truth overlaps); the statistics of the final objects and what the split did."""
    from contextlib import ExitStack

    n = len(lab.stats["count"])
    h, md = split_defaults(lab.stats["count"], vol.voxel_size, split_h, split_min_distance)
    pieces = _split_objects(
        arr, lab.stats["lo"], lab.stats["hi"], chunk, vol.voxel_size, h, md, connectivity, advance
    )
    mapping, order = _renumber(pieces, n)
    tsrc, overlaps, true_sizes = truth_pass
    read = _slab_reader(tsrc) if tsrc is not None else None
    with ExitStack() as stack:
        treader = stack.enter_context(tsrc.reader()) if tsrc is not None else None
        for z0, z1 in lab.slabs:
            final = mapping[np.asarray(arr[z0:z1])]
            arr[z0:z1] = final
            if treader is not None and read is not None:
                _accumulate_truth(
                    final, read(treader, z0, z1).astype(np.int64), overlaps, true_sizes
                )
            advance()
    if pieces.skipped:
        _warn(
            f"{plural(len(pieces.skipped), 'object')} too large to split (more than "
            f"{SPLIT_MAX_VOXELS} "
            "voxels in their bounding box) were left whole"
        )
    info = {
        "h": h,
        "min_distance": md,
        "connected_components": n,
        "objects_split": pieces.split,
        "objects_too_large": len(pieces.skipped),
        "method": "seeded watershed on the distance transform (h-maxima seeds)",
    }
    return _split_stats(lab.stats, pieces, order), info


def _truth_kind(
    tsrc: SliceSource, true_sizes: dict[int, int], chunk: int, connectivity: int
) -> str | None:
    """None for instance labels; a description when the truth is a class mask: a few label
    values (at most 8) holding more than twice as many connected objects (one more pass over
    the truth, only then)."""
    if not true_sizes or len(true_sizes) > 8:
        return None
    tvol = _Volume(tsrc, None, None, (1.0, 1.0, 1.0), None)
    n = len(_label(tvol, None, connectivity, 0, chunk).stats["count"])
    if n <= 2 * len(true_sizes):
        return None
    return (
        f"holds class ids rather than instance labels ({plural(len(true_sizes), 'label value')} for "
        f"{plural(n, 'connected object')})"
    )


def _accumulate_truth(
    pred: np.ndarray,
    truth: np.ndarray,
    overlaps: dict[tuple[int, int], int],
    true_sizes: dict[int, int],
) -> None:
    t_ids, t_counts = np.unique(truth[truth > 0], return_counts=True)
    for t, c in zip(t_ids.tolist(), t_counts.tolist(), strict=True):
        true_sizes[t] = true_sizes.get(t, 0) + c
    both = (pred > 0) & (truth > 0)
    if not both.any():
        return
    keys = (pred[both].astype(np.int64) << 32) | truth[both]
    u, c = np.unique(keys, return_counts=True)
    for key, n in zip(u.tolist(), c.tolist(), strict=True):
        pair = (key >> 32, key & 0xFFFFFFFF)
        overlaps[pair] = overlaps.get(pair, 0) + n


# ----------------------------------------------------------------------------- in memory

REGIONPROPS = (
    "label",
    "area",
    "centroid",
    "bbox",
    "axis_major_length",
    "axis_minor_length",
    "equivalent_diameter_area",
    "extent",
)


def measure_objects(
    labels: np.ndarray,
    *,
    class_id: int = 1,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    connectivity: int = 26,
    min_volume: int = 0,
    split: bool = False,
    split_h: float | None = None,
    split_min_distance: float | None = None,
) -> dict[str, np.ndarray]:
    """Label the 3D objects of one class of an in-memory class-id volume and measure them.

    Objects are the ``connectivity``-connected components of ``labels == class_id`` (cc3d, the
    same labelling as :func:`analyze_objects`), numbered in raster order of their first voxel;
    measurements are ``skimage.measure.regionprops_table``'s, with its column names.

    Args:
        labels: (Z, Y, X) integer class ids: a numpy array, or an array-like read into memory
            (a dask array is computed; a ``segment_stack`` volume read with zarr).
        class_id: the class whose objects are measured.
        spacing: (z, y, x) voxel size in physical units.
        connectivity: 6, 18 or 26.
        min_volume: objects with fewer voxels are dropped (before numbering).
        split, split_h, split_min_distance: tell touching objects apart, as
            :func:`analyze_objects` does (the same objects, numbered the same way).

    Returns:
        Dict of equal-length 1-D arrays, one entry per object: ``label``, ``num_pixels``
        (voxels), ``area`` (physical volume: voxels x voxel volume, as regionprops with
        ``spacing``), ``centroid-0..2`` (physical), ``bbox-0..5`` (voxel indices, end exclusive),
        ``axis_major_length``, ``axis_minor_length``, ``equivalent_diameter_area``, ``extent``.

    Raises:
        TomosegError: not a 3D integer array, a bad connectivity, spacing or min_volume.
    """
    from skimage.measure import regionprops_table

    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise TomosegError(f"labels must be a (Z, Y, X) array, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise TomosegError(f"labels must hold integer class ids, got {arr.dtype}")
    _check_connectivity(connectivity)
    spacing = parse_voxel_size(spacing)  # type: ignore[assignment]
    if (
        isinstance(min_volume, bool)
        or not isinstance(min_volume, (int, np.integer))
        or min_volume < 0
    ):
        raise TomosegError(f"min_volume={min_volume!r}: must be an integer >= 0")
    check_split_params(split_h, split_min_distance, split)
    objects = label_objects(arr, connectivity, int(min_volume), value=int(class_id))
    if split:
        objects = split_labels(
            objects, spacing, connectivity=connectivity, split_h=split_h,
            split_min_distance=split_min_distance,
        )  # fmt: skip
    table = regionprops_table(objects, properties=("label", "num_pixels"))
    if len(table["label"]):
        table = regionprops_table(objects, properties=REGIONPROPS, spacing=spacing)
        table["num_pixels"] = regionprops_table(objects, properties=("num_pixels",))["num_pixels"]
    else:  # regionprops_table gives no columns at all for an empty volume
        table = {"label": np.zeros(0, np.int64), "num_pixels": np.zeros(0, np.int64)}
        for name in (
            "area",
            "axis_major_length",
            "axis_minor_length",
            "equivalent_diameter_area",
            "extent",
        ):
            table[name] = np.zeros(0)
        for i in range(3):
            table[f"centroid-{i}"] = np.zeros(0)
        for i in range(6):
            table[f"bbox-{i}"] = np.zeros(0, np.int64)
    order = ["label", "num_pixels", "area"]
    return {k: np.asarray(table[k]) for k in order + [k for k in table if k not in order]}
