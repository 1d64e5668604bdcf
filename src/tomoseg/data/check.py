"""``tomoseg check``: read every pair of a dataset and summarise it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tomoseg.data.normalization import count_nonfinite
from tomoseg.data.samples import load_pairs
from tomoseg.data.sources import annotated_fraction, check_ignore_label, dataset_ignore_label
from tomoseg.data.statistics import class_counts
from tomoseg.errors import TomosegError
from tomoseg.io.datasets import Pair, load_dataset, pair_files, split_pairs


def check_data(
    console,
    data: Path | None,
    images: Path | None,
    masks: Path | None,
    *,
    ignore_label: int | None = None,
) -> None:
    """Read every pair of a dataset (or an images/masks folder pair) and print a summary table.

    With an ignore label (``dataset.json``'s ``ignore_label``, else ``ignore_label``) or NaN
    image pixels, the table gives the annotated fraction of the pixels (lowest and mean per
    image) and a line per split lists each image's annotated fraction.

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
        declared = dataset_ignore_label(spec, Path(data) / "dataset.json")
        if declared is not None:
            ignore_label = declared
        for split in ("train", "val", "test"):
            if (Path(data) / split).is_dir():
                groups[split] = split_pairs(data, split)
        if not groups:
            raise TomosegError(f"dataset {data} has no train/val/test split folders")
    else:
        groups["pairs"] = pair_files(images, masks)  # type: ignore[arg-type]
    k = len(classes) if classes else None
    check_ignore_label(ignore_label, k)
    notes: list[str] = []
    table = Table(title=f"data check: {data or images}")
    cols = ("split", "pairs", "shapes", "image dtype", "intensity range", "class fractions")
    for col in (*cols, "annotated (min/mean per image)"):
        table.add_column(col)
    per_image: list[str] = []
    for split, pairs in groups.items():
        samples = load_pairs(pairs, k, ignore_label=ignore_label)  # the one class-id rule
        kk = k or max(_top_id(s.mask, ignore_label) for s in samples) + 1
        counts = class_counts([s.mask for s in samples], kk, ignore_label=ignore_label)
        ann = [annotated_fraction(s.mask, s.image, ignore_label) for s in samples]
        if min(ann) < 1:
            per_image.append(
                f"annotated fraction per image [{split}]: "
                + ", ".join(f"{s.id} {100 * a:.1f}%" for s, a in zip(samples, ann, strict=True))
            )
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
            split,
            str(len(samples)),
            shape_txt,
            ", ".join(dtypes),
            f"{lo:g}..{hi:g}",
            frac,
            f"{100 * min(ann):.1f}% / {100 * sum(ann) / len(ann):.1f}%",
        )
    console.print(table)
    for line in per_image:
        console.print(line, markup=False)
    for note in notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    console.print("all pairs read and checked: ok")


def _top_id(mask: np.ndarray, ignore_label: int | None) -> int:
    if ignore_label is not None:
        mask = mask[mask != ignore_label]
    return int(mask.max()) if mask.size else 0
