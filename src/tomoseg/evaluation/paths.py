"""Paths of a tubular class (vessels, neurites): skeletons, branches, lengths, radii, SWC and a
graph of the junctions, end points and the somas the paths reach.

Method (libraries, no skeletoniser of our own):

* **Skeleton**: the TEASAR skeleton of every connected component of the class, by ``kimimaro``
  (Silversmith et al., seung-lab; the skeletoniser of large EM volumes), with its ``fix_borders``
  rule: where a component crosses a face of the analysed block, its skeleton ends at the same
  point of that face seen from either side. A volume larger than memory is skeletonised in slabs
  of ``chunk_slices`` slices that share one face slice; the skeletons of neighbouring slabs meet
  at those points and are joined by voxel position. Loops a join may leave at a face are cut by a
  minimum spanning tree (a TEASAR skeleton is a tree), so each path object is a tree.
* **Branches**: ``skan`` (Nunez-Iglesias et al. 2018, ``skan.csr.PathGraph.from_graph`` and
  ``summarize``) splits the skeleton graph into branches between end points (degree 1) and
  junctions (degree >= 3). Junction voxels closer to each other than their radius are one
  junction.
* **Length**: the polyline length of a branch's voxel path after a Gaussian smoothing along the
  path (sigma :data:`SMOOTH_VOXELS` voxels, end points kept): a voxel path's staircase makes an
  oblique straight line up to 8 % too long (``branch_distance`` of skan), the smoothed line
  measures it within about 1 %.
* **Radius**: the Euclidean distance transform of the class (``edt``, in physical units with the
  voxel size; outside the volume is not background) on the ridge at each skeleton voxel (the
  largest value among the voxel and its 26 neighbours: a voxel path runs up to half a voxel
  beside the ridge, and the value at the voxel itself reads 3-5 % small on tubes of radius
  2.5-6): ``mean_radius`` and ``min_radius`` per branch. In slabs the transform is computed with :data:`HALO` extra slices on
  each side, exact for radii up to that many slices.
* **Tortuosity**: length / straight distance between the branch's two ends (empty for a loop).
* **Somas**: with ``soma_class``, the somas are labelled as ``tomoseg objects`` labels them (3D
  connected components, ``soma_class`` objects written to ``somas/``); an end point reaches a soma
  when a soma voxel lies within its radius plus ``contact`` (physical units; default two voxels)
  of it: the graph links that end point to the soma's node.

Outputs of :func:`analyze_paths` (folder ``out``): ``branches.csv``, ``objects.csv``,
``paths.graphml`` (networkx GraphML: nodes ``junction`` / ``end`` / ``soma`` with physical ``z``,
``y``, ``x``; edges ``branch`` with the branch's measurements and ``contact`` from an end point
to a soma), ``swc/object_<id>.swc`` (SWC, x y z in physical units, radius), ``preview.png`` (the
maximum-intensity projection of the class along z with the skeletons over it), ``summary.json``;
with somas ``somas/`` (``objects.csv``, ``objects.zarr`` of the soma class).
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.io.jobs import finish_job_folder, open_job_folder
from tomoseg.io.sources import is_array, open_source, parse_voxel_size, split_dataset
from tomoseg.io.volumes import STACK_FILE, read_stack_info
from tomoseg.io.writers import atomic_write, write_json, write_text, writing
from tomoseg.utils.format import first_line, plural
from tomoseg.utils.progress import CancelToken, ProgressCallback, job_progress

__all__ = ["BRANCH_COLUMNS", "OBJECT_COLUMNS", "analyze_paths", "measure_paths"]

#: sigma (voxels) of the smoothing along a branch before its length is measured
SMOOTH_VOXELS = 2.0
#: extra slices read on each side of a slab for the distance transform (radii)
HALO = 16
#: TEASAR parameters (kimimaro): the invalidation ball is ``scale * radius + const`` (physical
#: units; const is given in voxels of the largest side), the penalty field kimimaro's default
TEASAR = {"scale": 1.5, "const_voxels": 2.0, "pdrf_scale": 100000, "pdrf_exponent": 4}
BRANCH_COLUMNS = (
    "branch",
    "object",
    "length",
    "mean_radius",
    "min_radius",
    "tortuosity",
    "euclidean_distance",
    "voxels",
    "end_points",
    "junction_src",
    "junction_dst",
    "z_src",
    "y_src",
    "x_src",
    "z_dst",
    "y_dst",
    "x_dst",
)
OBJECT_COLUMNS = (
    "object",
    "total_length",
    "branches",
    "junctions",
    "end_points",
    "mean_radius",
    "somas",
)
RESULT_NAMES = ("branches.csv", "summary.json")
_PRODUCTS = ("objects.csv", "paths.graphml", "swc", "preview.png", "somas", "slabs")
UNITS = ("auto", "physical", "voxel")


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise TomosegError(
            f"paths need the Python package {module}: pip install 'tomoseg[skeletons]'"
        ) from None


# ----------------------------------------------------------------------------- the volume


@dataclass
class _Input:
    src: Any
    classes: list[str] | None
    voxel_size: tuple[float, float, float]
    known: bool
    unit: str | None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.src.n, *self.src.shape)


def _open(volume: Any, voxel_size: Any, units: str) -> _Input:
    """The class-id volume (a ``segment_stack`` output folder, its volume, any stack input, or a
    (Z, Y, X) array) with its classes and its voxel size (``units`` decides what an unknown size
    means)."""
    if units not in UNITS:
        raise TomosegError(f"units={units!r}: must be auto, physical or voxel")
    info: dict[str, Any] = {}
    target = volume
    if not is_array(volume):
        file, dataset = split_dataset(volume, None)
        path = Path(file)
        if not path.exists():
            raise TomosegError(f"label volume not found: {Path(volume)}")
        target = path if dataset is None else volume
        if path.is_dir() and (path / STACK_FILE).is_file():
            info = read_stack_info(path) or {}
            target = path / info.get("volume", "labels.zarr")
        elif (path.parent / STACK_FILE).is_file():
            info = read_stack_info(path.parent) or {}
    elif np.ndim(volume) != 3:
        raise TomosegError(f"paths need a 3D (Z, Y, X) volume, got shape {np.shape(volume)}")
    src = open_source(target, allow_gaps=True, missing="ignore")
    if src.n < 2:
        raise TomosegError(
            f"paths need a 3D volume (Z, Y, X) of several slices; {src.where} is one 2D slice"
        )
    classes = info.get("classes")
    if classes is None and hasattr(src, "attrs"):
        meta = src.attrs().get("tomoseg")
        classes = meta.get("classes") if isinstance(meta, dict) else None
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        classes = None
    given = parse_voxel_size(voxel_size)
    # a stack.json voxel size counts only with its unit: a job on an input without one records
    # (1, 1, 1) and no unit, which is voxels, not micrometres (the rule of `objects`)
    recorded = parse_voxel_size(info.get("voxel_size")) if info.get("unit") else None
    found = given or recorded or src.voxel_size
    if units == "physical" and found is None:
        raise TomosegError(
            f"{src.where} declares no voxel size: give it as voxel_size=Z,Y,X "
            "(or measure in voxels with units=voxel)"
        )
    known = found is not None and units != "voxel"
    # a size given without a unit is in micrometres, as everywhere (io.sources.resolve_voxel_size)
    unit = (info.get("unit") or src.unit or ("micrometer" if given else None)) if known else "voxel"
    return _Input(src, classes, tuple(found) if known else (1.0, 1.0, 1.0), known, unit)  # type: ignore[arg-type]


def _class_id(vol: _Input, name: str | int | None, what: str) -> tuple[int, str]:
    """(class id, name) of a class given by name or id; a volume with class names refuses a
    name or an id it does not have (a volume without names: any id, an absent one is empty)."""
    if name is None:
        raise TomosegError(f"{what}=None: name the class whose paths to measure")
    if vol.classes and name in vol.classes:
        return vol.classes.index(name), str(name)
    if (isinstance(name, (int, np.integer)) and not isinstance(name, bool)) or str(name).isdigit():
        cid = int(name)
        if vol.classes and not 0 < cid < len(vol.classes):
            raise TomosegError(
                f"{what}={cid}: the volume's classes are {vol.classes} (ids 0-{len(vol.classes) - 1})"
            )
        return cid, vol.classes[cid] if vol.classes else str(cid)
    if vol.classes:
        raise TomosegError(f"unknown class '{name}': the volume's classes are {vol.classes}")
    raise TomosegError(
        f"unknown class '{name}': the volume has no class names (give a class id, e.g. {what}=2)"
    )


# ----------------------------------------------------------------------------- skeletons


@dataclass
class _Part:
    """The skeleton of one slab: global voxel coordinates (V, 3) int64 (z, y, x), edges (E, 2)
    into them, radii (V,) float32 (physical), and the slab's projection (Y, X) uint8."""

    vertices: np.ndarray
    edges: np.ndarray
    radii: np.ndarray
    mip: np.ndarray

    def save(self, path: Path) -> None:
        def write(t: Path) -> None:
            with open(t, "wb") as f:
                np.savez_compressed(
                    f, vertices=self.vertices, edges=self.edges, radii=self.radii, mip=self.mip
                )

        atomic_write(path, write)

    @classmethod
    def load(cls, path: Path) -> _Part:
        with np.load(path) as z:
            return cls(z["vertices"], z["edges"], z["radii"], z["mip"])


