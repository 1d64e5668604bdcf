"""``tomoseg check``: read every pair of a dataset and summarise it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tomoseg.data.normalization import count_nonfinite
from tomoseg.data.samples import load_pairs
from tomoseg.data.statistics import class_counts
from tomoseg.errors import TomosegError
from tomoseg.io.datasets import Pair, load_dataset, pair_files, split_pairs
from tomoseg.io.images import resolve_class_ids, unique_ids


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
    notes: list[str] = []
    table = Table(title=f"data check: {data or images}")
    for col in ("split", "pairs", "shapes", "image dtype", "intensity range", "class fractions"):
        table.add_column(col)
    for split, pairs in groups.items():
        samples = load_pairs(pairs, None)
        folder = pairs[0].mask.parent
        ids = resolve_class_ids(  # the one class-id rule (0/255 binary masks read as 0/1)
            {split: unique_ids(s.mask for s in samples)}, k, where={split: f"masks folder {folder}"}
        )
        kk = ids.n_classes
        masks = [ids.apply(split, s.mask, p.mask) for s, p in zip(samples, pairs, strict=True)]
        counts = class_counts(masks, kk)
        shapes = sorted({s.image.shape for s in samples})
        dtypes = sorted({str(s.image.dtype) for s in samples})
        finite = [s.image[np.isfinite(s.image)] for s in samples]
        lo = min((float(f.min()) for f in finite if f.size), default=float("nan"))
        hi = max((float(f.max()) for f in finite if f.size), default=float("nan"))
        bad = sum(count_nonfinite(s.image) for s in samples)
        if bad:
            notes.append(
                f"{split}: {bad} non-finite (NaN or infinite) image pixels, treated as outside "
                "the field of view"
            )
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
    for note in notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    console.print("all pairs read and checked: ok")
