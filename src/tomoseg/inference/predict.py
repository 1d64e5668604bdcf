"""``tomoseg predict``: segment image files into mask files."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tomoseg.data.context import centre, context_reader
from tomoseg.data.intensity import IntensityTally
from tomoseg.data.normalization import count_nonfinite
from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import InferenceSettings, Predictor, as_predictor
from tomoseg.io.images import IMAGE_SUFFIXES, list_images, read_image
from tomoseg.io.jobs import file_sha256, finish_job_folder, open_job_folder
from tomoseg.io.writers import write_image, write_mask, writing
from tomoseg.utils.progress import CancelToken, ProgressCallback, job_progress


def _inputs(paths: Sequence[Path]) -> list[tuple[str, Path]]:
    """Expand files and folders into (id, path) in natural order; ids must be unique."""
    out: list[tuple[str, Path]] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += list(list_images(p).items())
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise TomosegError(f"not an image file ({', '.join(IMAGE_SUFFIXES)}): {p}")
            out.append((p.stem, p))
        else:
            raise TomosegError(f"file not found: {p}")
    ids = [i for i, _ in out]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise TomosegError(f"two inputs share the id '{sorted(dup)[0]}'")
    return out


def run_identity(predictor: Predictor) -> dict[str, object]:
    """What decides a Predictor's labels, for a job record: the weights' SHA-256, the TTA, the
    tuned decision applied, the non-finite and the intensity rules."""
    wfile = predictor.run.weights_file
    record = predictor.record()
    return {
        "model": file_sha256(wfile) if wfile is not None else None,
        "tta": record["tta"],
        "decision": record["decision"],
        "nonfinite": predictor.settings.nonfinite,
        "intensity": predictor.settings.intensity,
    }


def predict_paths(
    run: Predictor | str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    settings: InferenceSettings | None = None,
    format: str = "png",
    probabilities: bool = False,
    tiling: bool = True,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[Path]:
    """``tomoseg predict``: write a class-id mask (and optionally probabilities) per input image.

    Args:
        run: a :class:`~tomoseg.inference.predictor.Predictor`, or a run folder segmented with
            ``settings`` (device, weights, runtime, TTA, post-processing, non-finite rule,
            intensity rule, tiles: :class:`~tomoseg.inference.predictor.InferenceSettings`);
            images out of the run's intensity range give one warning for the job (naming
            the first), by default.
        inputs: image files and folders of images (natural order within a folder).
        out: the mask folder (``<id>.<format>``; ``probabilities/<id>.tif`` (K, H, W) float32;
            ``.tomoseg-job.json``, the job's record).
        format: ``png`` or ``tif``.
        tiling: overlapping tiles (False: whole images in one pass).
        overwrite: replace masks already in ``out``.
        progress: receives one ``image`` event per mask written (``done`` counts the masks
            written before a resume too).
        cancel: a token (:class:`threading.Event`) checked after each image.

    Resumable: every file is written atomically and the job is recorded in ``out``
    (:func:`~tomoseg.io.jobs.open_job_folder`), so after a ``kill -9``, a full disk or a
    cancel the same call writes only the masks still missing, to the uninterrupted result;
    the same call with other settings is refused unless ``overwrite``.

    A run with 2.5D context ``k`` takes the inputs as consecutive sections in the order given
    (folders in natural order), each slice with the ``k`` inputs before and after it, edges
    replicated.

    Returns:
        The written mask paths.

    Raises:
        TomosegError: an unknown ``format``, missing or duplicate inputs, an output folder
            holding results; as :meth:`~tomoseg.inference.predictor.Predictor.logits`.
        Cancelled: ``cancel`` was set (the masks written so far stay; the same call resumes).
    """
    if format not in ("png", "tif"):
        raise TomosegError(f"format={format!r}: must be png or tif")
    items = _inputs([Path(p) for p in inputs])
    predictor = as_predictor(run, settings)
    out = Path(out)
    masks = [f"{i}.{format}" for i, _ in items]
    probs = [f"probabilities/{i}.tif" for i, _ in items] if probabilities else []
    identity = {
        **run_identity(predictor),
        "inputs": [str(p.resolve()) for _, p in items],
        "format": format,
        "probabilities": bool(probabilities),
        "tiling": bool(tiling),
    }
    open_job_folder(
        out, "predict", identity, overwrite=overwrite, result_names=masks,
        replaced=[*masks, *probs], keep_finished=True,
    )  # fmt: skip
    # a mask is written after its probabilities: it marks its image done
    todo = [i for i, name in enumerate(masks) if not (out / name).is_file()]
    job = job_progress(
        "predict", "image", len(items), progress, cancel, done=len(items) - len(todo)
    )
    k = predictor.context
    read = context_reader(lambda i: read_image(items[i][1]), len(items), k)  # 2.5D
    if k:
        job.message(
            f"the run sees {k} slices above and below: the {len(items)} inputs are taken as "
            "consecutive sections in the order given (natural order within a folder)"
        )
    job.start()
    tally = IntensityTally(predictor.settings.intensity)  # one warning for the whole job
    for i in todo:
        image_id, path = items[i]
        t0 = time.perf_counter()
        stacked = read(i)
        labels, prob = predictor.segment(
            stacked, probabilities=probabilities, tiling=tiling, names=[str(path)], tally=tally
        )
        bad = count_nonfinite(centre(stacked))
        with writing(f"the mask of {image_id}", out):
            if probabilities:
                write_image(out / probs[i], prob.astype(np.float32))
            write_mask(out / masks[i], labels)
        job.advance(
            message=f"{image_id}: {labels.shape[1]}x{labels.shape[0]} in "
            f"{time.perf_counter() - t0:.2f} s"
            + (f" ({bad} non-finite pixels labelled background)" if bad else ""),
            nonfinite=bad,
        )
    finish_job_folder(out)
    job.end(f"{len(items)} masks written to {out}")
    return [out / name for name in masks]