def _skeletonize_slab(
    read: Callable[[int, int], np.ndarray],
    nz: int,
    z0: int,
    z1: int,
    class_id: int,
    soma_id: int | None,
    voxel: tuple[float, float, float],
) -> _Part:
    """Skeletonise slices ``z0..z1`` (inclusive: the face slice shared with the next slab)."""
    kimimaro = _need("kimimaro")
    edt = _need("edt")  # kimimaro's distance transform (seung-lab)
    h0, h1 = max(0, z0 - HALO), min(nz, z1 + 1 + HALO)
    block = read(h0, h1)
    binary = (block == class_id).view(np.uint8) if block.dtype != bool else block.view(np.uint8)
    mip = np.zeros(block.shape[1:], np.uint8)
    core = slice(z0 - h0, z1 + 1 - h0)
    mip[binary[core].any(0)] = 1
    if soma_id is not None:
        mip[(block[core] == soma_id).any(0)] = 2
    del block
    if not binary[core].any():
        e = np.zeros((0, 3), np.int64)
        return _Part(e, np.zeros((0, 2), np.int64), np.zeros(0, np.float32), mip)
    dist = edt.edt(binary, anisotropy=voxel, black_border=False, parallel=1)
    inner = np.ascontiguousarray(binary[core])
    del binary
    params = {k: v for k, v in TEASAR.items() if k != "const_voxels"}
    params["const"] = TEASAR["const_voxels"] * max(voxel)
    skels = kimimaro.skeletonize(
        inner, teasar_params=params, anisotropy=voxel, dust_threshold=0, progress=False,
        fix_branching=True, fix_borders=True, parallel=1,
    )  # fmt: skip
    del inner
    verts, edges, off = [], [], 0
    for sk in skels.values():
        v = np.rint(np.asarray(sk.vertices, np.float64) / np.asarray(voxel)).astype(np.int64)
        verts.append(v)
        edges.append(np.asarray(sk.edges, np.int64) + off)
        off += len(v)
    v = np.concatenate(verts)
    e = np.concatenate(edges)
    # the volume's faces; a face shared with the next slab keeps its runs until the join
    lo = np.array([0 if z0 == 0 else -1, 0, 0])
    hi = np.array([z1 - z0 if z1 == nz - 1 else -1, dist.shape[1] - 1, dist.shape[2] - 1])
    v, e = _trim_faces(v, e, lo, hi)
    radii = _ridge(dist, v + [z0 - h0, 0, 0])
    v[:, 0] += z0
    return _Part(v, e, radii, mip)


