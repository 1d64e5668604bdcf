"""Datasets in memory: loading splits, checking them, class statistics.

(The Lightning DataModule that feeds training lives in :mod:`tomoseg.train`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tomoseg.errors import TomosegError
from tomoseg.io import DatasetSpec, Pair, load_dataset, pair_files, read_pair, split_pairs


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


def class_counts(masks: list[np.ndarray], n_classes: int) -> np.ndarray:
    """Pixels of each class summed over masks: (K,) int64."""
    total = np.zeros(n_classes, np.int64)
    for m in masks:
        total += np.bincount(m.ravel(), minlength=n_classes)[:n_classes]
    return total


def check_data(console, data: Path | None, images: Path | None, masks: Path | None) -> None:
    """Read every pair of a dataset (or an images/masks folder pair) and print a summary table.

    Raises:
        TomosegError: on the first bad file, naming it.
    """
    from rich.table import Table

    if data is None and (images is None or masks is None):
        raise TomosegError("give --data DIR, or both --images DIR and --masks DIR")
    groups: dict[str, list[Pair]] = {}
    classes: list[str] | None = None
    if data is not None:
        spec = load_dataset(data)
        classes = spec.classes
        for split in ("train", "val", "test"):
            if (Path(data) / split).is_dir():
                groups[split] = split_pairs(data, split)
        if not groups:
            raise TomosegError(f"dataset {data} has no train/val/test split folders")
    else:
        groups["pairs"] = pair_files(images, masks)  # type: ignore[arg-type]
    k = len(classes) if classes else None
    table = Table(title=f"data check: {data or images}")
    for col in ("split", "pairs", "shapes", "image dtype", "intensity range", "class fractions"):
        table.add_column(col)
    for split, pairs in groups.items():
        samples = load_pairs(pairs, k)
        kk = k or max(int(s.mask.max()) for s in samples) + 1
        counts = class_counts([s.mask for s in samples], kk)
        shapes = sorted({s.image.shape for s in samples})
        dtypes = sorted({str(s.image.dtype) for s in samples})
        lo = min(float(s.image.min()) for s in samples)
        hi = max(float(s.image.max()) for s in samples)
        names = classes or [str(i) for i in range(kk)]
        frac = ", ".join(
            f"{n} {100 * c / counts.sum():.2f}%" for n, c in zip(names, counts, strict=True)
        )
        shape_txt = ", ".join("x".join(map(str, s)) for s in shapes[:3]) + (
            " ..." if len(shapes) > 3 else ""
        )
        table.add_row(
            split, str(len(samples)), shape_txt, ", ".join(dtypes), f"{lo:g}..{hi:g}", frac
        )
    console.print(table)
    console.print("all pairs read and checked: ok")
