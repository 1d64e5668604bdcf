"""Choose the decision and clean-up on validation images (nnU-Net chooses its post-processing
the same way: keep a step only where it improves the validation metric).

Stage 1 picks the offset added to the class of interest's logit (after the calibrated decision
rule) that maximises the mean validation IoU of that class, ties broken by BF1, then by the
smaller offset. Stage 2, at that offset, picks the smallest-object and hole sizes the same way.
Offsets and sizes are searched on a grid; the identity (offset 0, no clean-up) is always a
candidate, so the chosen decision is never worse on the validation images.

A clean-up may not remove what the annotations contain: a smallest-object size is a candidate
only if at most 1 % of the annotated objects of the class are smaller (:data:`SIZE_QUANTILE`),
and a hole size only if at most 1 % of the annotated holes are that small or smaller. A few
validation images are easily fitted by a size that also removes real small objects elsewhere
(stem-pt: removing objects under 64 px raised validation IoU by 0.005 and cut test IoU by 0.045,
10 % of its platinum particles being that small; docs/training.md section 6).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tomoseg.data.sources import IGNORE_INDEX
from tomoseg.errors import TomosegError
from tomoseg.inference.postprocess import DECISION_FILE, Decision, clean_labels, decision_record
from tomoseg.io.writers import write_json
from tomoseg.metrics.segmentation import nanmean, score_image
from tomoseg.utils.progress import CancelToken, ProgressCallback, job_progress

if TYPE_CHECKING:
    from tomoseg.data.sources import LoadedSamples
    from tomoseg.inference.predictor import Predictor
    from tomoseg.runtime.checkpoint import LoadedRun

OFFSETS = tuple(float(v) for v in np.round(np.arange(-2.0, 2.001, 0.25), 2))
SIZES = (0, 16, 64, 256, 1024)
#: the share of annotated objects (holes) a clean-up size may remove (fill) at most
SIZE_QUANTILE = 0.01


def annotated_sizes(truths: Iterable[np.ndarray], class_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts of the annotated objects of a class and of the holes in them.

    Args:
        truths: (H, W) class-id masks (:data:`~tomoseg.data.sources.IGNORE_INDEX` on
            unannotated pixels, which belong to neither).
        class_id: the class.

    Returns:
        ``(object sizes, hole sizes)``, int64 arrays: the 8-connected components of the class in
        each mask (as :func:`~tomoseg.inference.postprocess.clean_labels` counts them), and the
        8-connected annotated regions of other classes that it encloses (scipy's
        ``binary_fill_holes``).
    """
    from scipy.ndimage import binary_fill_holes
    from skimage.measure import label

    objects: list[np.ndarray] = [np.zeros(0, np.int64)]
    holes: list[np.ndarray] = [np.zeros(0, np.int64)]
    for t in truths:
        fg = np.asarray(t) == class_id
        if not fg.any():
            continue
        objects.append(np.bincount(label(fg, connectivity=2).ravel())[1:])
        enclosed = binary_fill_holes(fg) & ~fg & (np.asarray(t) != IGNORE_INDEX)
        if enclosed.any():
            holes.append(np.bincount(label(enclosed, connectivity=2).ravel())[1:])
    return np.concatenate(objects).astype(np.int64), np.concatenate(holes).astype(np.int64)


def size_limits(
    truths: Iterable[np.ndarray], class_id: int, quantile: float = SIZE_QUANTILE
) -> tuple[float, float]:
    """``(largest min_size, largest max_hole)`` a clean-up may use on these annotations: the
    ``quantile`` of their object sizes (0 when the class has no object), and just under that
    quantile of their hole sizes (unbounded when they have no hole). See :func:`annotated_sizes`."""
    objects, holes = annotated_sizes(truths, class_id)
    most_size = float(np.quantile(objects, quantile)) if objects.size else 0.0
    most_hole = float(np.quantile(holes, quantile)) - 1 if holes.size else float("inf")
    return most_size, most_hole


def _labels(logp: np.ndarray, class_id: int, offset: float) -> np.ndarray:
    if offset == 0:
        return logp.argmax(0).astype(np.uint8)
    z = logp.copy()
    z[class_id] += offset
    return z.argmax(0).astype(np.uint8)