def _ridge(dist: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The radius at skeleton voxels ``v`` (K, 3): the largest distance-transform value among
    each voxel and its 26 neighbours (a voxel path runs up to half a voxel beside the ridge of
    the transform; its neighbourhood holds the ridge)."""
    best = np.zeros(len(v), np.float32)
    hi = np.asarray(dist.shape) - 1
    for off in np.ndindex(3, 3, 3):
        q = np.clip(v + np.asarray(off) - 1, 0, hi)
        np.maximum(best, dist[q[:, 0], q[:, 1], q[:, 2]], out=best)
    return best


def _trim_faces(v: np.ndarray, e: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple:
    """Cut the runs along a face of the block from a skeleton's end points.

    kimimaro's ``fix_borders`` makes a path cross a face at the centre of the object's section
    there, but the path still goes on along the face to TEASAR's target on the section's rim.
    From every end point lying on a face, the vertices on that face are removed up to the last
    one before the path leaves it (the centre the neighbouring block's skeleton reaches too).
    """
    n = len(v)
    if not len(e):
        return v, e
    adj = _adjacency(e, n)
    deg = np.diff(adj.indptr)
    face_of = np.zeros((n, 6), bool)
    for a in range(3):
        face_of[:, 2 * a] = v[:, a] == lo[a]
        face_of[:, 2 * a + 1] = v[:, a] == hi[a]
    drop = np.zeros(n, bool)
    for start in np.flatnonzero((deg == 1) & face_of.any(1)):
        faces = face_of[start]
        run, prev, cur = [], -1, int(start)
        while True:
            nxt = [int(x) for x in adj.indices[adj.indptr[cur] : adj.indptr[cur + 1]] if x != prev]
            if deg[cur] > 2 or len(nxt) != 1 or not (face_of[nxt[0]] & faces).any():
                break
            run.append(cur)
            prev, cur = cur, nxt[0]
        drop[run] = True
    if not drop.any():
        return v, e
    keep = ~drop
    e = e[keep[e[:, 0]] & keep[e[:, 1]]]
    new = np.cumsum(keep) - 1
    return v[keep], new[e]


@dataclass
class _Graph:
    """The joined skeleton: unique voxels (raster order) and a tree per connected component."""

    coords: np.ndarray  # (N, 3) int64 voxel (z, y, x)
    radii: np.ndarray  # (N,) float physical
    edges: np.ndarray  # (E, 2) int64
    mip: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _join(parts: list[_Part], voxel: tuple[float, float, float]) -> _Graph:
    """Join slab skeletons by voxel position; cut the loops a join leaves (minimum spanning tree
    by physical edge length)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    mip = None
    for p in parts:
        mip = p.mip.copy() if mip is None else np.maximum(mip, p.mip)
    verts = [p.vertices for p in parts if len(p.vertices)]
    if not verts:
        return _Graph(np.zeros((0, 3), np.int64), np.zeros(0), np.zeros((0, 2), np.int64), mip)
    allv = np.concatenate(verts)
    allr = np.concatenate([p.radii for p in parts if len(p.vertices)])
    offs = np.cumsum([0] + [len(v) for v in verts])
    alle = np.concatenate(
        [p.edges + o for p, o in zip([p for p in parts if len(p.vertices)], offs, strict=False)]
    )
    coords, inv = np.unique(allv, axis=0, return_inverse=True)
    inv = inv.ravel()
    radii = np.zeros(len(coords))
    np.maximum.at(radii, inv, allr)
    e = inv[alle]
    e = e[e[:, 0] != e[:, 1]]
    e = np.unique(np.sort(e, axis=1), axis=0)
    n = len(coords)
    if len(e):
        w = np.linalg.norm((coords[e[:, 0]] - coords[e[:, 1]]) * np.asarray(voxel), axis=1)
        mst = minimum_spanning_tree(coo_matrix((w, (e[:, 0], e[:, 1])), shape=(n, n)).tocsr())
        m = mst.tocoo()
        e = np.stack([m.row, m.col], 1).astype(np.int64)
    return _Graph(coords, radii, e, mip)


# ----------------------------------------------------------------------------- measuring


def _smoothed_length(p: np.ndarray) -> float:
    """Polyline length of a path (physical (K, 3)) after Gaussian smoothing along it, ends kept."""
    from scipy.ndimage import gaussian_filter1d

    if len(p) < 2:
        return 0.0
    if len(p) >= 4:
        q = gaussian_filter1d(p, SMOOTH_VOXELS, axis=0, mode="nearest")
        q[0], q[-1] = p[0], p[-1]
        p = q
    return float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum())


@dataclass
class _Measured:
    branches: list[dict[str, Any]]
    objects: list[dict[str, Any]]
    nodes: dict[int, dict[str, Any]]  # junction / end point id -> attributes
    object_of_vertex: np.ndarray
    tree_edges: np.ndarray
    junctions: int
    end_points: int
    graph: _Graph  # the pruned skeleton the measurements are of


def _adjacency(edges: np.ndarray, n: int) -> Any:
    from scipy.sparse import coo_matrix

    e = edges
    rows, cols = np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]]
    return coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()


