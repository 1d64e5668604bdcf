"""``tomoseg evaluate``: segment a split's full-size images and score them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from tomoseg.data.context import centre, check_consecutive, context_reader
from tomoseg.data.intensity import IntensityTally
from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import InferenceSettings, Predictor, as_predictor
from tomoseg.io.datasets import DatasetSpec, load_dataset, split_pairs
from tomoseg.io.images import read_image, read_mask, resolve_class_ids, unique_ids
from tomoseg.io.writers import prepare_output_dir, write_mask
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


def evaluate_run(
    run: Predictor | str | os.PathLike[str],
    data: str | os.PathLike[str],
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
        data: the dataset folder.
        out: the report folder (``metrics.json``, ``per_image.csv``, ``predictions/``,
            ``overlays/``, ``panels/``).
        split: the split to segment and score.
        overwrite: replace a report already in ``out``.
        progress: receives one ``image`` event per image scored.
        cancel: a token (:class:`threading.Event`) checked after each image; nothing of the
            report is written before the end, so a rerun starts again.

    The dataset's ``ignore_label`` (partial labels) counts for nothing in the scores, with and
    without the tuned decision alike (one scoring rule for both blocks). The truths are read by
    the one class-id rule (:func:`~tomoseg.io.images.resolve_class_ids`: 0/255 binary masks
    read as 0/1, ids checked against the run's classes).

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

    data, out = Path(data), Path(out)
    spec = load_dataset(data)
    pairs = split_pairs(data, split)
    predictor = as_predictor(run, settings)
    check_run_matches(predictor.classes, spec)
    masks_dir = data / split / "masks"
    ids = resolve_class_ids(
        {"truth": unique_ids(read_mask(p.mask) for p in pairs)},
        len(predictor.classes),
        ignore_label=spec.ignore_label,
        where={"truth": f"truth folder {masks_dir}"},
    )
    out = prepare_output_dir(out, overwrite, RESULT_NAMES)
    k = predictor.context
    check_consecutive(bool(spec.consecutive), k, f"dataset {data}")
    read = context_reader(lambda i: read_image(pairs[i].image), len(pairs), k)  # 2.5D
    tolerance = float(predictor.run.config.tolerance)
    raw = ScoreSummary(predictor.classes, predictor.class_of_interest, tolerance)
    job = job_progress(
        "evaluate", "image", len(pairs), progress, cancel, hint="rerun the same call to redo it"
    )
    seconds: list[float] = []
    tally = IntensityTally(predictor.settings.intensity)  # one warning for the split

    def items() -> Iterator:
        job.start()
        for i, p in enumerate(pairs):
            stacked = read(i)
            image = centre(stacked)
            truth = ids.read("truth", p.mask)
            if image.shape != truth.shape:
                raise TomosegError(
                    f"image {p.image} is {image.shape} but its mask is {truth.shape}"
                )
            t0 = time.perf_counter()
            logits = predictor.logits([stacked], names=[str(p.image)], tally=tally)
            labels = predictor.decide(logits, [image])[0][0]
            seconds.append(time.perf_counter() - t0)
            plain = labels
            if predictor.decision is not None:
                plain = predictor.decide(logits, [image], postprocess=False)[0][0]
            raw.images.append(
                score_image(
                    truth, plain, len(raw.classes), tolerance, p.id, ignore_label=spec.ignore_label
                )
            )
            write_mask(out / "predictions" / f"{p.id}.png", labels)
            yield p.id, truth, labels, image
            job.advance(message=f"{p.id}: {seconds[-1]:.2f} s")

    summary = score_and_write(
        items(),
        predictor.classes,
        predictor.class_of_interest,
        tolerance,
        out,
        ignore_label=spec.ignore_label,
    )
    summary.without_postprocess = raw
    summary.inference = predictor.record()
    write_score_files(summary, out)
    job.end(f"report: {out}")
    return summary, float(np.mean(seconds))
