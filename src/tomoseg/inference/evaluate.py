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
from tomoseg.io.images import read_image, read_mask
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
    runtime: str = "auto",
):
    """``tomoseg evaluate``: segment a split's full-size images and write ``tomoseg score``'s report.

    Returns:
        ``(ScoreSummary, seconds per slice)``.
    """
    from tomoseg.evaluation.score import RESULT_NAMES, score_and_write

    spec = load_dataset(data)
    pairs = split_pairs(data, split)
    run = load_run(run_dir, device=resolve_device(device))
    check_run_matches(run, spec)
    run.runtime = resolve_runtime(runtime, next(run.model.parameters()).device)
    out = prepare_output_dir(out, overwrite, RESULT_NAMES)
    seconds: list[float] = []

    def items() -> Iterator:
        for p in pairs:
            image = read_image(p.image)
            truth = read_mask(p.mask, len(run.classes))
            if image.shape != truth.shape:
                raise TomosegError(
                    f"image {p.image} is {image.shape} but its mask is {truth.shape}"
                )
            t0 = time.perf_counter()
            labels, _ = segment(run, image, probabilities=False)
            seconds.append(time.perf_counter() - t0)
            write_mask(out / "predictions" / f"{p.id}.png", labels)
            yield p.id, truth, labels, image

    summary = score_and_write(
        items(), run.classes, run.class_of_interest, run.config.tolerance, out
    )
    return summary, float(np.mean(seconds))