def _paths(adj: Any, g: _Graph, voxel: tuple[float, float, float]) -> list[np.ndarray]:
    """The branches of a skeleton graph (skan): each an array of vertex ids from one end point
    or junction to the next."""
    if not adj.nnz:
        return []
    skan_csr = _need("skan.csr")
    pg = skan_csr.PathGraph.from_graph(
        adj=adj, node_coordinates=g.coords.astype(np.float64), node_values=g.radii,
        spacing=np.asarray(voxel, np.float64),
    )  # fmt: skip
    ptr, ind = pg.paths.indptr, pg.paths.indices  # row i: the voxels of path i, in order
    out = [np.asarray(ind[ptr[i] : ptr[i + 1]], np.int64) for i in range(pg.n_paths)]
    return [p for p in out if len(p) >= 2]


def _prune(g: _Graph, voxel: tuple[float, float, float]) -> _Graph:
    """Remove spurs: terminal branches shorter than the TEASAR invalidation ball of their
    junction (``scale * radius + const``), the artefacts of a rough surface, and terminal
    branches lying in the face slice two slabs share (``g.extra["planes"]``: each slab's path
    crosses it at the section's centre and runs on along it to a rim, see :func:`_trim_faces`);
    repeated until none is left (at most 5 rounds)."""
    v = np.asarray(voxel, np.float64)
    planes = np.asarray(g.extra.get("planes", []), np.int64)
    const = TEASAR["const_voxels"] * max(voxel)
    keep = np.ones(len(g.coords), bool)
    edges = g.edges
    for _ in range(5):
        adj = _adjacency(edges, len(g.coords))
        degree = np.diff(adj.indptr)
        drop = []
        for ids in _paths(adj, g, voxel):
            s, t = degree[ids[0]], degree[ids[-1]]
            if not ((s == 1 and t >= 3) or (s >= 3 and t == 1)):
                continue
            j = ids[-1] if t >= 3 else ids[0]
            tip = ids[:-1] if t >= 3 else ids[1:]
            z = g.coords[tip, 0]
            on_face = bool(planes.size) and (z == z[0]).all() and bool(np.isin(z[0], planes))
            if (
                on_face
                or _smoothed_length(g.coords[ids] * v) < TEASAR["scale"] * g.radii[j] + const
            ):
                drop.append(tip)
        if not drop:
            break
        keep[np.concatenate(drop)] = False
        edges = edges[keep[edges[:, 0]] & keep[edges[:, 1]]]
    new = np.cumsum(keep) - 1
    return _Graph(g.coords[keep], g.radii[keep], new[edges], g.mip, g.extra)


