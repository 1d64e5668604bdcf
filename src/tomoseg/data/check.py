"""``tomoseg check``: read every pair of a dataset and summarise it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tomoseg.data.normalization import count_nonfinite
from tomoseg.data.samples import load_labelled
from tomoseg.data.sources import annotated_fraction, check_ignore_label, dataset_ignore_label
from tomoseg.data.statistics import class_counts
from tomoseg.errors import TomosegError
from tomoseg.io.datasets import Pair, load_dataset


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
    """
    from tomoseg.data.sources import DataSource

    source = DataSource.of(
        data, images=images, masks=masks, image_suffix=image_suffix, mask_suffix=mask_suffix,
        instances=instances,
    )  # fmt: skip
    groups, classes, ignore_label = _groups(source, ignore_label)
    check_ignore_label(ignore_label, len(classes) if classes else None)
    report: dict[str, Any] = {"title": f"data check: {data or images}", "rows": []}
    report.update(per_image=[], notes=[])
    for split, pairs in groups.items():
        k = len(classes) if classes else None
        samples, ids = load_labelled(
            pairs, k, ignore_label=ignore_label, instances=source.instances
        )  # the one label rule, as training reads
        if classes is None:
            report["inferred"] = True
        classes = classes or ids.classes
        report["rows"].append(_split_row(split, samples, classes, ignore_label, report))
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


def _split_row(
    split: str,
    samples: list,
    classes: list[str] | None,
    ignore_label: int | None,
    report: dict[str, Any],
) -> dict[str, str]:
    """One split's row of the summary (its per-image line and notes go into ``report``)."""
    kk = len(classes) if classes else max(_top_id(s.mask, ignore_label) for s in samples) + 1
    counts = class_counts([s.mask for s in samples], kk, ignore_label=ignore_label)
    ann = [annotated_fraction(s.mask, s.image, ignore_label) for s in samples]
    if min(ann) < 1:
        report["per_image"].append(
            f"annotated fraction per image [{split}]: "
            + ", ".join(f"{s.id} {100 * a:.1f}%" for s, a in zip(samples, ann, strict=True))
        )
    shapes = sorted({s.image.shape for s in samples})
    finite = [s.image[np.isfinite(s.image)] for s in samples]
    lo = min((float(f.min()) for f in finite if f.size), default=float("nan"))
    hi = max((float(f.max()) for f in finite if f.size), default=float("nan"))
    bad = sum(count_nonfinite(s.image) for s in samples)
    if bad:
        report["notes"].append(
            f"{split}: {bad} non-finite (NaN or infinite) image pixels, treated as outside "
            "the field of view"
        )
    names = classes or [str(i) for i in range(kk)]
    shape_txt = ", ".join("x".join(map(str, s)) for s in shapes[:3])
    return {
        "split": split,
        "pairs": str(len(samples)),
        "shapes": shape_txt + (" ..." if len(shapes) > 3 else ""),
        "image dtype": ", ".join(sorted({str(s.image.dtype) for s in samples})),
        "intensity range": f"{lo:g}..{hi:g}",
        "class fractions": ", ".join(
            f"{n} {100 * c / counts.sum():.2f}%" for n, c in zip(names, counts, strict=True)
        ),
        "annotated (min/mean per image)": f"{100 * min(ann):.1f}% / {100 * sum(ann) / len(ann):.1f}%",
    }


def _top_id(mask: np.ndarray, ignore_label: int | None) -> int:
    if ignore_label is not None:
        mask = mask[mask != ignore_label]
    return int(mask.max()) if mask.size else 0
