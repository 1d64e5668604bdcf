"""Score predicted masks against ground truth and write the score report.

This is the one scoring path of tomoseg: ``tomoseg score`` (masks made anywhere) and
``tomoseg evaluate`` (a trained network's predictions) both end in :func:`score_and_write`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.io.datasets import Item, ItemReader, expand_pairs, load_dataset, pair_files
from tomoseg.io.images import as_mask, list_images, read_image, read_mask
from tomoseg.io.jobs import finish_job_folder, open_job_folder
from tomoseg.io.labels import LabelStats, label_stats, resolve_labels
from tomoseg.io.writers import writing
from tomoseg.metrics.segmentation import ScoreSummary, score_image
from tomoseg.reporting.scores import class_index, write_overlays, write_score_files
from tomoseg.utils.format import first_line
from tomoseg.utils.progress import CancelToken, ProgressCallback, job_progress

RESULT_NAMES = ("metrics.json", "per_image.csv")

ScoreItem = tuple[str, np.ndarray, np.ndarray, "np.ndarray | None"]


def score_and_write(
    items: Iterable[ScoreItem],
    classes: list[str],
    class_of_interest: str | None,
    tolerance: float,
    out: Path,
    *,
    ignore_label: int | None = None,
) -> ScoreSummary:
    """Score (id, truth, prediction, image-or-None) items one at a time and write the report.

    Memory stays bounded by one item: each overlay is written as soon as its image is scored.

    Args:
        items: iterable of ``(id, truth, pred, image)``; ``image`` may be None.
        classes: class names (K = len(classes)).
        class_of_interest: name used for the overlays and the printed table (last class if None).
        tolerance: BF1 tolerance in pixels (>= 0).
        out: folder receiving ``metrics.json``, ``per_image.csv``, ``overlays/``, ``panels/``.
        ignore_label: truth value of unannotated pixels; they count for nothing (see
            :mod:`tomoseg.metrics.segmentation`).

    Returns:
        The :class:`ScoreSummary`.
    """
    if tolerance < 0:
        raise TomosegError(f"tolerance={tolerance!r}: must be >= 0")
    k = class_index(classes, class_of_interest)
    summary = ScoreSummary(list(classes), classes[k], float(tolerance))
    for image_id, truth, pred, image in items:
        summary.images.append(
            score_image(truth, pred, len(classes), tolerance, image_id, ignore_label=ignore_label)
        )
        try:  # optional: a failing picture never costs the scores
            write_overlays(out, image_id, truth, pred, k, classes, image)
        except Exception as exc:
            warnings.warn(
                f"no overlay or panel for {image_id}: {first_line(exc)}",
                TomosegWarning,
                stacklevel=2,
            )
    if not summary.images:
        raise TomosegError("nothing to score")
    write_score_files(summary, out)
    return summary


def find_dataset_classes(folder: Path, levels: int = 3) -> tuple[list[str], str | None] | None:
    """Classes from a ``dataset.json`` in ``folder`` or up to ``levels`` parents, if any."""
    for d in [folder, *list(folder.resolve().parents)[:levels]]:
        if (d / "dataset.json").is_file():
            spec = load_dataset(d)
            return spec.classes, spec.class_of_interest
    return None


def find_dataset_ignore_label(folder: Path, levels: int = 3) -> int | None:
    """``ignore_label`` of a ``dataset.json`` in ``folder`` or up to ``levels`` parents, if any."""
    for d in [folder, *list(folder.resolve().parents)[:levels]]:
        if (d / "dataset.json").is_file():
            return load_dataset(d).ignore_label
    return None


def score_folders(
    pred: Path,
    truth: Path,
    out: Path,
    classes: list[str] | None = None,
    class_of_interest: str | None = None,
    tolerance: float = 2.0,
    images: Path | None = None,
    overwrite: bool = False,
    *,
    ignore_label: int | None = None,
    instances: str = "error",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ScoreSummary:
    """Score every prediction in a folder against the truth of the same file stem.

    Args:
        pred: predicted masks (class ids).
        truth: true masks (class ids).
        out: report folder (refused if it holds results, unless ``overwrite``).
        classes: class names; if None, taken from a ``dataset.json`` above ``truth``, else
            ``"0".."K-1"`` with K = largest id in the truths and predictions together + 1 (at
            least 2). A folder of binary masks stored as 0/255 is read as 0/1 (with a warning);
            see :func:`tomoseg.io.labels.resolve_labels` (ids from 1 against ids from 0, and
            instance labels, are refused).
        class_of_interest: for overlays and the table; default the dataset's, else the last class.
        tolerance: BF1 tolerance in pixels.
        images: optional raw images (same stems) shown in the report panels.
        overwrite: replace an earlier report.
        ignore_label: truth value of unannotated pixels (not a class id), left out of every
            metric; default the ``ignore_label`` of a ``dataset.json`` above ``truth``.
        instances: ``"binarize"`` reads truths (and predictions) that look like instance
            labels as 0 / 1; ``"error"`` refuses them.
        progress: receives one ``image`` event per image (or slice of a volume) scored.
        cancel: a token (:class:`threading.Event`) checked after each image.

    A predicted label volume and its true volume (multi-page TIFF, Zarr, ...) are scored slice
    by slice (ids ``name_z0000``, ...), one slice in memory at a time.

    A ``kill -9``, a full disk or a cancel leaves no report (``metrics.json`` and
    ``per_image.csv`` are written last, atomically; an earlier report replaced with
    ``overwrite`` is removed first): the same call afterwards starts again, without
    ``overwrite`` (:func:`~tomoseg.io.jobs.open_job_folder`).

    Returns:
        The :class:`ScoreSummary` (also written to ``out``).

    Raises:
        TomosegError: no pairs, unknown classes, masks of different shapes, an output folder
            holding results.
        Cancelled: ``cancel`` was set.
    """
    if tolerance < 0:
        raise TomosegError(f"tolerance={tolerance!r}: must be >= 0")
    pairs = pair_files(pred, truth, what="prediction")
    image_files = list_images(images) if images is not None else {}
    if images is not None:
        missing = [p.id for p in pairs if p.id not in image_files]
        if missing:
            raise TomosegError(f"no image '{missing[0]}.*' in {images}")
    if ignore_label is None:
        ignore_label = find_dataset_ignore_label(Path(truth))
    if classes is None:
        found = find_dataset_classes(Path(truth))
        if found is not None:
            classes, default_coi = found
            class_of_interest = class_of_interest or default_coi
    # the ids of truths and predictions together decide K, 0/255 storage, ids from 1 and
    # instance labels (one pass, one slice at a time)
    refs = expand_pairs(pairs)
    stats: dict[str, list[LabelStats]] = {"truth": [], "prediction": []}
    with ItemReader() as reader:
        for r in refs:
            stats["truth"].append(label_stats(reader.mask(r), ignore_label))
            stats["prediction"].append(label_stats(_prediction(reader, r)))
    ids = resolve_labels(
        stats,
        len(classes) if classes is not None else None,
        ignore_label=ignore_label,
        instances=instances,
        where={"truth": f"truth folder {truth}", "prediction": f"prediction folder {pred}"},
    )
    if classes is None:
        classes = ids.classes
    class_index(classes, class_of_interest)  # unknown names fail before anything is written
    identity = {
        "pred": str(Path(pred).resolve()),
        "truth": str(Path(truth).resolve()),
        "images": None if images is None else str(Path(images).resolve()),
        "classes": list(classes),
        "class_of_interest": class_of_interest,
        "tolerance": float(tolerance),
        "ignore_label": ignore_label,
        "instances": instances,
    }
    open_job_folder(
        out, "score", identity, overwrite=overwrite, result_names=RESULT_NAMES,
        replaced=RESULT_NAMES,
    )  # fmt: skip
    job = job_progress(
        "score", "image", len(refs), progress, cancel, hint="rerun the same call to redo it"
    )

    def items() -> Iterator[ScoreItem]:
        job.start()
        with ItemReader() as reader:
            for r in refs:
                truth = ids.apply("truth", reader.mask(r), r.where)
                pred = ids.apply("prediction", _prediction(reader, r), r.pair.image)
                if truth.shape != pred.shape:
                    raise TomosegError(
                        f"prediction {r.pair.image} is {pred.shape} but its truth {r.where} "
                        f"is {truth.shape}"
                    )
                image = read_image(image_files[r.id]) if r.id in image_files else None
                yield r.id, truth, pred, image
                job.advance()

    with writing("the score report", out):
        summary = score_and_write(
            items(), classes, class_of_interest, tolerance, Path(out), ignore_label=ignore_label
        )
        finish_job_folder(out)
    job.end(f"report: {out}")
    return summary


def _prediction(reader: ItemReader, ref: Item) -> np.ndarray:
    """The predicted labels of an item (the pair's first file), checked as a mask."""
    if ref.z is None:
        return read_mask(ref.pair.image)
    return as_mask(reader.image(ref), f"slice {ref.z} of {ref.pair.image}")


def _max_id(mask: np.ndarray, ignore_label: int | None) -> int:
    if ignore_label is not None:
        mask = mask[mask != ignore_label]
    return int(mask.max()) if mask.size else 0
