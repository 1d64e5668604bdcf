"""OME-NGFF 0.4 metadata for label volumes written by tomoseg."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