def _score(preds, truths, class_id, n_classes, tolerance) -> tuple[float, float]:
    ious, bf1s = [], []
    for p, t in zip(preds, truths, strict=True):
        ignore = IGNORE_INDEX if t.dtype.kind == "i" and bool((t == IGNORE_INDEX).any()) else None
        s = score_image(t, p, n_classes, tolerance, classes_for_bf1=[class_id], ignore_label=ignore)
        ious.append(s.iou[class_id])
        bf1s.append(s.bf1[class_id])
    return float(nanmean(ious)), float(nanmean(bf1s))


def _key(score: tuple[float, float], cost: float) -> tuple[float, float, float]:
    iou, bf1 = (-1.0 if np.isnan(v) else v for v in score)
    return iou, bf1, -cost


def tune_decision(
    items: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    class_id: int,
    tolerance: float = 2.0,
    offsets: Sequence[float] = OFFSETS,
    min_sizes: Sequence[int] = SIZES,
    max_holes: Sequence[int] = SIZES,
    annotations: Iterable[np.ndarray] | None = None,
) -> tuple[Decision, dict]:
    """Choose the decision on validation images.

    Args:
        items: ``(probabilities (K, H, W) float32 after the run's decision rule, truth (H, W)
            class ids; :data:`~tomoseg.data.sources.IGNORE_INDEX` on unannotated pixels)`` per
            validation image.
        class_id: the class of interest.
        tolerance: BF1 tolerance in pixels.
        offsets, min_sizes, max_holes: the candidates (0 is always added); sizes above
            :func:`size_limits` of ``annotations`` are left out.
        annotations: the (H, W) masks whose object and hole sizes bound the clean-up (the
            training and validation masks; None: the validation truths).

    Returns:
        ``(decision, report)``; the report holds ``before`` and ``after`` (mean validation IoU
        and BF1 of the class), ``images`` and ``size_limits`` (``min_size`` and ``max_hole``
        at most, from the annotations).

    Raises:
        TomosegError: no validation image.
    """
    logps, truths = [], []
    for prob, truth in items:
        logps.append(np.log(np.clip(prob, 1e-12, None)))
        truths.append(truth)
    if not logps:
        raise TomosegError("no validation image to tune the decision on")
    k = logps[0].shape[0]
    most_size, most_hole = size_limits(truths if annotations is None else annotations, class_id)
    min_sizes = [m for m in min_sizes if m <= most_size]
    max_holes = [m for m in max_holes if m <= most_hole]
    cands = sorted({0.0, *map(float, offsets)}, key=abs)
    scored = {
        o: _score([_labels(lp, class_id, o) for lp in logps], truths, class_id, k, tolerance)
        for o in cands
    }
    best_offset = max(cands, key=lambda o: _key(scored[o], abs(o)))
    base = [_labels(lp, class_id, best_offset) for lp in logps]
    best = (Decision(class_id, best_offset), scored[best_offset])
    for ms in sorted({0, *map(int, min_sizes)}):
        for mh in sorted({0, *map(int, max_holes)}):
            if ms == 0 and mh == 0:
                continue
            d = Decision(class_id, best_offset, ms, mh)
            s = _score([clean_labels(p, d) for p in base], truths, class_id, k, tolerance)
            if _key(s, ms + mh) > _key(best[1], best[0].min_size + best[0].max_hole):
                best = (d, s)
    report = {
        "before": {"iou": scored[0.0][0], "bf1": scored[0.0][1]},
        "after": {"iou": best[1][0], "bf1": best[1][1]},
        "images": len(logps),
        "size_limits": {
            "min_size": most_size,
            "max_hole": None if np.isinf(most_hole) else most_hole,
            "quantile": SIZE_QUANTILE,
        },
    }
    return best[0], report


