"""``tomoseg evaluate``: segment a split's full-size images and score them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tomoseg.data.context import centre, check_consecutive, context_reader
from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import (
    configure_run,
    decide,
    run_context,
    run_decision,
    segment_logits,
)
from tomoseg.io.datasets import DatasetSpec, load_dataset, split_pairs
from tomoseg.io.images import read_image, read_mask, resolve_class_ids, unique_ids
from tomoseg.io.writers import prepare_output_dir, write_mask
from tomoseg.metrics.segmentation import ScoreSummary, score_image
from tomoseg.reporting.scores import write_score_files
from tomoseg.runtime.checkpoint import LoadedRun, load_run
from tomoseg.runtime.device import resolve_device


def check_run_matches(run: LoadedRun, spec: DatasetSpec) -> None:
    """Refuse a dataset whose classes differ from the run's."""
    if list(spec.classes) != run.classes:
        raise TomosegError(
            f"the run was trained on classes {run.classes} but the data has {spec.classes}"
        )


def evaluate_run(
    run_dir: Path,
    data: Path,
    out: Path,
    split: str = "test",
    device: str = "auto",
    overwrite: bool = False,
    console=None,
    *,
    nonfinite: str = "background",
    runtime: str = "auto",
    tta: object = None,
    postprocess: bool = True,
    which: str | None = None,
):
    """``tomoseg evaluate``: segment a split's full-size images and write ``tomoseg score``'s report.

    The dataset's ``ignore_label`` (partial labels) counts for nothing in the scores. The truths
    are read by the one class-id rule (:func:`~tomoseg.io.images.resolve_class_ids`:
    0/255 binary masks read as 0/1, ids checked against the run's classes); non-finite image
    pixels follow ``nonfinite`` (see :func:`~tomoseg.inference.predictor.segment_batch`).

    The predictions are made with ``tta`` (None: the run's configured TTA) and, with
    ``postprocess``, the run's decision tuned on validation (``decision.json``); the same
    network outputs are also scored without that decision, into ``metrics.json``'s
    ``without_postprocess`` block (identical when the run has no tuned decision). ``inference``
    in ``metrics.json`` records the TTA and the decision applied, and the weights (``which``:
    ``last`` or ``best``; None = the run's configured ``weights``).

    Returns:
        ``(ScoreSummary, seconds per slice)``.
    """
    from tomoseg.evaluation.score import RESULT_NAMES, score_and_write

    spec = load_dataset(data)
    pairs = split_pairs(data, split)
    run = load_run(run_dir, which, device=resolve_device(device))
    check_run_matches(run, spec)
    masks_dir = Path(data) / split / "masks"
    ids = resolve_class_ids(
        {"truth": unique_ids(read_mask(p.mask) for p in pairs)},
        len(run.classes),
        ignore_label=spec.ignore_label,
        where={"truth": f"truth folder {masks_dir}"},
    )
    configure_run(run, runtime=runtime, tta=tta, postprocess=postprocess)
    decision = run_decision(run)
    out = prepare_output_dir(out, overwrite, RESULT_NAMES)
    seconds: list[float] = []
    raw = ScoreSummary(list(run.classes), run.class_of_interest, float(run.config.tolerance))

    k = run_context(run)
    check_consecutive(bool(spec.consecutive), k, f"dataset {data}")
    read = context_reader(lambda i: read_image(pairs[i].image), len(pairs), k)  # 2.5D

    def items() -> Iterator:
        for i, p in enumerate(pairs):
            stacked = read(i)
            image = centre(stacked)
            truth = ids.read("truth", p.mask)
            if image.shape != truth.shape:
                raise TomosegError(
                    f"image {p.image} is {image.shape} but its mask is {truth.shape}"
                )
            t0 = time.perf_counter()
            logits = segment_logits(run, [stacked], nonfinite=nonfinite, names=[str(p.image)])
            labels = decide(logits, [image], decision, probabilities=False)[0][0]
            seconds.append(time.perf_counter() - t0)
            plain = labels
            if decision is not None:
                plain = decide(logits, [image], None, probabilities=False)[0][0]
            raw.images.append(
                score_image(truth, plain, len(run.classes), run.config.tolerance, p.id)
            )
            write_mask(out / "predictions" / f"{p.id}.png", labels)
            yield p.id, truth, labels, image

    summary = score_and_write(
        items(),
        run.classes,
        run.class_of_interest,
        run.config.tolerance,
        out,
        ignore_label=spec.ignore_label,
    )
    summary.without_postprocess = raw
    summary.inference = {
        "weights": run.meta.get("which"),
        "epoch": run.meta.get("epoch"),
        "tta": list(run.tta),  # type: ignore[call-overload]
        "decision": None if decision is None else asdict(decision),
    }
    write_score_files(summary, out)
    return summary, float(np.mean(seconds))
