"""``tomoseg check``: read every pair of a dataset and summarise it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tomoseg.data.normalization import count_nonfinite
from tomoseg.data.samples import Sample, iter_labelled
from tomoseg.data.sources import (
    LABEL_LIKE_REMEDY,
    annotated_fraction,
    check_ignore_label,
    dataset_ignore_label,
)
from tomoseg.data.statistics import class_counts
from tomoseg.errors import TomosegError
from tomoseg.io.datasets import Pair, load_dataset
from tomoseg.io.labels import LabelLikeTally


def check_data(
    data: Path | None = None,
    images: Path | None = None,
    masks: Path | None = None,
    *,
    ignore_label: int | None = None,
    image_suffix: str | None = None,
    mask_suffix: str | None = None,
    instances: str | None = None,
) -> dict[str, Any]:
    """Read every pair of a dataset (or images with their masks) and summarise it, by the
    rules training reads them with (:func:`~tomoseg.data.samples.load_labelled`): what ``check``
    accepts, ``train`` accepts, and the reverse.

    With an ignore label (``dataset.json``'s ``ignore_label``, else ``ignore_label``) or NaN
    image pixels, the summary gives the annotated fraction of the pixels (lowest and mean per
    image) and a line per split lists each image's annotated fraction. A volume pair counts
    one image per z-slice.

    Args:
        data, images, masks, image_suffix, mask_suffix, instances: the data, as
            :meth:`~tomoseg.data.sources.DataSource.of` takes them.
        ignore_label: mask value of unannotated pixels where no ``dataset.json`` declares one.

    Returns:
        ``{"title": str, "classes": [str, ...], "rows": [...], "per_image": [str, ...],
        "notes": [str, ...]}``: the classes (the dataset's, else inferred from the masks' ids),
        one row per split, mapping the columns (``split``, ``pairs``, ``shapes``,
        ``image dtype``, ``intensity range``, ``class fractions``,
        ``annotated (min/mean per image)``) to text.

    Raises:
        TomosegError: neither ``data`` nor both ``images`` and ``masks``; on the first bad file
            or label rule, naming it.

    Warns:
        TomosegWarning: images that look like label images, by training's rule
            (:class:`~tomoseg.io.labels.LabelLikeTally`).
    """
    from tomoseg.data.sources import DataSource

    source = DataSource.of(
        data, images=images, masks=masks, image_suffix=image_suffix, mask_suffix=mask_suffix,
        instances=instances,
    )  # fmt: skip
    groups, classes, ignore_label = _groups(source, ignore_label)
    check_ignore_label(ignore_label, len(classes) if classes else None)
    report: dict[str, Any] = {"title": f"data check: {data or images}", "rows": []}
    report.update(per_image=[], notes=[], inferred=classes is None)
    label_like = LabelLikeTally()  # the rule training warns by
    for split, pairs in groups.items():
        k = len(classes) if classes else None
        ids, samples = iter_labelled(  # the one label rule, as training reads
            pairs, k, ignore_label=ignore_label, instances=source.instances
        )
        classes = classes or ids.classes
        report["rows"].append(_split_row(split, samples, classes, ignore_label, report, label_like))
    label_like.warn(f"{source.name}: the images", LABEL_LIKE_REMEDY)
    report["classes"] = list(classes or [])
    if source.instances == "binarize":
        report["notes"].append("instance labels binarised: every object is class 1")
    return report


def _groups(
    source: Any, ignore_label: int | None
) -> tuple[dict[str, list[Pair]], list[str] | None, int | None]:
    """The pairs per split, the class names (None without dataset.json) and the ignore label
    (dataset.json's wins)."""
    if source.root is None:
        return {"pairs": source.pairs()}, None, ignore_label
    data = source.root
    spec = load_dataset(data)
    declared = dataset_ignore_label(spec, Path(data) / "dataset.json")
    groups = {
        split: source.pairs(split) for split in ("train", "val", "test") if (data / split).is_dir()
    }
    if not groups:
        raise TomosegError(f"dataset {data} has no train/val/test split folders")
    return groups, spec.classes, declared if declared is not None else ignore_label


class _Row:
    """What one split's row sums up, one sample at a time (no sample is kept)."""

    def __init__(self, k: int) -> None:
        self.counts = np.zeros(k, np.int64)
        self.ann: list[tuple[str, float]] = []
        self.shapes: set[tuple[int, ...]] = set()
        self.dtypes: set[str] = set()
        self.lo, self.hi, self.bad = float("inf"), float("-inf"), 0

    def add(self, s: Sample, ignore_label: int | None) -> None:
        self.counts += class_counts([s.mask], len(self.counts), ignore_label=ignore_label)
        self.ann.append((s.id, annotated_fraction(s.mask, s.image, ignore_label)))
        self.shapes.add(s.image.shape)
        self.dtypes.add(str(s.image.dtype))
        finite = s.image[np.isfinite(s.image)] if s.image.dtype.kind == "f" else s.image
        if finite.size:
            self.lo, self.hi = min(self.lo, float(finite.min())), max(self.hi, float(finite.max()))
        self.bad += count_nonfinite(s.image)


def _split_row(
    split: str,
    samples: Iterable[Sample],
    classes: list[str],
    ignore_label: int | None,
    report: dict[str, Any],
    label_like: LabelLikeTally,
) -> dict[str, str]:
    """One split's row of the summary (its per-image line and notes go into ``report``, its
    images into ``label_like``); the samples are read one at a time."""
    row = _Row(len(classes))
    for s in samples:
        row.add(s, ignore_label)
        label_like.add(s.image)
    ann = [a for _, a in row.ann]
    if min(ann) < 1:
        report["per_image"].append(
            f"annotated fraction per image [{split}]: "
            + ", ".join(f"{i} {100 * a:.1f}%" for i, a in row.ann)
        )
    if row.bad:
        report["notes"].append(
            f"{split}: {row.bad} non-finite (NaN or infinite) image pixels, treated as outside "
            "the field of view"
        )
    shapes = sorted(row.shapes)
    shape_txt = ", ".join("x".join(map(str, s)) for s in shapes[:3])
    lo, hi = (row.lo, row.hi) if row.lo <= row.hi else (float("nan"), float("nan"))
    total = row.counts.sum()
    return {
        "split": split,
        "pairs": str(len(ann)),
        "shapes": shape_txt + (" ..." if len(shapes) > 3 else ""),
        "image dtype": ", ".join(sorted(row.dtypes)),
        "intensity range": f"{lo:g}..{hi:g}",
        "class fractions": ", ".join(
            f"{n} {100 * c / total:.2f}%" for n, c in zip(classes, row.counts, strict=True)
        ),
        "annotated (min/mean per image)": f"{100 * min(ann):.1f}% / {100 * sum(ann) / len(ann):.1f}%",
    }
