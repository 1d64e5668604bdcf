"""``tomoseg evaluate``: segment a split's full-size images and score them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import segment
from tomoseg.inference.runtimes import resolve_runtime
from tomoseg.io.datasets import DatasetSpec, load_dataset, split_pairs
from tomoseg.io.images import read_image, read_mask, resolve_class_ids, unique_ids
from tomoseg.io.writers import prepare_output_dir, write_mask
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
):
    """``tomoseg evaluate``: segment a split's full-size images and write ``tomoseg score``'s report.

    The dataset's ``ignore_label`` (partial labels) counts for nothing in the scores. The truths
    are read by the one class-id rule (:func:`~tomoseg.io.images.resolve_class_ids`:
    0/255 binary masks read as 0/1, ids checked against the run's classes); non-finite image
    pixels follow ``nonfinite`` (see :func:`~tomoseg.inference.predictor.segment_batch`).

    Returns:
        ``(ScoreSummary, seconds per slice)``.
    """
    from tomoseg.evaluation.score import RESULT_NAMES, score_and_write

    spec = load_dataset(data)
    pairs = split_pairs(data, split)
    run = load_run(run_dir, device=resolve_device(device))
    check_run_matches(run, spec)
    masks_dir = Path(data) / split / "masks"
    ids = resolve_class_ids(
        {"truth": unique_ids(read_mask(p.mask) for p in pairs)},
        len(run.classes),
        ignore_label=spec.ignore_label,
        where={"truth": f"truth folder {masks_dir}"},
    )
    run.runtime = resolve_runtime(runtime, next(run.model.parameters()).device)
    out = prepare_output_dir(out, overwrite, RESULT_NAMES)
    seconds: list[float] = []

    def items() -> Iterator:
        for p in pairs:
            image = read_image(p.image)
            truth = ids.read("truth", p.mask)
            if image.shape != truth.shape:
                raise TomosegError(
                    f"image {p.image} is {image.shape} but its mask is {truth.shape}"
                )
            t0 = time.perf_counter()
            labels, _ = segment(
                run, image, probabilities=False, nonfinite=nonfinite, names=[str(p.image)]
            )
            seconds.append(time.perf_counter() - t0)
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
    return summary, float(np.mean(seconds))