def _measure(g: _Graph, voxel: tuple[float, float, float]) -> _Measured:
    """Branches (skan) and per-object totals of a joined skeleton."""
    from scipy.sparse.csgraph import connected_components

    g = _prune(g, voxel)
    n = len(g.coords)
    v = np.asarray(voxel, np.float64)
    if n == 0:
        return _Measured([], [], {}, np.zeros(0, np.int64), g.edges, 0, 0, g)
    e = g.edges
    adj = _adjacency(e, n)
    _, comp = connected_components(adj, directed=False)
    # objects numbered in raster order of their first voxel (coords are sorted)
    first = np.full(comp.max() + 1, n)
    np.minimum.at(first, comp, np.arange(n))
    rank = np.empty_like(first)
    rank[np.argsort(first)] = np.arange(1, len(first) + 1)
    obj = rank[comp]
    degree = np.diff(adj.indptr)
    nodes: dict[int, dict[str, Any]] = {}
    branches = [{"ids": ids} for ids in _paths(adj, g, voxel)]
    # junction clusters: junction voxels joined by a branch shorter than their radius
    parent = {int(k): int(k) for k in np.flatnonzero(degree >= 3)}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    rows = []
    for b in branches:
        ids = b["ids"]
        pts = g.coords[ids] * v
        s, t = int(ids[0]), int(ids[-1])
        length = _smoothed_length(pts)
        if degree[s] >= 3 and degree[t] >= 3 and length <= max(g.radii[s], g.radii[t]):
            ra, rb = find(s), find(t)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
            continue
        rows.append((ids, s, t, length, pts))
    jid: dict[int, int] = {}
    for k in sorted(parent):
        r = find(k)
        if r not in jid:
            jid[r] = len(jid) + 1
    out = []
    eid: dict[int, int] = {}
    for k, (ids, s, t, length, pts) in enumerate(rows, start=1):
        ends = []
        for node in (s, t):
            if degree[node] >= 3:
                ends.append(f"j{jid[find(node)]}")
            else:
                eid.setdefault(node, len(eid) + 1)
                ends.append(f"e{eid[node]}")
        r = g.radii[ids]
        chord = float(np.linalg.norm(pts[-1] - pts[0]))
        zs, ys, xs = g.coords[s] * v
        zd, yd, xd = g.coords[t] * v
        out.append(
            {
                "branch": k,
                "object": int(obj[s]),
                "length": length,
                "mean_radius": float(r.mean()),
                "min_radius": float(r.min()),
                "tortuosity": length / chord if chord > 1e-9 and s != t else None,
                "euclidean_distance": chord,
                "voxels": len(ids),
                "end_points": sum(int(degree[x] == 1) for x in (s, t)),
                "junction_src": ends[0] if ends[0].startswith("j") else "",
                "junction_dst": ends[1] if ends[1].startswith("j") else "",
                "z_src": zs, "y_src": ys, "x_src": xs, "z_dst": zd, "y_dst": yd, "x_dst": xd,
                "_src": ends[0], "_dst": ends[1], "_ids": ids,
            }
        )  # fmt: skip
    for node, k in eid.items():
        z, y, x = g.coords[node] * v
        nodes[node] = {"id": f"e{k}", "kind": "end", "object": int(obj[node]),
                       "z": float(z), "y": float(y), "x": float(x),
                       "radius": float(g.radii[node])}  # fmt: skip
    for node in parent:
        r = find(node)
        if node == r:
            z, y, x = g.coords[node] * v
            nodes[node] = {"id": f"j{jid[r]}", "kind": "junction", "object": int(obj[node]),
                           "z": float(z), "y": float(y), "x": float(x),
                           "radius": float(g.radii[node])}  # fmt: skip
    objects = []
    n_obj = int(obj.max()) if n else 0
    for o in range(1, n_obj + 1):
        mine = [b for b in out if b["object"] == o]
        total = sum(b["length"] for b in mine)
        junc = {b[k] for b in mine for k in ("junction_src", "junction_dst") if b[k]}
        ends = {b[k] for b in mine for k in ("_src", "_dst") if b[k].startswith("e")}
        w = sum(b["mean_radius"] * b["length"] for b in mine)
        objects.append(
            {
                "object": o,
                "total_length": total,
                "branches": len(mine),
                "junctions": len(junc),
                "end_points": len(ends),
                "mean_radius": w / total if total > 0 else None,
                "somas": 0,
            }
        )
    return _Measured(out, objects, nodes, obj, e, len(jid), len(eid), g)


# ----------------------------------------------------------------------------- somas


def _contacts(
    m: _Measured,
    lookup: Callable[[tuple[slice, slice, slice]], np.ndarray],
    shape: tuple[int, int, int],
    voxel: tuple[float, float, float],
    contact: float,
    slab: int | None = None,
) -> dict[int, tuple[int, float]]:
    """End point vertex -> (soma label, gap): the nearest soma voxel within the end point's
    radius plus ``contact`` (physical). The soma label volume is read once per group of
    ``slab`` slices holding end points (the box around their neighbourhoods), not per point."""
    v = np.asarray(voxel)
    found: dict[int, tuple[int, float]] = {}
    ends = []
    for node, attrs in m.nodes.items():
        if attrs["kind"] == "end":
            c = np.array([attrs["z"], attrs["y"], attrs["x"]]) / v
            reach = attrs["radius"] + contact
            half = np.ceil(reach / v).astype(int)
            lo = np.maximum(np.rint(c).astype(int) - half, 0)
            hi = np.minimum(np.rint(c).astype(int) + half + 1, shape)
            ends.append((node, c, reach, lo, hi))
    step = int(slab or shape[0])
    for z0 in range(0, shape[0], step):
        group = [e for e in ends if z0 <= round(e[1][0]) < z0 + step]
        if not group:
            continue
        blo = np.min([e[3] for e in group], axis=0)
        bhi = np.max([e[4] for e in group], axis=0)
        box = np.asarray(lookup(tuple(slice(a, b) for a, b in zip(blo, bhi, strict=True))))
        for node, c, reach, lo, hi in group:
            cube = box[tuple(slice(a, b) for a, b in zip(lo - blo, hi - blo, strict=True))]
            idx = np.argwhere(cube > 0)
            if not len(idx):
                continue
            d = np.linalg.norm((idx + lo - c) * v, axis=1)
            k = int(np.argmin(d))
            if d[k] <= reach:
                found[node] = (int(cube[tuple(idx[k])]), float(d[k]))
    return found


