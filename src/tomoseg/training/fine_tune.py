"""Fine-tuning: a new run that starts from a trained run's weights (``TrainConfig.init``).

The child keeps what makes the parent's weights meaningful (:mod:`tomoseg.training.parent`):
the network, the classes, the intensity normalisation and the class weights. It records the parent in ``run.json`` (``parent``) and never writes
into the parent's folder. Unannotated pixels (the ignore label) count for nothing, as in any
partially labelled training (``docs/partial_labels.md``): a user who corrects a few slices
trains on exactly those.

:func:`fine_tune` is the array entry point (napari, notebooks): it writes the images and
labels as a small dataset inside the new run's folder (``fine_tune_data/``, so the run records
what it was trained on) and trains on it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tomoseg.errors import TomosegError
from tomoseg.io.writers import write_json, write_mask
from tomoseg.runtime.checkpoint import LoadedRun
from tomoseg.training.parent import load_parent
from tomoseg.utils.format import plural
from tomoseg.utils.progress import CancelToken, ProgressCallback

#: the folder of a fine-tuned run holding the arrays :func:`fine_tune` trained on
DATA_DIR = "fine_tune_data"


def _stack(arrays: object, name: str) -> list[np.ndarray]:
    """A (N, H, W) array or a sequence of (H, W) arrays as a list of 2D arrays."""
    if isinstance(arrays, np.ndarray) or hasattr(arrays, "shape"):
        arr = np.asarray(arrays)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise TomosegError(f"{name} must be (N, H, W) or a list of (H, W), got {arr.shape}")
        return list(arr)
    out = [np.asarray(a) for a in arrays]  # type: ignore[attr-defined]
    for a in out:
        if a.ndim != 2:
            raise TomosegError(f"{name} must be (N, H, W) or a list of (H, W), got {a.shape}")
    return out


def write_fine_tune_data(
    folder: Path,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    classes: Sequence[str],
    class_of_interest: str,
    ignore_label: int | None,
) -> Path:
    """A dataset folder (``dataset.json``, ``train/images``, ``train/masks`` as TIFF) of the
    arrays: what :func:`fine_tune` trains on.

    Raises:
        TomosegError: lengths or shapes that differ, labels that are not integers, ids that
            are neither a class nor the ignore label.
    """
    if len(images) != len(labels) or not images:
        raise TomosegError(
            f"images and labels: give as many of each, at least one "
            f"({plural(len(images), 'image')}, {plural(len(labels), 'label image')})"
        )
    k = len(classes)
    for i, (im, lab) in enumerate(zip(images, labels, strict=True)):
        if im.shape != lab.shape:
            raise TomosegError(f"labels[{i}] has shape {lab.shape}, images[{i}] {im.shape}")
        if not np.issubdtype(lab.dtype, np.integer):
            raise TomosegError(f"labels[{i}] must hold integer class ids, got {lab.dtype}")
        bad = np.setdiff1d(np.unique(lab), [*range(k), *([ignore_label] if ignore_label else [])])
        if bad.size:
            raise TomosegError(
                f"labels[{i}] holds {int(bad[0])}, neither a class id (0..{k - 1}) nor "
                f"ignore_label={ignore_label}"
            )
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    spec = {"classes": list(classes), "class_of_interest": class_of_interest}
    if ignore_label is not None:
        spec["ignore_label"] = int(ignore_label)
    for i, (im, lab) in enumerate(zip(images, labels, strict=True)):
        (folder / "train" / "images").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / "train" / "images" / f"s{i:04d}.tif", np.asarray(im))
        dtype = np.uint16 if (ignore_label or 0) > 255 or k > 255 else np.uint8
        write_mask(folder / "train" / "masks" / f"s{i:04d}.tif", lab.astype(dtype))
    write_json(folder / "dataset.json", spec)
    return folder


def fine_tune(
    run: str | os.PathLike[str],
    images: object,
    labels: object,
    out: str | os.PathLike[str],
    *,
    ignore_label: int | None = None,
    time_budget: float | None = None,
    epochs: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **options: Any,
) -> Path:
    """Fine-tune a run on labelled slices given as arrays; write a new run to ``out``.

    Args:
        run: the parent run folder (never written to).
        images: (N, H, W) array or N (H, W) arrays of raw intensities.
        labels: their class ids, same shapes; pixels equal to ``ignore_label`` are unannotated
            and count for nothing (a slice corrected only in places trains only there).
        out: the new run folder (not ``run``).
        ignore_label: mask value of unannotated pixels (None: every pixel is annotated).
        time_budget: minutes for the whole fine-tune (a throughput probe sets the epochs), or
        epochs: epochs (default: the parent's).
        resume: continue an interrupted (cancelled) fine-tune of the same arrays in ``out``.
        overwrite: replace an existing run in ``out`` (never the parent).
        progress, cancel: as :func:`tomoseg.training.trainer.train`.
        **options: any other :class:`~tomoseg.config.TrainConfig` field (``lr``, ``crops``,
            ``crop_size``, ``device``, ``seed``, ...); the network, classes and normalisation
            are the parent's.

    Returns:
        The new run folder; its ``run.json`` holds ``parent``.

    Raises:
        TomosegError: the parent is not a run, ``out`` is the parent, arrays that do not fit
            (shapes, ids), options (as ``train``).
    """
    from tomoseg.config.schema import load_config
    from tomoseg.training.trainer import RUN_RESULTS, train

    out = Path(out)
    overrides = {**options, "init": Path(run), "time_budget": time_budget, "epochs": epochs}
    cfg = load_config(None, overrides)
    parent = load_parent(cfg, out)
    if not isinstance(parent, LoadedRun):
        raise TomosegError(
            f"run={str(run)!r} holds pretrained weights without classes: train a run from them "
            "on a labelled dataset (tomoseg.train with init) before fine-tuning on arrays"
        )
    imgs, labs = _stack(images, "images"), _stack(labels, "labels")
    held = [n for n in RUN_RESULTS if (out / n).exists()]
    if held and not (overwrite or resume):  # train's refusal, before the data is written
        raise TomosegError(
            f"run folder {out} already holds a run ({held[0]}); use resume=True to continue "
            "it or overwrite=True to replace it"
        )
    data = write_fine_tune_data(
        out / DATA_DIR, imgs, labs, parent.classes, parent.class_of_interest, ignore_label
    )
    return train(
        data, out, cfg, resume=resume, overwrite=overwrite, progress=progress, cancel=cancel
    )


def train_arrays(
    images: object,
    labels: object,
    out: str | os.PathLike[str],
    *,
    classes: Sequence[str],
    class_of_interest: str | None = None,
    ignore_label: int | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **options: Any,
) -> Path:
    """Train a new run on labelled slices given as arrays (a viewer's image and annotation
    layers): the arrays are written as a dataset in ``out/training_data/`` and trained on as
    :func:`tomoseg.train` trains a dataset folder.

    Args:
        images: (N, H, W) array or N (H, W) arrays of raw intensities.
        labels: their class ids (0..K-1); pixels equal to ``ignore_label`` are unannotated.
        out: the run folder.
        classes: the K class names.
        class_of_interest: default the last class.
        ignore_label: mask value of unannotated pixels (e.g. 255; None: all annotated).
        overwrite, progress, cancel: as :func:`tomoseg.train`.
        **options: any :class:`~tomoseg.config.TrainConfig` field (``time_budget``, ...).

    Returns:
        The run folder.

    Raises:
        TomosegError: arrays that do not fit (shapes, ids), fewer than 2 classes, an unknown
            class of interest, options (as ``train``).
    """
    from tomoseg.config.schema import load_config
    from tomoseg.training.trainer import RUN_RESULTS, train

    out = Path(out)
    names = [str(c) for c in classes]
    if len(names) < 2 or len(set(names)) != len(names):
        raise TomosegError(f"classes={names!r}: give at least 2 distinct class names")
    coi = class_of_interest or names[-1]
    if coi not in names:
        raise TomosegError(f"class_of_interest={coi!r} is not one of {names}")
    cfg = load_config(None, options)
    held = [n for n in RUN_RESULTS if (out / n).exists()]
    if held and not overwrite:
        raise TomosegError(
            f"run folder {out} already holds a run ({held[0]}); use overwrite=True to replace it"
        )
    data = write_fine_tune_data(
        out / "training_data",
        _stack(images, "images"),
        _stack(labels, "labels"),
        names,
        coi,
        ignore_label,
    )
    return train(data, out, cfg, overwrite=overwrite, progress=progress, cancel=cancel)
