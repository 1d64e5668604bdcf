"""OME-NGFF 0.4 label volumes written by tomoseg: the one writer and its metadata."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def create_label_array(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    dtype: str,
    chunks: Sequence[int],
    voxel_size: Sequence[float],
    unit: str | None,
    *,
    name: str = "labels",
    classes: Sequence[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Any:
    """Create an empty (zero-filled) OME-NGFF 0.4 label volume: a Zarr v2 group at ``path``
    holding the (Z, Y, X) array at ``0`` (``/``-separated chunk keys, as napari-ome-zarr and
    Fiji read them) with ``multiscales`` and ``image-label`` attributes.

    The one label writer of ``segment_stack`` (class ids) and ``objects`` (object labels); an
    existing group at ``path`` is replaced. Filled slice by slice by the caller.

    Args:
        path: the ``.zarr`` folder.
        shape: (Z, Y, X).
        dtype: ``uint8`` (class ids) or ``uint32`` (object labels), ...
        chunks: (z, y, x) chunk shape.
        voxel_size: (z, y, x) in ``unit``.
        unit: axis unit (e.g. ``micrometer``), or None.
        name: the multiscale's name.
        classes: class names (``image-label`` colours and properties); None for object labels.
        extra: more group attributes (e.g. ``{"tomoseg": {...}}``).

    Returns:
        The ``zarr.Array`` at ``0`` (writable).
    """
    import zarr

    p = Path(path)
    if p.exists():
        shutil.rmtree(p)
    g = zarr.open_group(str(p), mode="w", zarr_format=2)
    arr = g.create_array(
        "0",
        shape=tuple(int(n) for n in shape),
        chunks=tuple(int(n) for n in chunks),
        dtype=dtype,
        fill_value=0,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    write_ngff_attrs(g, name, voxel_size, unit, classes, extra)
    if classes is None:
        g.attrs["image-label"] = {"version": "0.4"}
    return arr


# ----------------------------------------------------------------------------- outputs


def write_ngff_attrs(
    group: Any,
    name: str,
    voxel_size: Sequence[float],
    unit: str | None,
    classes: Sequence[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write OME-NGFF 0.4 ``multiscales`` (one level at path ``0``) and ``image-label`` attrs."""
    axes = [{"name": a, "type": "space"} for a in "zyx"]
    if unit:
        for a in axes:
            a["unit"] = unit
    attrs: dict[str, Any] = {
        "multiscales": [
            {
                "version": "0.4",
                "name": name,
                "axes": axes,
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [float(v) for v in voxel_size]}
                        ],
                    }
                ],
                "type": "none",
                "metadata": {"method": "tomoseg"},
            }
        ],
    }
    if classes is not None:
        attrs["image-label"] = {
            "version": "0.4",
            "colors": [{"label-value": k, "rgba": list(_color(k))} for k in range(1, len(classes))],
            "properties": [{"label-value": k, "class": c} for k, c in enumerate(classes)],
        }
    if extra:
        attrs.update(extra)
    group.attrs.update(attrs)


def _color(k: int) -> tuple[int, int, int, int]:
    palette = [(255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255)]
    r, g, b = palette[(k - 1) % len(palette)]
    return r, g, b, 255