def _soma_contacts(
    volume: Any,
    vol: _Input,
    out: Path,
    soma_class: str,
    chunk_slices: int | None,
    m: _Measured,
    gap: float,
    job: Any,
) -> tuple[dict[int, tuple[int, float]], dict[int, dict[str, Any]]]:
    """Label the somas as ``objects`` does (``out/somas``, resumed or kept when finished) and
    find the end points that reach them."""
    import zarr

    from tomoseg.evaluation.objects import analyze_objects
    from tomoseg.io.jobs import JOB_FILE, read_record

    where = out / "somas"
    done = (read_record(where / JOB_FILE) or {}).get("complete") if where.is_dir() else False
    if not done:
        analyze_objects(
            volume, where, class_name=soma_class, chunk_slices=chunk_slices, meshes=0,
            voxel_size=vol.voxel_size if vol.known else None, progress=None, cancel=job.cancel,
        )  # fmt: skip
    labels = zarr.open_array(str(where / "objects.zarr" / "0"), mode="r")
    contacts = _contacts(m, lambda s: labels[s], vol.shape, vol.voxel_size, gap, chunk_slices)
    somas: dict[int, dict[str, Any]] = {}
    with open(where / "objects.csv", newline="") as f:
        for r in csv.DictReader(f):
            names = {"z": "centroid-0", "y": "centroid-1", "x": "centroid-2", "volume": "area",
                     "voxels": "num_pixels"}  # fmt: skip
            somas[int(r["label"])] = {k: float(r[c]) for k, c in names.items() if r.get(c)}
    return contacts, somas


# ----------------------------------------------------------------------------- products


def _graphml(m: _Measured, contacts: dict[int, tuple[int, float]], somas: dict[int, dict]) -> Any:
    nx = _need("networkx")
    graph = nx.Graph()
    for attrs in m.nodes.values():
        graph.add_node(attrs["id"], **{k: val for k, val in attrs.items() if k != "id"})
    for b in m.branches:
        data = {k: b[k] for k in BRANCH_COLUMNS if b[k] is not None and not k.startswith("_")}
        graph.add_edge(b["_src"], b["_dst"], kind="branch", **data)
    for node, (label, gap) in contacts.items():
        s = f"s{label}"
        if s not in graph:
            graph.add_node(s, kind="soma", label=label, **somas.get(label, {}))
        graph.add_edge(m.nodes[node]["id"], s, kind="contact", distance=gap)
    return graph


def _swc_texts(g: _Graph, m: _Measured, voxel: tuple[float, float, float]) -> dict[int, str]:
    """One SWC per object (osteoid's writer, kimimaro's skeleton class): x y z physical, radius."""
    skeleton_class = _need("osteoid").Skeleton  # kimimaro's skeleton class and SWC writer
    texts = {}
    if not len(g.coords):
        return texts
    v = np.asarray(voxel)
    order = np.argsort(m.object_of_vertex, kind="stable")
    bounds = np.searchsorted(m.object_of_vertex[order], np.arange(1, len(m.objects) + 2))
    e = m.tree_edges
    eobj = m.object_of_vertex[e[:, 0]] if len(e) else np.zeros(0, np.int64)
    eorder = np.argsort(eobj, kind="stable")
    ebounds = np.searchsorted(eobj[eorder], np.arange(1, len(m.objects) + 2))
    local = np.empty(len(g.coords), np.int64)
    for o in range(1, len(m.objects) + 1):
        ids = order[bounds[o - 1] : bounds[o]]
        local[ids] = np.arange(len(ids))
        ee = e[eorder[ebounds[o - 1] : ebounds[o]]]
        sk = skeleton_class(
            vertices=(g.coords[ids] * v)[:, ::-1].astype(np.float32),
            edges=local[ee].astype(np.uint32),
            radii=g.radii[ids].astype(np.float32),
        )
        text = sk.to_swc(contributors="tomoseg paths")
        # the same skeleton gives the same file: no date in the header
        texts[o] = "".join(
            ln for ln in text.splitlines(True) if not ln.startswith("# VERSION_DATE")
        )
    return texts


def _cell(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.6g}"
    return str(x)


def _csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r[c]) for c in columns])
    return buf.getvalue()


