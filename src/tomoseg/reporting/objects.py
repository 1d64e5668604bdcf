"""Figures of 3D objects: the volume histogram and the 3D preview of ``analyze_objects``."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tomoseg.io.writers import atomic_write
from tomoseg.utils.format import plural


def volume_histogram(volumes: np.ndarray, unit: str | None, path: Path, what: str) -> None:
    """A PNG histogram of object volumes (``analyze_objects``' ``volume_histogram.png``).

    Args:
        volumes: (N,) float physical volumes of the objects.
        unit: the voxel size's unit (the axis reads ``unit^3``); ``voxel`` for volumes in voxels
            (no voxel size known); None for a voxel size without a unit.
        path: the PNG to write (atomically).
        what: the class analysed, for the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if len(volumes):
        ax.hist(volumes, bins=min(50, max(5, len(volumes) // 3)), color="#3a7bd5")
    if unit == "voxel":
        ax.set_xlabel("volume (voxels)")
    else:
        ax.set_xlabel(f"volume ({unit}^3)" if unit else "volume (voxels x voxel size)")
    ax.set_ylabel("objects")
    ax.set_title(f"{what}: {plural(len(volumes), 'object')}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, lambda t: t.write_bytes(buf.getvalue()))


def mesh_preview(meshes: Sequence[tuple[int, Any]], path: Path, title: str) -> None:
    """A PNG 3D view of surface meshes (``analyze_objects``' ``preview.png``).

    Args:
        meshes: ``(label, mesh)`` pairs; a mesh has ``vertices`` (V, 3) float (x, y, z) and
            ``faces`` (F, 3) int (a ``trimesh.Trimesh``).
        path: the PNG to write (atomically).
        title: the figure's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    fig = plt.figure(figsize=(6, 6), dpi=100)
    ax = fig.add_subplot(projection="3d")
    cmap = plt.get_cmap("tab20")
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for i, (_, m) in enumerate(meshes):
        tri = m.vertices[m.faces]
        ax.add_collection3d(
            Poly3DCollection(tri, facecolor=cmap(i % 20), edgecolor="none", alpha=0.9)
        )
        lo, hi = np.minimum(lo, m.vertices.min(0)), np.maximum(hi, m.vertices.max(0))
    if meshes:
        c, r = (lo + hi) / 2, float((hi - lo).max()) / 2 or 1.0
        ax.set_xlim(c[0] - r, c[0] + r)
        ax.set_ylim(c[1] - r, c[1] + r)
        ax.set_zlim(c[2] - r, c[2] + r)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("z")
    ax.set_title(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, lambda t: t.write_bytes(buf.getvalue()))
