"""Datasets in memory: full-size images with their masks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tomoseg.io.datasets import DatasetSpec, Pair, load_dataset, read_pair, split_pairs
from tomoseg.io.images import resolve_class_ids, unique_ids


@dataclass
class Sample:
    """One full-size image with its mask."""

    id: str
    image: np.ndarray
    mask: np.ndarray


def load_pairs(
    pairs: list[Pair], n_classes: int | None, *, ignore_label: int | None = None
) -> list[Sample]:
    """Read and check every pair (see :func:`tomoseg.io.datasets.read_pair`), with the one
    class-id rule of :func:`tomoseg.io.images.resolve_class_ids` over all the masks together
    (masks stored as 0/255 for two classes are read as 0/1, with a warning).

    Args:
        pairs: image/mask file pairs.
        n_classes: K; mask values must lie in ``0..K-1`` (None: K from the masks' ids).
        ignore_label: a further allowed mask value marking unannotated pixels.

    Raises:
        TomosegError: unreadable files, shapes that differ, mask values out of range.
    """
    samples = [Sample(p.id, *read_pair(p, None)) for p in pairs]
    if not samples:
        return samples
    folder = f"masks folder {pairs[0].mask.parent}"
    ids = resolve_class_ids(
        {"masks": unique_ids(s.mask for s in samples)},
        n_classes,
        ignore_label=ignore_label,
        where={"masks": folder},
    )
    return [
        Sample(s.id, s.image, ids.apply("masks", s.mask, p.mask))
        for s, p in zip(samples, pairs, strict=True)
    ]


def load_split(root: Path, split: str, spec: DatasetSpec | None = None) -> list[Sample]:
    """Read one split of a dataset folder, checking ids, shapes and class ids (the dataset's
    ``ignore_label``, if it declares one, is allowed in masks)."""
    spec = spec or load_dataset(root)
    return load_pairs(split_pairs(root, split), len(spec.classes), ignore_label=spec.ignore_label)
