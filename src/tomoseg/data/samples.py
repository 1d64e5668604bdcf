"""Datasets in memory: full-size images with their masks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tomoseg.errors import TomosegError
from tomoseg.io.datasets import DatasetSpec, Pair, load_dataset, read_pair, split_pairs


@dataclass
class Sample:
    """One full-size image with its mask."""

    id: str
    image: np.ndarray
    mask: np.ndarray


def load_pairs(
    pairs: list[Pair], n_classes: int | None, *, ignore_label: int | None = None
) -> list[Sample]:
    """Read and check every pair (see :func:`tomoseg.io.read_pair`).

    Args:
        pairs: image/mask file pairs.
        n_classes: K; mask values must lie in ``0..K-1`` (None: not checked).
        ignore_label: a further allowed mask value marking unannotated pixels.

    Raises:
        TomosegError: unreadable files, shapes that differ, mask values out of range.
    """
    if ignore_label is None or n_classes is None:
        return [Sample(p.id, *read_pair(p, n_classes)) for p in pairs]
    out = []
    for p in pairs:
        img, mask = read_pair(p, None)
        ids = mask[mask != ignore_label]
        if ids.size and int(ids.max()) >= n_classes:
            raise TomosegError(
                f"mask values {int(ids.min())}..{int(ids.max())} outside 0..{n_classes - 1} "
                f"(and the ignore label {ignore_label}) in {p.mask}"
            )
        out.append(Sample(p.id, img, mask))
    return out


def load_split(root: Path, split: str, spec: DatasetSpec | None = None) -> list[Sample]:
    """Read one split of a dataset folder, checking ids, shapes and class ids (the dataset's
    ``ignore_label``, if it declares one, is allowed in masks)."""
    spec = spec or load_dataset(root)
    ignore = (spec.model_extra or {}).get("ignore_label")
    ignore = ignore if isinstance(ignore, int) and not isinstance(ignore, bool) else None
    return load_pairs(split_pairs(root, split), len(spec.classes), ignore_label=ignore)
