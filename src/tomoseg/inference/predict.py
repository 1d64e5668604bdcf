"""``tomoseg predict``: segment image files into mask files."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tomoseg.data.context import centre, context_reader
from tomoseg.data.intensity import SAMPLE_PIXELS, IntensityTally
from tomoseg.data.normalization import count_nonfinite
from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import InferenceSettings, Predictor, as_predictor
from tomoseg.io.images import IMAGE_SUFFIXES, image_rows, list_images, read_image, read_mask
from tomoseg.io.jobs import file_sha256, finish_job_folder, open_job_folder
from tomoseg.io.writers import write_image, write_mask, write_mask_rows, writing
from tomoseg.reporting.quicklook import QUICKLOOK_NAME, quicklook_or_warn, spread
from tomoseg.utils.format import plural
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


def _by_bands(
    predictor: Predictor, path: Path, dest: Path, tally: IntensityTally
) -> tuple[tuple[int, int], int] | None:
    """Segment a slice too tall for one pass that can be read by bands (a TIFF,
    :func:`~tomoseg.io.images.image_rows`), writing its mask by bands too; None when the slice
    is small, its format is read whole, or ``intensity="rescale"`` needs the whole slice.

    The intensity rule looks at the slice's regular grid of pixels
    (:func:`~tomoseg.data.intensity.sample_pixels`), gathered band by band: the same pixels as
    on the whole slice.

    Returns:
        ``((H, W), non-finite pixels)``, or None.
    """
    if predictor.settings.intensity == "rescale":
        return None
    with image_rows(path) as reader:
        if reader is None or not predictor.banded(*reader.shape):
            return None
        h, w = reader.shape
        step = max(1, math.ceil(math.sqrt(h * w / SAMPLE_PIXELS)))
        chunk = step * max(1, 4_000_000 // (w * step))  # rows read at a time: about 4 Mpx
        grid = np.concatenate(
            [reader.rows(y, min(y + chunk, h))[::step, ::step] for y in range(0, h, chunk)]
        )
        predictor.check_intensity(grid, str(path), tally)
        seen = [0, 0]  # rows counted, non-finite pixels in them

        def rows(y0: int, y1: int) -> list[np.ndarray]:
            band = reader.rows(y0, y1)
            if y1 > seen[0]:  # the halo rows of the band before are not counted twice
                seen[1] += count_nonfinite(band[max(seen[0] - y0, 0) :])
                seen[0] = y1
            return [band]

        bands = predictor.label_bands(rows, reader.shape, names=[str(path)], checked=True)
        write_mask_rows(dest, reader.shape, bands)
        return reader.shape, seen[1]


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
        out: the mask folder (``<id>.<format>``: uint8 class ids stored as an indexed image,
            :func:`~tomoseg.io.writers.write_mask`; ``probabilities/<id>.tif`` (K, H, W)
            float32; ``quicklook/quicklook.png``: up to 4 images with their labels drawn over
            them; ``.tomoseg-job.json``, the job's record).
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
            f"the run sees {plural(k, 'slice')} above and below: the "
            f"{plural(len(items), 'input')} are taken as "
            "consecutive sections in the order given (natural order within a folder)"
        )
    job.start()
    tally = IntensityTally(predictor.settings.intensity)  # one warning for the whole job
    for i in todo:
        image_id, path = items[i]
        t0 = time.perf_counter()
        done = None
        if not (k or probabilities or not tiling):  # read, segmented, written by bands of rows
            with writing(f"the mask of {image_id}", out):
                done = _by_bands(predictor, path, out / masks[i], tally)
        if done is not None:
            shape, bad = done
        else:
            stacked = read(i)
            labels, prob = predictor.segment(
                stacked, probabilities=probabilities, tiling=tiling, names=[str(path)], tally=tally
            )
            shape, bad = labels.shape, count_nonfinite(centre(stacked))
            with writing(f"the mask of {image_id}", out):
                if probabilities:
                    write_image(out / probs[i], prob.astype(np.float32))
                write_mask(out / masks[i], labels)
        job.advance(
            message=f"{image_id}: {shape[1]}x{shape[0]} in "
            f"{time.perf_counter() - t0:.2f} s"
            + (f" ({bad} non-finite pixels labelled background)" if bad else ""),
            nonfinite=bad,
        )
    finish_job_folder(out)
    _quicklook(out, [p for _, p in items], [out / name for name in masks], predictor.classes)
    job.end(f"{plural(len(items), 'mask')} written to {out}")
    return [out / name for name in masks]


#: the quick-look of ``predict``: in a folder of its own, the mask folder holding only masks
QUICKLOOK = f"quicklook/{QUICKLOOK_NAME}"
_QUICKLOOK_MAX_PIXELS = 64_000_000  # larger images are left out of it (read whole to draw)


def _quicklook(out: Path, images: list[Path], masks: list[Path], classes: list[str]) -> None:
    """``<out>/quicklook/quicklook.png``: up to 4 inputs spread over the list, their masks
    drawn over them (:mod:`tomoseg.reporting.quicklook`; a failure only warns)."""

    def views() -> list[tuple[str, np.ndarray, np.ndarray]]:
        got = []
        for i in spread(len(images), 4):
            mask = read_mask(masks[i])
            if mask.size <= _QUICKLOOK_MAX_PIXELS:
                got.append((images[i].stem, read_image(images[i]), mask))
        return got

    quicklook_or_warn(out / QUICKLOOK, views, classes, f"{plural(len(images), 'image')} segmented")
