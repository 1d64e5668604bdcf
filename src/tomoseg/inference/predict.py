"""``tomoseg predict``: segment image files into mask files."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tomoseg.data.context import centre, context_reader
from tomoseg.data.normalization import check_nonfinite_rule, count_nonfinite
from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import configure_run, run_context, segment
from tomoseg.io.images import IMAGE_SUFFIXES, list_images, read_image
from tomoseg.io.writers import prepare_output_dir, write_image, write_mask
from tomoseg.runtime.checkpoint import load_run
from tomoseg.runtime.device import resolve_device


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


def predict_paths(
    run_dir: Path,
    inputs: Sequence[Path],
    out: Path,
    fmt: str = "png",
    probabilities: bool = False,
    device: str = "auto",
    overwrite: bool = False,
    tiling: bool = True,
    tile_size: int | None = None,
    tile_batch: int | None = None,
    console=None,
    *,
    nonfinite: str = "background",
    runtime: str = "auto",
    tta: object = None,
    postprocess: bool = True,
    which: str | None = None,
) -> list[Path]:
    """``tomoseg predict``: write a class-id mask (and optionally probabilities) per input image.

    NaN / infinite pixels are labelled background (class 0) with ``nonfinite="background"``, or
    refused (``error``): the rule of :func:`~tomoseg.inference.predictor.segment_batch`.
    ``tta`` (None: the run's configured one) and ``postprocess`` (the run's tuned decision,
    ``decision.json``) as there; ``which`` weights (None: the run's configured ``weights``). A
    run with 2.5D context ``k`` takes the inputs as consecutive sections in the order given
    (folders in natural order), each slice with the ``k`` inputs before and after it, edges
    replicated.

    Returns:
        The written mask paths.
    """
    if fmt not in ("png", "tif"):
        raise TomosegError(f"fmt (the format) must be png or tif, got {fmt!r}")
    check_nonfinite_rule(nonfinite)
    items = _inputs(inputs)
    run = load_run(run_dir, which, device=resolve_device(device))
    configure_run(run, runtime=runtime, tta=tta, postprocess=postprocess)
    out = prepare_output_dir(out, overwrite, [f"{i}.{fmt}" for i, _ in items])
    written = []
    k = run_context(run)
    read = context_reader(lambda i: read_image(items[i][1]), len(items), k)  # 2.5D
    if k and console is not None:
        console.print(
            f"the run sees {k} slices above and below: the {len(items)} inputs are taken as "
            "consecutive sections in the order given (natural order within a folder)"
        )
    for i, (image_id, path) in enumerate(items):
        t0 = time.perf_counter()
        stacked = read(i)
        image = centre(stacked)
        labels, prob = segment(
            run,
            stacked,
            tile_size=tile_size,
            tile_batch=tile_batch,
            tiling=tiling,
            probabilities=probabilities,
            nonfinite=nonfinite,
            names=[str(path)],
        )
        bad = count_nonfinite(image)
        written.append(write_mask(out / f"{image_id}.{fmt}", labels))
        if probabilities:
            write_image(out / "probabilities" / f"{image_id}.tif", prob.astype(np.float32))
        if console is not None:
            console.print(
                f"{image_id}: {labels.shape[1]}x{labels.shape[0]} in {time.perf_counter() - t0:.2f} s"
                + (f" ({bad} non-finite pixels labelled background)" if bad else "")
            )
    return written
