"""Datasets in memory: full-size images with their masks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tomoseg.io.datasets import DatasetSpec, Pair, load_dataset, read_pair, split_pairs


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
    """Read one split of a dataset folder, checking ids, shapes and class ids."""
    spec = spec or load_dataset(root)
    return load_pairs(split_pairs(root, split), len(spec.classes))
