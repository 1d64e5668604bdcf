"""tomoseg's Python API: the same jobs as the command line, on arrays and paths.

Everything here is re-exported by ``tomoseg`` (``tomoseg.train``, ``tomoseg.Predictor``, ...).
Options after the first arguments are keyword-only. ``score`` and ``measure_objects`` never
import torch, so they start in well under a second; the rest import it when called.

Errors are :class:`tomoseg.TomosegError` (a ``ValueError``) with a one-line message naming the
parameter.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tomoseg.errors import TomosegError
from tomoseg.utils.progress import CancelToken, ProgressCallback

if TYPE_CHECKING:
    from tomoseg.inference.predictor import Predictor
    from tomoseg.utils.progress import CancelToken, ProgressEvent

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Run:
    """A finished (or interrupted) training run folder.

    Attributes:
        path: the run folder (``config.yaml``, ``run.json``, ``metrics.csv``, ``best.safetensors``,
            ``last.safetensors``, ``curves.png``, ``checkpoints/``).
    """

    path: Path

    @cached_property
    def metrics(self) -> list[dict[str, float]]:
        """Per-epoch rows of ``metrics.csv`` (numbers as float, empty cells as NaN)."""
        f = self.path / "metrics.csv"
        if not f.is_file():
            raise TomosegError(f"run {self.path} has no metrics.csv")
        with open(f, newline="") as fh:
            return [
                {k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()}
                for row in csv.DictReader(fh)
            ]

    def predictor(self, **options: Any) -> Predictor:
        """A :class:`~tomoseg.Predictor` of this run (``options``: any
        :class:`~tomoseg.InferenceSettings` field — ``device``, ``weights``, ``tta``,
        ``postprocess``, ...; see :meth:`~tomoseg.Predictor.from_run`)."""
        from tomoseg.inference.predictor import Predictor

        return Predictor.from_run(self.path, **options)


def train(
    data: PathLike | None = None,
    out: PathLike | None = None,
    *,
    images: PathLike | None = None,
    masks: PathLike | None = None,
    classes: Sequence[str] | str | None = None,
    image_suffix: str | None = None,
    mask_suffix: str | None = None,
    instances: str | None = None,
    config: PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **options: Any,
) -> Run:
    """Train a network on N random SxS crops (``tomoseg train``).

    Args:
        data: dataset folder (``dataset.json``, ``train/``; ``val/`` optional: without it a
            seeded ``val_fraction`` of the training images is held out, see ``run.json``).
        out: run folder (required).
        images: folder of training images, instead of ``data`` (with ``masks``), or one image
            volume (multi-page TIFF, Zarr, ...: each z-slice is a training image).
        masks: folder of their masks (class ids), matched by file name; the label volume of
            an ``images`` volume; ``images`` itself with ``mask_suffix``.
        classes: class names for ``images``/``masks`` (default ``"0".."K-1"`` from the masks).
        image_suffix: the ending of every image name, not part of its id (nnU-Net's ``_0000``).
        mask_suffix: the ending of every mask name (cellpose's ``_masks``).
        instances: masks that look like instance labels (one id per object, as napari and
            cellpose write them): ``"error"`` (default: refused) or ``"binarize"`` (every
            object class 1).
        config: YAML config, or a bundled name (``default``, ``seed``); default: the defaults.
        resume: continue an interrupted run from its last checkpoint; ``tomoseg.train(out=RUN,
            resume=True)`` needs nothing else (the data and config are in the run folder;
            ``options`` given change what may change on resume, such as ``epochs``).
        overwrite: replace an existing run in ``out``.
        progress: receives the run's progress events, one per finished epoch (see
            :func:`tomoseg.training.trainer.train`).
        cancel: a :class:`threading.Event`; once set, training stops at the next batch and
            :class:`~tomoseg.utils.progress.Cancelled` is raised; ``resume=True`` continues.
        **options: any :class:`tomoseg.config.TrainConfig` field (``model``, ``crop_size``,
            ``crops``, ``epochs``, ``lr``, ``seed``, ``device``, ``ignore_label``,
            ``val_fraction``, ``devices``, ``num_nodes``, ``strategy``, ...), overriding
            ``config``. Without ``epochs`` or ``time_budget`` (minutes) a one-process run
            plans its epochs to fill the default 20-minute budget. ``devices=2`` (with ``strategy="ddp"`` or ``"auto"``) trains in two
            processes started with Lightning's ``ddp_spawn``: the calling script is not rerun,
            but, as always with Python's spawn start method, its top-level code must sit under
            ``if __name__ == "__main__":``. Under ``torchrun`` or ``srun`` (every process
            runs the script) Lightning's ``ddp`` is used and the launcher's processes join.

    Returns:
        The :class:`Run`.

    Raises:
        TomosegError: bad data, options or run folder.
    """
    from tomoseg.config.schema import load_config
    from tomoseg.data.sources import DataSource
    from tomoseg.training.trainer import train as run_train

    if out is None:
        raise TomosegError("out: give the run folder to write")
    run = Path(out)
    if resume and data is None and images is None and masks is None:
        source = None  # the data the run recorded in its run.json
    else:
        source = DataSource.of(
            data, images=images, masks=masks, classes=classes, image_suffix=image_suffix,
            mask_suffix=mask_suffix, instances=instances,
        )  # fmt: skip
    if config is None and resume and (run / "config.yaml").is_file():
        config = run / "config.yaml"  # the run's own config, changed by the options given
    cfg = load_config(config, options)
    return Run(
        run_train(
            source,
            run,
            cfg,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            cancel=cancel,
            spawn=True,  # several processes: ddp_spawn, not a rerun of the caller's script
        )
    )


def pretrain(
    images: Any,
    out: PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **options: Any,
) -> Run:
    """Self-supervised pretraining on unlabelled slices (``tomoseg pretrain``): the network a
    run trains learns to restore randomly masked patches of crops of ``images`` (masked image
    modelling; ``docs/training.md``). ``train(data, run, init=out)`` then starts from it: its
    network, weights but the output head, and normalisation.

    Args:
        images: any stack (a folder of slices, a multi-page TIFF, Zarr, HDF5 ``file.h5:/data``,
            MRC, N5, a (Z, Y, X) array); None with ``resume``: the recorded one.
        out: the output folder (a run folder without classes, ``pretrained: true``).
        resume: continue an interrupted pretraining (kill -9 safe).
        overwrite: replace what ``out`` holds.
        progress, cancel: as :func:`train`.
        **options: ``model``, ``width``, ``depth``, ``context``, ``crop_size``, ``crops``,
            ``epochs`` or ``time_budget`` (minutes), ``mask_ratio``, ``mask_patch``,
            ``max_slices``, ``lr``, ``seed``, ``device``, ``devices``, ... (see
            :class:`tomoseg.training.pretrain.PretrainConfig`).

    Returns:
        The pretraining folder as a :class:`Run`.

    Raises:
        TomosegError: bad options, an unreadable stack or one with too few pixels (saying how
            many are needed), ``out`` holding results without ``overwrite``.
    """
    from tomoseg.training.pretrain import pretrain as _pretrain

    folder = _pretrain(
        images, out, resume=resume, overwrite=overwrite, progress=progress, cancel=cancel,
        spawn=True, **options,
    )  # fmt: skip
    return Run(folder)


def fine_tune(
    run: PathLike | Run,
    images: Any,
    labels: Any,
    out: PathLike,
    *,
    ignore_label: int | None = None,
    time_budget: float | None = None,
    epochs: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **options: Any,
) -> Run:
    """Fine-tune a run on labelled slices given as arrays (``tomoseg train --init RUN`` on
    folders): a new run in ``out`` that starts from ``run``'s weights and keeps its network,
    classes, normalisation and class weights, and records it as ``parent`` in ``run.json``.
    ``run`` is never written to.

    Args:
        run: the parent run (folder or :class:`Run`).
        images: (N, H, W) array, or a list of (H, W) arrays, of raw intensities.
        labels: their class ids (same shapes); pixels equal to ``ignore_label`` are
            unannotated and count for nothing (a slice corrected in places trains there only).
        out: the new run folder.
        ignore_label: mask value of unannotated pixels (e.g. 255; None: all annotated).
        time_budget: minutes for the whole fine-tune (sets the epochs), or
        epochs: epochs (default: the parent's).
        resume: continue a cancelled fine-tune of the same arrays in ``out``.
        overwrite: replace an existing run in ``out``.
        progress, cancel: as :func:`train`.
        **options: other :class:`~tomoseg.TrainConfig` fields (``lr``, ``crops``, ``seed``,
            ``device``, ...).

    Returns:
        The new :class:`Run`.

    Raises:
        TomosegError: ``run`` is not a run or is ``out``; arrays that do not fit (shapes, ids
            neither a class nor ``ignore_label``); a network option that differs from the
            parent's.
    """
    from tomoseg.training.fine_tune import fine_tune as _fine_tune

    parent = run.path if isinstance(run, Run) else Path(run)
    return Run(
        _fine_tune(
            parent,
            images,
            labels,
            out,
            ignore_label=ignore_label,
            time_budget=time_budget,
            epochs=epochs,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            cancel=cancel,
            **options,
        )
    )


def _split_settings(options: dict[str, Any]) -> dict[str, Any]:
    """Move the :class:`~tomoseg.InferenceSettings` fields among ``options`` into
    ``options["settings"]`` (one settings object for the library call)."""
    from dataclasses import fields

    from tomoseg.inference.predictor import InferenceSettings

    names = {f.name for f in fields(InferenceSettings)}
    given = {k: options.pop(k) for k in list(options) if k in names}
    if given:
        options["settings"] = InferenceSettings.merged(options.get("settings"), given)
    return options


def segment_stack(
    run: PathLike | Predictor,
    input: PathLike | np.ndarray | Any,
    out: PathLike,
    *,
    backend: str = "local",
    progress: Callable[[ProgressEvent], None] | None = None,
    cancel: CancelToken | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Segment a whole stack into an OME-Zarr label volume (``tomoseg segment-stack``).

    Args:
        run: a run folder or a :class:`~tomoseg.Predictor`.
        input: the stack: a folder of slices, a multi-page TIFF, a Zarr / OME-Zarr, or a
            (Z, Y, X) array in memory (numpy, dask; see :mod:`tomoseg.io.sources`).
        out: the output folder.
        backend: ``local`` (threads, or ``io_workers`` processes, here) or ``ray`` (a pool of
            Ray actors: ``address``, ``actors``, ``cpus_per_actor``, ``num_cpus``).
        progress: receives a :class:`~tomoseg.utils.progress.ProgressEvent` per finished slice.
        cancel: a :class:`threading.Event`; when set, the job stops at the next slice and
            raises :class:`~tomoseg.utils.progress.Cancelled`; the same call resumes it.
        **options: the options of :func:`tomoseg.inference.stack.segment_stack` (keyword-only
            here) and, for a run folder, any :class:`~tomoseg.InferenceSettings` field
            (``device``, ``weights``, ``tta``, ``postprocess``, ``nonfinite``, ...).

    Returns:
        The summary (``slices``, ``computed``, ``seconds``, ``volume``, ...).
    """
    from tomoseg.inference.stack import segment_stack as _segment_stack

    return _segment_stack(
        run,
        input,
        out,
        backend=backend,
        progress=progress,
        cancel=cancel,
        **_split_settings(options),
    )


def score(
    truth: np.ndarray,
    pred: np.ndarray,
    *,
    classes: Sequence[str] | None = None,
    class_of_interest: str | None = None,
    tolerance: float = 2.0,
    ignore_label: int | None = None,
    instances: str = "error",
) -> dict[str, Any]:
    """Accuracy, per-class IoU and MATLAB-``bfscore`` boundary F1 of one predicted label image.

    Args:
        truth: (H, W) integer class ids.
        pred: (H, W) integer class ids.
        classes: class names (K = len); default ``"0".."K-1"`` with K = the largest id in truth
            and prediction together + 1 (at least 2). A binary mask stored as 0/255 is read as
            0/1 (with a :class:`~tomoseg.TomosegWarning`), by the rule of ``tomoseg score``
            (:func:`tomoseg.io.labels.resolve_labels`).
        class_of_interest: recorded in the result; default the last class.
        tolerance: BF1 distance tolerance in pixels (>= 0).
        ignore_label: truth value of unannotated pixels (e.g. 255; not a class id): they count
            for nothing, so a prediction differing from the truth only there scores 1.
        instances: a truth or prediction that looks like instance labels: ``"error"``
            (refused) or ``"binarize"`` (read as 0 / 1). Ids numbered from 1 against ids
            from 0 are refused (:mod:`tomoseg.io.labels`).

    Returns:
        The ``metrics.json`` content for this one image: ``classes``, ``class_of_interest``,
        ``tolerance_px``, ``per_image`` (one entry), ``mean`` and ``pooled_iou`` (per-class dicts;
        NaN where a class is absent from both).

    Raises:
        TomosegError: shapes differ, ids out of range or not integers, ``ignore_label`` a
            class id.
    """
    from tomoseg.io.labels import label_stats, resolve_labels
    from tomoseg.metrics.segmentation import ScoreSummary, score_image

    t, p = _label_image(truth, "truth"), _label_image(pred, "pred")
    ids = resolve_labels(
        {"truth": [label_stats(t, ignore_label)], "pred": [label_stats(p)]},
        len(classes) if classes is not None else None,
        ignore_label=ignore_label,
        instances=instances,
    )
    t, p = ids.apply("truth", t), ids.apply("pred", p)
    if classes is None:
        classes = [str(i) for i in range(ids.n_classes)]
    classes = list(classes)
    coi = class_of_interest or classes[-1]
    if coi not in classes:
        raise TomosegError(f"class_of_interest {coi!r} is not one of {classes}")
    summary = ScoreSummary(classes, coi, float(tolerance))
    summary.images.append(
        score_image(t, p, len(classes), tolerance, "image", ignore_label=ignore_label)
    )
    return summary.to_dict()


def _label_image(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise TomosegError(
            f"{name} must be a 2D integer array, got {arr.dtype} of shape {arr.shape}"
        )
    if arr.size and int(arr.min()) < 0:
        raise TomosegError(f"{name} holds negative class ids")
    return arr


def score_folders(
    pred: PathLike,
    truth: PathLike,
    out: PathLike,
    *,
    classes: Sequence[str] | None = None,
    class_of_interest: str | None = None,
    tolerance: float = 2.0,
    images: PathLike | None = None,
    overwrite: bool = False,
    ignore_label: int | None = None,
    instances: str = "error",
) -> dict[str, Any]:
    """Score every predicted mask in a folder against the truth of the same file stem and write
    the report (``tomoseg score``: ``metrics.json``, ``per_image.csv``, overlays, panels).

    ``ignore_label``: truth value of unannotated pixels, left out of every metric (default:
    the ``ignore_label`` of a ``dataset.json`` above ``truth``). ``instances``: truths that look
    like instance labels are refused (``"error"``) or read as 0 / 1 (``"binarize"``). Volumes
    (a predicted label volume against its true one) are scored slice by slice.

    Returns:
        The ``metrics.json`` content.
    """
    from tomoseg.evaluation.score import score_folders as _score_folders

    summary = _score_folders(
        Path(pred),
        Path(truth),
        Path(out),
        list(classes) if classes else None,
        class_of_interest,
        tolerance,
        Path(images) if images else None,
        overwrite,
        ignore_label=ignore_label,
        instances=instances,
    )
    return summary.to_dict()


def export(
    run: PathLike | Run,
    out: PathLike,
    *,
    format: str = "bioimageio",
    weights: str | None = None,
    overwrite: bool = False,
    data: PathLike | None = None,
    name: str | None = None,
    authors: Sequence[str] | None = None,
    license: str = "CC-BY-4.0",
    tags: Sequence[str] | None = None,
    evaluation: PathLike | None = None,
) -> dict[str, Any]:
    """Share a trained network with other tools (``tomoseg export``; ``docs/export.md``).

    Args:
        run: the run folder (or :class:`Run`).
        out: the file to write: a bioimage.io package (``NAME.zip``: Fiji/deepImageJ,
            ilastik, napari and BiaPy open it, and so does tomoseg), or a TorchScript / ONNX
            file (its normalisation in ``<out>.json`` beside it).
        format: ``bioimageio``, ``torchscript`` or ``onnx``.
        weights: ``last`` or ``best`` (None: the run's delivered weights).
        overwrite: replace ``out``.
        data: the dataset whose first training image gives the test input (default: the
            run's training data).
        name: the package's name (default: the run folder's).
        authors: the package's authors (default: your login name).
        license: the package's licence, an SPDX id.
        tags: tags added to the package's own (``tomoseg``, ``segmentation``, ``2d``, ...).
        evaluation: a ``tomoseg evaluate`` report (folder or ``metrics.json``) whose test
            scores the package's README gives.

    Returns:
        ``path``, ``format``, ``seconds``, ``max_abs_diff`` (per weights format, the largest
        absolute difference of its class probabilities from tomoseg's on the test input,
        fp32 on the CPU), ``test_input`` and ``sidecar`` (the JSON beside a file).

    Raises:
        TomosegError: an unknown ``format``, ``out`` exists (``overwrite``), an incomplete
            run, a network that cannot be traced (naming the layer), a package that fails
            validation (the validator's first complaint), ``tomoseg[export]`` not installed.
    """
    from dataclasses import asdict

    from tomoseg.sharing.exporter import export_run

    result = export_run(
        run.path if isinstance(run, Run) else run, out, format=format, weights=weights,
        overwrite=overwrite, data=data, name=name, authors=list(authors) if authors else None,
        license=license, tags=list(tags) if tags else None, evaluation=evaluation,
    )  # fmt: skip
    return asdict(result)