def validation_items(
    source: object, run: LoadedRun, split: str = "val", *, loaded: LoadedSamples | None = None
) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], str]:
    """Raw images ((H, W), or (2k + 1, H, W) for a run with 2.5D context k) and training
    masks (class ids; :data:`IGNORE_INDEX` on unannotated pixels) to tune on: ``split="val"`` gives the validation images the run used (the dataset's
    ``val`` split, else the same seeded hold-out of the training images, from the run's
    ``val_fraction`` and ``seed``); another name gives that split of a dataset folder.
    ``loaded``: the run's training samples when already read (:func:`run_samples`).

    Returns:
        ``([(id, image, truth), ...], where they come from)``.
    """
    from tomoseg.data.context import check_consecutive, with_context
    from tomoseg.data.samples import load_pairs
    from tomoseg.data.sources import DataSource, training_mask
    from tomoseg.io.datasets import load_dataset

    src = source if isinstance(source, DataSource) else DataSource.of(source)
    k = int(run.config.context)
    if split == "val":
        loaded = loaded if loaded is not None else run_samples(src, run)
        where = str(loaded.validation.get("source", "validation images"))
        _, images = loaded.with_context(  # 2.5D: the raw neighbours, as in training
            [s.image for s in loaded.train], [s.image for s in loaded.val], k
        )
        items = [
            (s.id, im, training_mask(s, loaded.ignore_label))
            for s, im in zip(loaded.val, images, strict=True)
        ]
        return items, where
    if src.root is None:
        raise TomosegError(f"split={split!r} needs a dataset folder (data=DIR)")
    spec = load_dataset(src.root)
    check_consecutive(bool(spec.consecutive), k, f"dataset {src.root}")
    samples = load_pairs(  # the one label rule, as training reads
        src.pairs(split), len(run.classes), ignore_label=spec.ignore_label,
        instances=src.instances,
    )  # fmt: skip
    images = with_context([s.image for s in samples], k)
    out = [
        (s.id, im, training_mask(s, spec.ignore_label))
        for s, im in zip(samples, images, strict=True)
    ]
    return out, f"split {split!r} of {src.root}"


def run_samples(source: object, run: LoadedRun) -> LoadedSamples:
    """The run's training and validation samples, split as in training (the run's
    ``ignore_label``, ``val_fraction`` and ``seed``)."""
    from tomoseg.data.sources import DataSource, load_training_samples

    src = source if isinstance(source, DataSource) else DataSource.of(source)
    cfg = run.config
    return load_training_samples(
        src, ignore_label=cfg.ignore_label, val_fraction=cfg.val_fraction, seed=cfg.seed
    )


def annotation_masks(loaded: LoadedSamples) -> list[np.ndarray]:
    """The training masks of the run's data, training and validation images alike (class ids,
    :data:`IGNORE_INDEX` on unannotated pixels): what bounds the clean-up sizes
    (:func:`size_limits`)."""
    from tomoseg.data.sources import training_mask

    return [training_mask(s, loaded.ignore_label) for s in [*loaded.train, *loaded.val]]


