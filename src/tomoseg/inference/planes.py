"""The rule of orthogonal-plane segmentation, shared by ``segment_stack(planes=...)``
(:mod:`tomoseg.inference.stack_planes`, chunked) and
:meth:`~tomoseg.inference.predictor.Predictor.predict_volume` (in memory): each plane's
sections segmented on their own into class probabilities (kept as float16), and the class ids
the argmax of their sum over the planes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from tomoseg.utils.planes import NORMAL_AXIS


class SegmentsBatches(Protocol):
    """What the plane passes need of a :class:`~tomoseg.inference.predictor.Predictor`."""

    @property
    def classes(self) -> list[str]: ...

    def segment_batch(
        self, images: Sequence[np.ndarray], **kwargs: Any
    ) -> tuple[np.ndarray, np.ndarray | None]: ...


def average_planes(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """The class ids of several passes' probabilities: the argmax over classes of their sum
    (the mean, without the division that changes no argmax), each pass taken as float16 (as
    ``segment_stack`` stores them) and summed in float32 in the order given.

    Args:
        probabilities: one (K, ...) array per plane, of one shape.

    Returns:
        (...) uint8 class ids (ties go to the lower class id, as ``numpy.argmax``).
    """
    acc = np.asarray(probabilities[0], np.float16).astype(np.float32)
    for p in probabilities[1:]:
        acc += np.asarray(p, np.float16).astype(np.float32)
    return np.argmax(acc, axis=0).astype(np.uint8)


def plane_probabilities(
    predictor: SegmentsBatches, volume: np.ndarray, plane: str, batch: int = 1
) -> np.ndarray:
    """The class probabilities of every ``plane`` section of a (Z, Y, X) block of raw (checked)
    intensities, as (K, Z, Y, X) float16: the sections along the plane's normal axis are
    segmented ``batch`` at a time (:meth:`Predictor.segment_batch`, ``checked=True``: the
    ``intensity`` rule was applied where the slices were read).
    """
    axis = NORMAL_AXIS[plane]
    sections = np.moveaxis(volume, axis, 0)  # (n, A, B)
    n = sections.shape[0]
    out = np.empty((n, len(predictor.classes), *sections.shape[1:]), np.float16)
    for a in range(0, n, batch):
        images = [np.ascontiguousarray(s) for s in sections[a : a + batch]]
        _, prob = predictor.segment_batch(images, probabilities=True, checked=True)
        assert prob is not None
        out[a : a + len(images)] = prob
    # (n, K, A, B) -> (K, Z, Y, X): the section axis goes back to the normal's place
    return np.moveaxis(out, 0, axis + 1)
