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


def load_pairs(pairs: list[Pair], n_classes: int | None) -> list[Sample]:
    """Read and check every pair (see :func:`tomoseg.io.read_pair`)."""
    return [Sample(p.id, *read_pair(p, n_classes)) for p in pairs]


def load_split(root: Path, split: str, spec: DatasetSpec | None = None) -> list[Sample]:
    """Read one split of a dataset folder, checking ids, shapes and class ids.

    Class ids follow the one rule of :func:`tomoseg.io.images.resolve_class_ids` (masks stored
    as 0/255 for two classes are read as 0/1, with a warning; ids must lie in 0..K-1).
    """
    spec = spec or load_dataset(root)
    pairs = split_pairs(root, split)
    samples = load_pairs(pairs, None)
    ids = resolve_class_ids(
        {split: unique_ids(s.mask for s in samples)},
        len(spec.classes),
        where={split: f"masks folder {Path(root) / split / 'masks'}"},
    )
    return [
        Sample(s.id, s.image, ids.apply(split, s.mask, p.mask))
        for s, p in zip(samples, pairs, strict=True)
    ]