def tune_run(
    run: Predictor | str | Path,
    data: object,
    *,
    split: str = "val",
    tta: object = None,
    device: str = "auto",
    weights: str | None = None,
    intensity: str = "warn",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    overwrite: bool = False,
    allow_incomplete: bool = False,
    lock: bool = True,
) -> tuple[Decision, dict]:
    """Tune a run's decision on its validation images (or a split of a dataset) with the weights
    it delivers, write ``decision.json`` into the run and record it in ``run.json``.

    Args:
        run: the run folder, or a :class:`~tomoseg.inference.predictor.Predictor` of it (its
            device, weights, runtime and tiles are used; its TTA unless ``tta`` is given; the
            tuning itself always runs without the decision it replaces).
        data: the dataset folder (or :class:`~tomoseg.data.sources.DataSource`) it was
            trained on.
        split: ``val``: the validation images the run used; else a split of ``data``.
        tta: the test-time augmentation to tune with (None: the run's configured one); the
            decision is meant for inference with the same TTA (recorded as ``tta``).
        device: ``auto``, ``cpu`` or ``gpu`` (for a run folder).
        weights: the weights to tune for (for a run folder): ``last``, ``best``, None = the
            run's configured ``weights``. The decision records their epoch and is applied only
            to weights of that epoch (:func:`~tomoseg.inference.postprocess.read_decision`).
        intensity: images out of the run's intensity range (for a run folder):
            :class:`~tomoseg.inference.predictor.InferenceSettings`' ``intensity`` (one
            warning for the first, by default).
        progress: receives one ``image`` event per validation image segmented.
        cancel: a token (:class:`threading.Event`) checked after each image.
        overwrite: replace the run's ``decision.json`` where it has one (refused otherwise).
        allow_incomplete: tune a run whose training did not finish (for a run folder).
        lock: hold the run folder's lock (:class:`~tomoseg.io.locks.FolderLock`) while
            tuning and writing, so that no training writes it meanwhile (False: the caller
            holds it, as ``train`` does).

    The data must hold the run's classes (the check ``evaluate`` makes): a run is never
    changed by a command aimed at other data.

    ``decision.json`` is written once, at the end, atomically: a ``kill -9``, a full disk or a
    cancel leaves the run's earlier decision as it was, and the same call tunes again.

    Returns:
        ``(decision, report)`` as :func:`tune_decision`, the report with ``source``.

    Raises:
        TomosegError: not a run, an incomplete run, a decision already there without
            ``overwrite``, a dataset of other classes, no validation image, a run folder
            another process is writing.
        Cancelled: ``cancel`` was set.
    """
    import contextlib

    from tomoseg.inference.predictor import InferenceSettings, Predictor, as_predictor
    from tomoseg.io.locks import FolderLock

    if isinstance(run, Predictor):
        changes: dict[str, Any] = {"postprocess": False}
        if tta is not None:
            changes["tta"] = tta
        predictor = run.with_settings(**changes)
    else:
        settings = InferenceSettings(
            device=device,
            weights=weights,
            tta=tta,
            postprocess=False,
            intensity=intensity,
            allow_incomplete=allow_incomplete,
        )
        predictor = as_predictor(run, settings)
    run_dir = predictor.run.folder
    with FolderLock(run_dir, "run folder") if lock else contextlib.nullcontext():
        return _tune_and_record(predictor, data, split, weights, overwrite, progress, cancel)


def _tune_and_record(
    predictor: Predictor,
    data: object,
    split: str,
    weights: str | None,
    overwrite: bool,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> tuple[Decision, dict]:
    """:func:`tune_run` once the Predictor is built (and the run folder locked)."""
    from tomoseg.data.intensity import IntensityTally
    from tomoseg.inference.evaluate import check_run_matches
    from tomoseg.runtime.run_record import update_run_record

    loaded_run = predictor.run
    run_dir = loaded_run.folder
    if (run_dir / DECISION_FILE).is_file() and not overwrite:
        raise TomosegError(
            f"run {run_dir} already holds a tuned decision ({DECISION_FILE}); "
            "use overwrite=True to replace it"
        )
    loaded = run_samples(data, loaded_run)  # read once: validation images and the size bounds
    check_run_matches(loaded_run.classes, loaded.spec)  # as evaluate: never tune on other data
    items, where = validation_items(data, loaded_run, split, loaded=loaded)
    job = job_progress(
        "tune", "image", len(items), progress, cancel, hint="the same call tunes again"
    )

    def scored():
        job.start()
        tally = IntensityTally(predictor.settings.intensity)  # one warning for the images
        for image_id, image, truth in items:
            _, prob = predictor.segment(image, probabilities=True, names=[image_id], tally=tally)
            yield prob, truth
            job.advance()

    decision, report = tune_decision(
        scored(),
        class_id=loaded_run.coi_index,
        tolerance=loaded_run.config.tolerance,
        annotations=annotation_masks(loaded),
    )
    report["source"] = where
    record = decision_record(
        decision,
        split=split,
        weights=loaded_run.meta.get("which", weights),
        epoch=loaded_run.meta.get("epoch"),
        tta=list(predictor.tta),
        **report,
    )
    write_json(run_dir / DECISION_FILE, record)
    update_run_record(run_dir, decision=record)
    job.end(f"decision written to {run_dir / DECISION_FILE}")
    return decision, report
