"""Which slices to label next: the network's uncertainty per slice, ranked with a spread over z.

Uncertainty sampling (Settles, "Active Learning Literature Survey", 2009; MONAI Label's
``Epistemic`` and ilastik's uncertainty layer): the slices where the network is least sure of
its decision are where a correction teaches it most. Neighbouring sections of a stack look
alike, so the K most uncertain slices are often one cluster; :func:`rank_slices` picks them
greedily with a minimum distance in z between picks (a "diversity" constraint, as in
core-set and batch-mode active learning), relaxed only when no slice is left far enough.

A slice's score is the mean per-pixel uncertainty (:func:`~tomoseg.inference.predictor.
uncertainty_of`, normalised entropy by default) over its pixels.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tomoseg.data.context import context_reader
from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import InferenceSettings, Predictor, as_predictor, uncertainty_of
from tomoseg.utils.progress import CancelToken, ProgressCallback, job_progress


def slice_scores(
    run: Predictor | str | os.PathLike[str],
    stack: Any,
    *,
    measure: str = "entropy",
    settings: InferenceSettings | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """The mean uncertainty of every slice of a stack.

    Args:
        run: a run folder or a :class:`~tomoseg.Predictor`.
        stack: any stack input of :func:`tomoseg.io.sources.open_source` (folder of slices,
            TIFF, Zarr, a (Z, Y, X) numpy or dask array).
        measure: ``entropy`` or ``margin`` (:func:`~tomoseg.inference.predictor.uncertainty_of`).
        settings: inference settings for a run folder.
        progress: a :class:`~tomoseg.utils.progress.ProgressEvent` per slice (job ``suggest``).
        cancel: a :class:`threading.Event`; once set, :class:`~tomoseg.Cancelled` is raised at
            the next slice.

    Returns:
        (Z,) float64 scores in [0, 1].

    Raises:
        TomosegError: as :func:`~tomoseg.io.sources.open_source` and
            :meth:`~tomoseg.Predictor.predict_proba`; an unknown ``measure``.
    """
    from tomoseg.io.sources import open_source

    uncertainty_of(np.full((2, 1, 1), 0.5), measure)  # an unknown measure fails before reading
    predictor = as_predictor(run, settings)
    src = open_source(stack)
    job = job_progress("suggest", "slice", src.n, progress, cancel)
    job.start()
    scores = np.zeros(src.n)
    with src.reader() as read:
        read = context_reader(read, src.n, predictor.context)
        for z in range(src.n):
            job.check()
            scores[z] = float(uncertainty_of(predictor.predict_proba(read(z)), measure).mean())
            job.advance(message=f"{src.ids[z]}: {scores[z]:.3f}")
    job.end()
    return scores


def rank_slices(scores: Any, n: int, *, spacing: int | None = None) -> list[int]:
    """The ``n`` slices to label next: highest score first, no two closer than ``spacing`` in z.

    Greedy: take the most uncertain slice not within ``spacing - 1`` slices of one already
    taken; when none is left, halve the spacing and go on (so ``n`` slices always come back
    when there are ``n``).

    Args:
        scores: (Z,) per-slice uncertainty (NaN: never picked).
        n: how many slices (>= 1; at most Z are returned).
        spacing: minimum distance in slices between picks (default ``max(1, Z // (2 n))``:
            the picks spread over the stack).

    Returns:
        Slice indices, in the order picked.

    Raises:
        TomosegError: ``n`` < 1, ``spacing`` < 1, scores not one-dimensional.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise TomosegError(f"scores must be one score per slice, got shape {s.shape}")
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise TomosegError(f"n={n!r}: must be an integer >= 1")
    if spacing is not None and (int(spacing) != spacing or spacing < 1):
        raise TomosegError(f"spacing={spacing!r}: must be an integer >= 1")
    gap = int(spacing) if spacing is not None else max(1, len(s) // (2 * int(n)))
    order = [int(i) for i in np.argsort(-np.nan_to_num(s, nan=-np.inf), kind="stable")]
    order = [i for i in order if np.isfinite(s[i])]
    picked: list[int] = []
    while len(picked) < min(int(n), len(order)):
        free = [i for i in order if i not in picked and all(abs(i - j) >= gap for j in picked)]
        if not free:
            gap = max(1, gap // 2)
            continue
        picked.append(free[0])
    return picked


def _stored_scores(stack: Any, measure: str) -> tuple[list[str], np.ndarray] | None:
    """The slice ids and per-slice scores of a complete ``segment_stack`` output written with
    ``uncertainty=True`` in the same ``measure`` (None for anything else)."""
    from tomoseg.io.volumes import read_stack_info

    if not isinstance(stack, (str, os.PathLike)) or not os.path.isdir(stack):
        return None
    info = read_stack_info(stack)
    unc = (info or {}).get("uncertainty") or {}
    if not info or not info.get("complete") or unc.get("measure") != measure:
        return None
    scores = np.array([np.nan if v is None else v for v in unc["scores"]], np.float64)
    return list(info["input"]["ids"]), scores


def suggest(
    run: Predictor | str | os.PathLike[str],
    stack: Any,
    *,
    n: int = 5,
    spacing: int | None = None,
    measure: str = "entropy",
    settings: InferenceSettings | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Rank a stack's slices to label next (``tomoseg suggest``).

    Args:
        run, stack, measure, settings, progress, cancel: as :func:`slice_scores`; ``stack``
            may also be a ``segment_stack`` output written with ``uncertainty=True``, whose
            per-slice scores are ranked without running the network again.
        n, spacing: as :func:`rank_slices`.

    Returns:
        ``{"slices": [{"rank", "index", "id", "score"}, ...], "scores": [Z floats],
        "measure": measure, "spacing": the spacing asked for (None: automatic)}``.

    Raises:
        TomosegError: as :func:`slice_scores` and :func:`rank_slices`.
    """
    from tomoseg.io.sources import open_source

    rank_slices([0.0], n, spacing=spacing)  # bad n or spacing fails before any inference
    stored = _stored_scores(stack, measure)
    if stored is not None:  # a segment-stack output with uncertainty: its scores
        ids, scores = stored
    else:
        src = open_source(stack)
        ids = src.ids
        scores = slice_scores(
            run, src, measure=measure, settings=settings, progress=progress, cancel=cancel
        )
    picks = rank_slices(scores, n, spacing=spacing)
    return {
        "slices": [
            {"rank": r + 1, "index": z, "id": ids[z], "score": float(scores[z])}
            for r, z in enumerate(picks)
        ],
        "scores": [float(v) for v in scores],
        "measure": measure,
        "spacing": spacing,
    }
