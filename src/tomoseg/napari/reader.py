"""napari reader: ``segment-stack`` outputs as a Labels layer at their voxel size, and every
stack tomoseg reads (folder of slices, multi-page TIFF, Zarr / OME-Zarr) as an Image layer;
both lazily (dask: a slice is read when shown), so a stack of thousands of slices opens at once.
A ``paths`` output folder opens as Points layers (its skeletons from the SWC files, sized by
their radii, and its junctions, end points and somas) in physical coordinates, over the
``segment-stack`` labels at their voxel size.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tomoseg.errors import TomosegError
from tomoseg.io.volumes import STACK_FILE, ZARR_NAME, open_source, read_stack_info
from tomoseg.runtime.run_record import RUN_FILE

LayerData = list[tuple[Any, dict[str, Any], str]]


def get_reader(path: str | list[str]) -> Callable[[Any], LayerData] | None:
    """napari's ``get_reader`` hook: a reader for a ``segment-stack`` output folder or any
    stack input of :func:`tomoseg.io.sources.open_source`, None for anything else."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if (p / "paths.graphml").is_file() and (p / "branches.csv").is_file():
        return read_paths_output
    if (p / STACK_FILE).is_file() and (p / ZARR_NAME).is_dir():
        return read_stack_output
    if (p / RUN_FILE).is_file():
        return read_run
    if p.is_file() and p.suffix.lower() not in (".tif", ".tiff"):
        return None  # one image file is a slice, not a stack: napari's own readers open it
    try:
        open_source(p)
    except (TomosegError, OSError, ValueError):
        return None
    return read_stack


def read_run(path: str | os.PathLike[str]) -> LayerData:
    """A training run folder holds weights, not images: nothing to show (napari's "read, no
    layers" answer); choose it as the run of the Segment widget."""
    return [(None,)]  # type: ignore[list-item]


def read_stack_output(path: str | os.PathLike[str]) -> LayerData:
    """The labels of a ``segment-stack`` output folder (OME-Zarr ``labels.zarr/0``) as a lazy
    Labels layer with the voxel size of ``stack.json`` as its scale; its uncertainty
    (``uncertainty.zarr``, when written) as an Image layer."""
    import dask.array as da
    import zarr

    p = Path(path if not isinstance(path, list) else path[0])
    info = read_stack_info(p) or {}
    scale = tuple(float(v) for v in info.get("voxel_size") or (1.0, 1.0, 1.0))
    labels = da.from_zarr(zarr.open_array(str(p / ZARR_NAME / "0"), mode="r"))
    meta = {"name": f"{p.name} labels", "scale": scale, "metadata": {"tomoseg_stack": str(p)}}
    return [(labels, meta, "labels")]


def read_paths_output(path: str | os.PathLike[str]) -> LayerData:
    """A ``paths`` output folder: the skeleton points of its SWC files (``x y z radius``,
    physical) as a Points layer sized by their diameters, with the object of each point as a
    property; the branches' junctions (red) and end points (yellow) of ``branches.csv`` and the
    somas (cyan, the centroids of ``somas/objects.csv``) as a second Points layer."""
    import csv

    import numpy as np

    p = Path(path if not isinstance(path, list) else path[0])
    pts, sizes, objects = [], [], []
    for f in sorted((p / "swc").glob("object_*.swc")):
        a = np.loadtxt(f, comments="#", ndmin=2)
        if a.size:
            pts.append(a[:, [4, 3, 2]])  # SWC: id type x y z radius parent
            sizes.append(2.0 * a[:, 5])
            objects.append(np.full(len(a), int(f.stem.rsplit("_", 1)[-1])))
    layers: LayerData = []
    if pts:
        meta = {
            "name": f"{p.name} skeletons", "size": np.concatenate(sizes),
            "properties": {"object": np.concatenate(objects)}, "face_color": "orange",
        }  # fmt: skip
        layers.append((np.concatenate(pts), meta, "points"))
    nodes: dict[str, tuple[float, float, float]] = {}
    with open(p / "branches.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            for end in ("src", "dst"):
                key = r[f"junction_{end}"] or f"end {r['branch']} {end}"
                nodes[key] = tuple(float(r[f"{a}_{end}"]) for a in "zyx")  # type: ignore[assignment]
    colors = ["red" if k.startswith("j") else "yellow" for k in nodes]
    coords = list(nodes.values())
    somas = p / "somas" / "objects.csv"
    if somas.is_file():
        with open(somas, newline="") as fh:
            for r in csv.DictReader(fh):
                if all(r.get(f"centroid-{i}") for i in range(3)):
                    coords.append(tuple(float(r[f"centroid-{i}"]) for i in range(3)))
                    colors.append("cyan")
    if coords:
        meta = {"name": f"{p.name} junctions, ends, somas", "face_color": colors, "size": 4}
        layers.append((np.asarray(coords, np.float64), meta, "points"))
    return layers or [(None,)]  # type: ignore[list-item]


def read_stack(path: str | os.PathLike[str]) -> LayerData:
    """A stack input as a lazy (dask) Image layer: one slice read per chunk, through the same
    source tomoseg segments from, at the voxel size its metadata declares."""
    p = Path(path if not isinstance(path, list) else path[0])
    src = open_source(p)
    image = lazy_stack(src)
    scale = tuple(float(v) for v in src.voxel_size) if src.voxel_size else (1.0, 1.0, 1.0)
    return [(image, {"name": p.stem, "scale": scale}, "image")]


def lazy_stack(src: Any) -> Any:
    """A (Z, Y, X) dask array of a :class:`~tomoseg.io.sources.SliceSource`, one chunk per
    slice."""
    import dask.array as da
    from dask import delayed

    def one(z: int) -> Any:
        with src.reader() as read:
            return read(z)

    first = one(0)
    slices = [
        da.from_delayed(delayed(one)(z), shape=first.shape, dtype=first.dtype) for z in range(src.n)
    ]
    return da.stack(slices)
