"""Choose the decision and clean-up on validation images (nnU-Net chooses its post-processing
the same way: keep a step only where it improves the validation metric).

Stage 1 picks the offset added to the class of interest's logit (after the calibrated decision
rule) that maximises the mean validation IoU of that class, ties broken by BF1, then by the
smaller offset. Stage 2, at that offset, picks the smallest-object and hole sizes the same way.
Offsets and sizes are searched on a grid; the identity (offset 0, no clean-up) is always a
candidate, so the chosen decision is never worse on the validation images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from tomoseg.errors import TomosegError
from tomoseg.inference.postprocess import DECISION_FILE, Decision, clean_labels, decision_record
from tomoseg.io.writers import write_json
from tomoseg.metrics.segmentation import nanmean, score_image

OFFSETS = tuple(float(v) for v in np.round(np.arange(-2.0, 2.001, 0.25), 2))
SIZES = (0, 16, 64, 256, 1024)


def _labels(logp: np.ndarray, class_id: int, offset: float) -> np.ndarray:
    if offset == 0:
        return logp.argmax(0).astype(np.uint8)
    z = logp.copy()
    z[class_id] += offset
    return z.argmax(0).astype(np.uint8)


def _score(preds, truths, class_id, n_classes, tolerance) -> tuple[float, float]:
    ious, bf1s = [], []
    for p, t in zip(preds, truths, strict=True):
        s = score_image(t, p, n_classes, tolerance, classes_for_bf1=[class_id])
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
) -> tuple[Decision, dict]:
    """Choose the decision on validation images.

    Args:
        items: ``(probabilities (K, H, W) float32 after the run's decision rule, truth (H, W)
            class ids)`` per validation image.
        class_id: the class of interest.
        tolerance: BF1 tolerance in pixels.
        offsets, min_sizes, max_holes: the candidates (0 is always added).

    Returns:
        ``(decision, report)``; the report holds ``before`` and ``after`` (mean validation IoU
        and BF1 of the class) and ``images``.

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
    }
    return best[0], report


def tune_run(
    run_dir: str | Path, data: str | Path, *, split: str = "val", tta: object = None
) -> tuple[Decision, dict]:
    """Tune a run's decision on a split of a dataset and write ``decision.json`` into the run.

    Returns:
        ``(decision, report)`` as :func:`tune_decision`.
    """
    from tomoseg.inference.predictor import segment
    from tomoseg.io.datasets import load_dataset, read_pair, split_pairs
    from tomoseg.runtime.checkpoint import load_run

    run = load_run(Path(run_dir), "best")
    spec = load_dataset(data)
    pairs = split_pairs(data, split)

    def items():
        for p in pairs:
            image, truth = read_pair(p, len(spec.classes))
            _, prob = segment(run, image, probabilities=True, postprocess=False, tta=tta)
            yield prob, truth

    decision, report = tune_decision(
        items(), class_id=run.coi_index, tolerance=run.config.tolerance
    )
    write_json(Path(run_dir) / DECISION_FILE, decision_record(decision, split=split, **report))
    return decision, report
