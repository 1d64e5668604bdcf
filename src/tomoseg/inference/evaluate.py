"""``tomoseg evaluate``: segment a split's full-size images and score them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from tomoseg.data.context import centre, check_consecutive, context_reader
from tomoseg.data.intensity import IntensityTally
from tomoseg.data.sources import DataSource
from tomoseg.errors import TomosegError
from tomoseg.inference.predict import run_identity
from tomoseg.inference.predictor import InferenceSettings, Predictor, as_predictor
from tomoseg.io.datasets import DatasetSpec, Item, ItemReader, expand_pairs, load_dataset
from tomoseg.io.jobs import finish_job_folder, open_job_folder
from tomoseg.io.labels import ClassIds, label_stats, resolve_labels
from tomoseg.io.writers import write_mask, writing
from tomoseg.metrics.segmentation import ScoreSummary, score_image
from tomoseg.reporting.scores import write_score_files
from tomoseg.utils.progress import CancelToken, ProgressCallback, job_progress


def check_run_matches(classes: Sequence[str], spec: DatasetSpec) -> None:
    """Refuse a dataset whose classes differ from the run's ``classes``.

    Raises:
        TomosegError: naming both lists.
    """
    if list(spec.classes) != list(classes):
        raise TomosegError(
            f"the run was trained on classes {list(classes)} but the data has {spec.classes}"
        )


def _split_items(
    source: DataSource, split: str, predictor: Predictor
) -> tuple[DatasetSpec, int | None, list[Item], str]:
    """What ``evaluate`` scores: the dataset's description (the run's classes for
    images/masks), the ignore label, the items (a volume's slices) and the masks' folder."""
    if source.root is not None:
        spec = load_dataset(source.root)
        check_run_matches(predictor.classes, spec)
        masks = str(source.root / split / "masks")
        return spec, spec.ignore_label, expand_pairs(source.pairs(split)), masks
    if source.classes is not None:
        check_run_matches(predictor.classes, DatasetSpec(classes=list(source.classes)))
    spec = DatasetSpec(classes=list(predictor.classes))
    ignore = predictor.run.config.ignore_label
    return spec, ignore, expand_pairs(source.pairs()), str(source.masks)


def _truth_ids(
    refs: list[Item], k: int, ignore: int | None, instances: str, masks: str
) -> ClassIds:
    """The label rule over every truth, one slice at a time."""
    with ItemReader() as reader:
        stats = [label_stats(reader.mask(r), ignore) for r in refs]
    return resolve_labels(
        {"truth": stats}, k, ignore_label=ignore, instances=instances,
        where={"truth": f"truth folder {masks}"},
    )  # fmt: skip


def check_truth(
    source: DataSource, split: str, n_classes: int, ignore_label: int | None
) -> list[Item]:
    """Check, before any network runs, what :func:`evaluate_run` would refuse in the truths it
    scores: the pairing of images with masks (a dataset's ``split``; all of an images/masks
    source) and the label rule over every mask (:func:`~tomoseg.io.labels.resolve_labels`
    against ``n_classes``).

    Returns:
        The items that would be scored.

    Raises:
        TomosegError: as :func:`evaluate_run` for its truths (missing or unpaired files, ids
            out of the classes, instance labels).
    """
    if source.root is not None:
        refs, masks = expand_pairs(source.pairs(split)), str(source.root / split / "masks")
    else:
        refs, masks = expand_pairs(source.pairs()), str(source.masks)
    _truth_ids(refs, n_classes, ignore_label, source.instances, masks)
    return refs


def evaluate_run(
    run: Predictor | str | os.PathLike[str],
    data: str | os.PathLike[str] | DataSource,
    out: str | os.PathLike[str],
    *,
    settings: InferenceSettings | None = None,
    split: str = "test",
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[ScoreSummary, float]:
    """``tomoseg evaluate``: segment a split's full-size images and write ``tomoseg score``'s report.

    Args:
        run: a :class:`~tomoseg.inference.predictor.Predictor`, or a run folder segmented with
            ``settings`` (:class:`~tomoseg.inference.predictor.InferenceSettings`).
        data: the dataset folder, or a :class:`~tomoseg.data.sources.DataSource` (images
            with their masks, folders or volumes: all of them are scored, whatever ``split``;
            the run's ``ignore_label`` applies).
        out: the report folder (``metrics.json``, ``per_image.csv``, ``predictions/``,
            ``overlays/``, ``panels/``).
        split: the split to segment and score.
        overwrite: replace a report already in ``out``.
        progress: receives one ``image`` event per image scored.
        cancel: a token (:class:`threading.Event`) checked after each image.

    A ``kill -9``, a full disk or a cancel leaves no report (``metrics.json`` and
    ``per_image.csv`` are written last, atomically; an earlier report replaced with
    ``overwrite`` is removed first): the same call afterwards starts the job again, without
    ``overwrite`` (:func:`~tomoseg.io.jobs.open_job_folder`).

    The dataset's ``ignore_label`` (partial labels) counts for nothing in the scores, with and
    without the tuned decision alike (one scoring rule for both blocks). The truths are read by
    the one label rule (:func:`~tomoseg.io.labels.resolve_labels`: 0/255 binary masks read as
    0/1, ids from 1 and instance labels refused unless binarised, ids checked against the
    run's classes). A volume pair is scored slice by slice.

    The predictions are made with the Predictor's TTA and decision tuned on validation
    (``decision.json``, unless ``postprocess`` is off); the same network outputs are also scored
    without that decision, into ``metrics.json``'s ``without_postprocess`` block (identical when
    the run has no tuned decision). ``inference`` in ``metrics.json`` records the weights, their
    epoch, the TTA and the decision applied.

    Returns:
        ``(ScoreSummary, seconds per slice)``.

    Raises:
        TomosegError: a dataset of other classes, an image and mask of different shapes, an
            output folder holding results; as :meth:`~tomoseg.inference.predictor.Predictor.logits`.
        Cancelled: ``cancel`` was set.
    """
    from tomoseg.evaluation.score import RESULT_NAMES, score_and_write

    source = DataSource.of(data)
    out = Path(out)
    predictor = as_predictor(run, settings)
    spec, ignore, refs, masks_dir = _split_items(source, split, predictor)
    ids = _truth_ids(refs, len(predictor.classes), ignore, source.instances, masks_dir)
    where = {
        k: None if v is None else str(Path(v).resolve())
        for k, v in (("data", source.root), ("images", source.images), ("masks", source.masks))
    }
    identity = {**run_identity(predictor), **where, "split": split}
    open_job_folder(
        out, "evaluate", identity, overwrite=overwrite, result_names=RESULT_NAMES,
        replaced=RESULT_NAMES,
    )  # fmt: skip
    k = predictor.context
    check_consecutive(bool(spec.consecutive), k, source.name)
    reader = ItemReader()
    read = context_reader(lambda i: reader.image(refs[i]), len(refs), k)  # 2.5D
    tolerance = float(predictor.run.config.tolerance)
    raw = ScoreSummary(predictor.classes, predictor.class_of_interest, tolerance)
    job = job_progress(
        "evaluate", "image", len(refs), progress, cancel, hint="rerun the same call to redo it"
    )
    seconds: list[float] = []
    tally = IntensityTally(predictor.settings.intensity)  # one warning for the split

    def items() -> Iterator:
        job.start()
        for i, p in enumerate(refs):
            stacked = read(i)
            image = centre(stacked)
            truth = ids.apply("truth", reader.mask(p), p.where)
            if image.shape != truth.shape:
                raise TomosegError(
                    f"image {p.pair.image} is {image.shape} but its mask is {truth.shape}"
                )
            t0 = time.perf_counter()
            logits = predictor.logits([stacked], names=[str(p.pair.image)], tally=tally)
            labels = predictor.decide(logits, [image])[0][0]
            seconds.append(time.perf_counter() - t0)
            plain = labels
            if predictor.decision is not None:
                plain = predictor.decide(logits, [image], postprocess=False)[0][0]
            raw.images.append(
                score_image(truth, plain, len(raw.classes), tolerance, p.id, ignore_label=ignore)
            )
            with writing(f"the prediction of {p.id}", out):
                write_mask(out / "predictions" / f"{p.id}.png", labels)
            yield p.id, truth, labels, image
            job.advance(message=f"{p.id}: {seconds[-1]:.2f} s")
        reader.close()

    summary = score_and_write(
        items(),
        predictor.classes,
        predictor.class_of_interest,
        tolerance,
        out,
        ignore_label=ignore,
    )
    summary.without_postprocess = raw
    summary.inference = predictor.record()
    with writing("the evaluation report", out):
        write_score_files(summary, out)
        finish_job_folder(out)
    job.end(f"report: {out}")
    return summary, float(np.mean(seconds))
