"""``segment_stack(uncertainty=True)``: the per-pixel uncertainty of the class decision as a second
OME-Zarr volume beside the labels, and a score per slice in ``stack.json``.

The uncertainty is the normalised entropy of the softmax the labels are decided from
(:func:`~tomoseg.inference.predictor.uncertainty_of`), computed in the same forward pass: a
float32 (Z, Y, X) volume ``uncertainty.zarr`` (chunked as the labels, voxel size as the labels).
A slice's score (its mean uncertainty) is written to ``uncertainty/<index>`` before the slice's
progress marker, so every finished slice of a resumed job has one; :func:`read_scores` collects
them for ``stack.json`` and ``tomoseg suggest``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tomoseg.io.ome_zarr import create_label_array
from tomoseg.io.sources import SliceSource
from tomoseg.io.writers import write_text

UNCERTAINTY_NAME = "uncertainty.zarr"
SCORES_DIR = "uncertainty"
MEASURE = "entropy"


def create_volume(out: Path, src: SliceSource, chunks: tuple[int, ...], voxel: Any, unit: Any):
    """An empty float32 (Z, Y, X) OME-Zarr volume ``out/uncertainty.zarr`` (replacing one)."""
    create_label_array(
        out / UNCERTAINTY_NAME,
        (src.n, *src.shape),
        "float32",
        chunks,
        voxel,
        unit,
        name=f"{src.name} uncertainty ({MEASURE}, 0-1)",
        extra={"tomoseg": {"uncertainty": MEASURE}},
    )
    (out / SCORES_DIR).mkdir(exist_ok=True)


def volume_ok(out: Path, src: SliceSource) -> bool:
    """Whether ``out`` holds this stack's uncertainty volume."""
    try:
        import zarr

        a = zarr.open_array(str(out / UNCERTAINTY_NAME / "0"), mode="r")
    except Exception:
        return False
    return tuple(a.shape) == (src.n, *src.shape) and a.dtype == np.float32


class UncertaintyWriter:
    """Writes slice ``i``'s uncertainty map and its score (call before the progress marker)."""

    def __init__(self, out: Path):
        import zarr

        self.out = out
        self.array = zarr.open_array(str(out / UNCERTAINTY_NAME / "0"), mode="r+")

    def write(self, i: int, uncertainty: np.ndarray) -> None:
        self.array[i] = uncertainty.astype(np.float32, copy=False)
        write_text(self.out / SCORES_DIR / f"{i:06d}", f"{float(uncertainty.mean()):.6f}\n")


def read_scores(out: Path, n: int) -> list[float | None]:
    """The per-slice scores written so far (None where a slice has none)."""
    scores: list[float | None] = [None] * n
    folder = Path(out) / SCORES_DIR
    for f in folder.iterdir() if folder.is_dir() else []:
        if f.name.isdigit() and int(f.name) < n:
            try:
                scores[int(f.name)] = float(f.read_text().strip())
            except (OSError, ValueError):
                continue
    return scores