def _preview(g: _Graph, m: _Measured, path: Path, title: str) -> None:
    """The class's projection along z (somas dimmer) with every branch drawn over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    mip = g.mip if g.mip is not None else np.zeros((1, 1), np.uint8)
    h, w = mip.shape
    scale = 8.0 / max(h, w)
    fig, ax = plt.subplots(figsize=(max(2.0, w * scale), max(2.0, h * scale) + 0.4), dpi=150)
    shown = np.zeros((h, w, 3), np.float32)
    shown[mip == 1] = (0.55, 0.55, 0.55)
    shown[mip == 2] = (0.85, 0.75, 0.45)
    ax.imshow(shown, interpolation="nearest")
    cmap = plt.get_cmap("tab20")
    segs, colors = [], []
    for b in m.branches:
        ids = b["_ids"]
        yx = g.coords[ids][:, [2, 1]].astype(np.float32)
        segs.append(yx)
        colors.append(cmap(b["object"] % 20))
    ax.add_collection(LineCollection(segs, colors=colors, linewidths=0.8))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, lambda t: t.write_bytes(buf.getvalue()))


def _warn(message: str) -> None:
    warnings.warn(message, TomosegWarning, stacklevel=3)


# ----------------------------------------------------------------------------- in memory


def measure_paths(
    labels: Any,
    *,
    class_id: int,
    spacing: Any = None,
    soma_class_id: int | None = None,
    contact: float | None = None,
) -> dict[str, Any]:
    """Skeletonise one tubular class of an in-memory class-id volume and measure its paths.

    The same method as :func:`analyze_paths` (see the module doc), on one block.

    Args:
        labels: (Z, Y, X) integer class ids (numpy, or an array-like read into memory).
        class_id: the tubular class (vessels, neurites).
        spacing: (z, y, x) voxel size in physical units; None measures in voxels.
        soma_class_id: the class of the somas the paths may reach (graph ``soma`` nodes).
        contact: largest gap (physical) between an end point's surface and a soma voxel for a
            contact (default: two voxels of the largest side).

    Returns:
        ``branches`` and ``objects``: dicts of equal-length 1-D arrays (the columns of
        :data:`BRANCH_COLUMNS` / :data:`OBJECT_COLUMNS`; an empty class gives empty columns),
        ``graph`` (a ``networkx.Graph``), ``swc`` (object id -> SWC text), ``junctions``,
        ``end_points``, ``total_length``.

    Raises:
        TomosegError: not a 3D integer array, a bad spacing.
    """
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise TomosegError(f"labels must be a (Z, Y, X) array, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise TomosegError(f"labels must hold integer class ids, got {arr.dtype}")
    voxel = parse_voxel_size(spacing) or (1.0, 1.0, 1.0)
    nz = arr.shape[0]
    part = _skeletonize_slab(
        lambda a, b: arr[a:b], nz, 0, nz - 1, int(class_id), soma_class_id, voxel
    )
    g = _join([part], voxel)
    m = _measure(g, voxel)
    g = m.graph
    somas: dict[int, dict] = {}
    contacts: dict[int, tuple[int, float]] = {}
    if soma_class_id is not None:
        from tomoseg.evaluation.objects import label_objects

        soma = label_objects(arr, value=int(soma_class_id))
        for k, c in enumerate(_centroids(soma, voxel), start=1):
            somas[k] = c
        gap = _contact(contact, voxel)
        contacts = _contacts(m, lambda s: soma[s], arr.shape, voxel, gap)
    _count_somas(m, contacts)
    return {
        "branches": _columns(m.branches, BRANCH_COLUMNS),
        "objects": _columns(m.objects, OBJECT_COLUMNS),
        "graph": _graphml(m, contacts, somas),
        "swc": _swc_texts(g, m, voxel),
        "junctions": m.junctions,
        "end_points": m.end_points,
        "total_length": float(sum(b["length"] for b in m.branches)),
    }


def _centroids(soma: np.ndarray, voxel: tuple[float, float, float]) -> list[dict[str, float]]:
    from scipy import ndimage

    n = int(soma.max())
    if not n:
        return []
    cs = ndimage.center_of_mass(soma > 0, soma, range(1, n + 1))
    return [{"z": c[0] * voxel[0], "y": c[1] * voxel[1], "x": c[2] * voxel[2]} for c in cs]


def _contact(contact: float | None, voxel: tuple[float, float, float]) -> float:
    if contact is None:
        return 2.0 * max(voxel)
    if not (isinstance(contact, (int, float)) and math.isfinite(contact) and contact >= 0):
        raise TomosegError(f"contact={contact!r}: must be a distance >= 0")
    return float(contact)


def _count_somas(m: _Measured, contacts: dict[int, tuple[int, float]]) -> None:
    per: dict[int, set[int]] = {}
    for node, (label, _) in contacts.items():
        per.setdefault(m.nodes[node]["object"], set()).add(label)
    for o in m.objects:
        o["somas"] = len(per.get(o["object"], ()))


def _columns(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {
        c: np.array([np.nan if r[c] is None else r[c] for r in rows]) if rows else np.zeros(0)
        for c in columns
    }


# ----------------------------------------------------------------------------- main entry


def analyze_paths(
    volume: str | os.PathLike[str] | Any,
    out: str | os.PathLike[str],
    class_name: str | int | None = None,
    soma_class: str | int | None = None,
    chunk_slices: int | None = None,
    voxel_size: Any = None,
    units: str = "auto",
    contact: float | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Skeletonise a tubular class of a segmented stack and measure its paths (module doc).

    Args:
        volume: ``segment_stack`` output folder, its volume, any (Z, Y, X) class-id stack
            (Zarr, multi-page TIFF, folder of slices, HDF5 as ``file.h5:/labels``) or a (Z, Y, X)
            integer array.
        out: output folder (module doc).
        class_name: the tubular class: a name of the volume's classes or a class id.
        soma_class: the class of the somas the paths reach (name or id); None: no somas.
        chunk_slices: skeletonise slab by slab (this many slices each) to bound memory.
        voxel_size: (z, y, x); default: from ``stack.json`` / the volume's metadata.
        units: ``physical`` (refuse a volume without a voxel size), ``voxel`` (lengths in
            voxels), ``auto`` (physical where the size is known, else voxels with a warning).
        contact: largest gap (physical) between an end point's surface and a soma (default two
            voxels).
        overwrite: replace earlier results in ``out``.
        progress: one ``step`` event per slab skeletonised, then per product written.
        cancel: a token checked after each step.

    After a ``kill -9`` or a cancel the same call resumes: the slabs already skeletonised
    (``out/slabs/``, written atomically) are kept, the soma labelling resumes as ``objects``
    does, and the job record is marked complete only at the end.

    Returns:
        The summary (also ``summary.json``): counts, total length, unit, files.

    Raises:
        TomosegError: an unknown class, a 2D input, ``units='physical'`` without a voxel size,
            bad parameters, an output folder holding results.
        Cancelled: ``cancel`` was set.
    """
    t0 = time.perf_counter()
    if chunk_slices is not None and (isinstance(chunk_slices, bool) or int(chunk_slices) < 1):
        raise TomosegError(f"chunk_slices={chunk_slices!r}: must be >= 1")
    vol = _open(volume, voxel_size, units)
    cid, name = _class_id(vol, class_name, "class_name")
    sid, sname = (None, None) if soma_class is None else _class_id(vol, soma_class, "soma_class")
    if sid is not None and sid == cid:
        raise TomosegError(f"soma_class={sname}: the same class as the paths")
    if units == "auto" and not vol.known:
        _warn(
            f"{vol.src.where} declares no voxel size: lengths and radii are in voxels "
            "(give voxel_size=Z,Y,X for physical units)"
        )
    gap = _contact(contact, vol.voxel_size)
    nz = vol.shape[0]
    chunk = int(chunk_slices or nz)
    slabs = [(z, min(z + chunk, nz - 1)) for z in range(0, max(nz - 1, 1), chunk)]
    identity = {
        "volume": vol.src.where if is_array(volume) else str(Path(volume).resolve()),
        "class": name, "soma_class": sname, "chunk_slices": chunk_slices,
        "voxel_size": list(vol.voxel_size) if vol.known else None, "contact": gap,
        "teasar": TEASAR, "halo": HALO,
    }  # fmt: skip
    out = Path(out)
    open_job_folder(
        out, "paths", identity, overwrite=overwrite, result_names=RESULT_NAMES,
        replaced=(*RESULT_NAMES, *_PRODUCTS), keep_finished=True,
    )  # fmt: skip
    job = job_progress(
        "paths", "step", len(slabs) + 3, progress, cancel, hint="the same call resumes it"
    )
    job.start()
    (out / "slabs").mkdir(exist_ok=True)
    parts = []
    with vol.src.reader() as reader, writing("the skeletons", out):

        def read(a: int, b: int) -> np.ndarray:
            return np.stack([reader(z) for z in range(a, b)])

        for k, (z0, z1) in enumerate(slabs):
            f = out / "slabs" / f"slab_{k:05d}.npz"
            if f.is_file():
                part = _Part.load(f)
            else:
                part = _skeletonize_slab(read, nz, z0, z1, cid, sid, vol.voxel_size)
                part.save(f)
            parts.append(part)
            job.advance(message=f"slab {k + 1}/{len(slabs)}")
    g = _join(parts, vol.voxel_size)
    g.extra["planes"] = [z1 for _, z1 in slabs[:-1]]
    del parts
    m = _measure(g, vol.voxel_size)
    g = m.graph
    somas: dict[int, dict] = {}
    contacts: dict[int, tuple[int, float]] = {}
    if sid is not None:
        contacts, somas = _soma_contacts(volume, vol, out, sname, chunk_slices, m, gap, job)
    _count_somas(m, contacts)
    job.advance(message="somas")
    summary = {
        "volume": vol.src.where if is_array(volume) else str(volume),
        "class": name,
        "soma_class": sname,
        "shape": list(vol.shape),
        "voxel_size": list(vol.voxel_size) if vol.known else None,
        "unit": vol.unit,
        "chunk_slices": chunk_slices,
        "objects": len(m.objects),
        "branches": len(m.branches),
        "junctions": m.junctions,
        "end_points": m.end_points,
        "total_length": float(sum(b["length"] for b in m.branches)),
        "somas_reached": len({lab for lab, _ in contacts.values()}),
        "soma_contacts": len(contacts),
    }
    with writing("the path tables", out):
        write_text(out / "branches.csv", _csv(m.branches, BRANCH_COLUMNS))
        write_text(out / "objects.csv", _csv(m.objects, OBJECT_COLUMNS))
        graph = _graphml(m, contacts, somas)
        nx = _need("networkx")
        atomic_write(out / "paths.graphml", lambda t: nx.write_graphml(graph, str(t)))
        (out / "swc").mkdir(exist_ok=True)
        for o, text in _swc_texts(g, m, vol.voxel_size).items():
            write_text(out / "swc" / f"object_{o:06d}.swc", text)
    job.advance(message="tables, graph and SWC")
    try:
        _preview(
            g,
            m,
            out / "preview.png",
            f"{name}: {plural(len(m.objects), 'path')}, "
            f"{plural(len(m.branches), 'branch', 'branches')}",
        )
    except Exception as exc:
        _warn(f"preview.png was not written: {first_line(exc)}")
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    with writing("the path tables", out):
        write_json(out / "summary.json", summary)
        import shutil

        shutil.rmtree(out / "slabs", ignore_errors=True)
        finish_job_folder(out)
    job.end(
        f"{plural(summary['objects'], 'path')}, "
        f"{plural(summary['branches'], 'branch', 'branches')} -> {out}"
    )
    return summary
