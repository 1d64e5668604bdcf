"""One slice of any size in bounded memory: labels computed by bands of rows, each read with
the halo of tiles that the whole-slice path blends into its rows, so the labels are the same.

The whole-slice path (:func:`~tomoseg.inference.sliding_window.infer_logits`) gives each pixel
the Gaussian-weighted mean of the tiles covering it, on MONAI's grid of tiles
(``monai.data.utils.dense_patch_slices``: rows of tiles ``interval`` apart, the last one
clamped to the slice's end). A band of output rows ``[out0, out1)`` is computed from the input
rows ``[in0, in1)`` that exactly hold the tiles covering it: MONAI lays the same tiles on that
sub-image (its first tile row starts the band's, the next ones follow ``interval`` apart, and
the last one ends the sub-image or is the slice's clamped last tile), so every output row gets
the same tiles with the same weights. Bands start at a tile row, so neighbouring bands share one
row of tiles (the cost of bands: one tile row per band).

The tuned clean-up (:func:`~tomoseg.inference.postprocess.clean_labels`: small objects and
small holes, each a connected set of fewer pixels than a size) reaches at most that many rows:
:class:`CleanStream` cleans a window of rows with a halo of ``min_size + max_hole`` rows on each
side, keeping what touches a cut edge (it is larger than the halo), and gives the rows of the
window's middle; those are the whole-slice clean-up's rows.

Memory: a band of ``in1 - in0`` rows takes about 31 bytes per pixel on a CPU (the input, its
float32 copy, the K blended logits and their weights, the argmax), so bands of about
:data:`BAND_PIXELS` keep one slice's working memory near 0.5 GB whatever its size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tomoseg.inference.postprocess import Decision, clean_labels

#: pixels of output per band when the band size is automatic (about 0.25 GB of working memory)
BAND_PIXELS = 8_000_000
#: fewest tile rows per band when automatic (each band recomputes one tile row: 1/4 at most)
MIN_TILE_ROWS = 4


def tile_interval(height: int, roi: int, overlap: float) -> int:
    """MONAI's step between rows of tiles (``monai.inferers.utils._get_scan_interval``): the
    tile itself when it spans the slice, else ``int(roi * (1 - overlap))``, at least 1."""
    if roi == height:
        return roi
    return max(int(roi * (1 - overlap)), 1)


def tile_starts(height: int, roi: int, overlap: float) -> list[int]:
    """First rows of MONAI's rows of tiles on a slice of ``height`` rows (its own
    ``dense_patch_slices``, so the grid is the one ``sliding_window_inference`` uses)."""
    from monai.data.utils import dense_patch_slices

    step = tile_interval(height, roi, overlap)
    return [int(s[0].start) for s in dense_patch_slices((height,), (roi,), (step,))]


@dataclass(frozen=True)
class Band:
    """Output rows ``[out0, out1)`` of a slice, computed from its input rows ``[in0, in1)``."""

    out0: int
    out1: int
    in0: int
    in1: int


def band_rows_for(width: int, roi: int, overlap: float, band_rows: int | None) -> int:
    """Rows of output per band: ``band_rows`` when given, else about :data:`BAND_PIXELS` pixels
    and at least :data:`MIN_TILE_ROWS` rows of tiles."""
    if band_rows:
        return int(band_rows)
    step = max(int(roi * (1 - overlap)), 1)
    return max(MIN_TILE_ROWS * step, BAND_PIXELS // max(width, 1))


def plan_bands(height: int, roi: int, overlap: float, rows: int) -> list[Band]:
    """Cut a slice of ``height`` rows into bands of about ``rows`` output rows, each starting at
    a row of tiles, with the input rows holding every tile that covers it (see the module).

    Args:
        height: rows of the slice.
        roi: tile height (at most ``height``).
        overlap: the tiles' overlap (fraction).
        rows: wanted output rows per band (rounded to whole rows of tiles, at least one).

    Returns:
        The bands in order; their output rows cover ``[0, height)`` once.
    """
    starts = tile_starts(height, roi, overlap)
    per = max(1, round(rows / tile_interval(height, roi, overlap)))
    cuts = sorted({0, *(starts[j] for j in range(per, len(starts), per)), height})
    bands = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        covering = [s for s in starts if s < b and s + roi > a]
        bands.append(Band(a, b, covering[0], min(covering[-1] + roi, height)))
    return bands


class CleanStream:
    """The tuned clean-up applied to label rows arriving band by band, giving the rows of the
    whole-slice clean-up (see the module): rows are held until ``halo`` rows below them have
    arrived. Non-finite pixels (``bad``) become background after the clean-up, as on the
    whole-slice path.

    Args:
        decision: the tuned decision (None or no clean-up: rows pass through).
        height: rows of the slice.
    """

    def __init__(self, decision: Decision | None, height: int):
        cleans = decision is not None and (decision.min_size > 0 or decision.max_hole > 0)
        self.decision = decision if cleans else None
        self.halo = decision.min_size + decision.max_hole + 1 if cleans else 0  # type: ignore[union-attr]
        self.height = height
        self._labels: np.ndarray | None = None  # (B, rows, W) held from row self._start
        self._bad: np.ndarray | None = None
        self._start = 0
        self._done = 0

    def push(
        self, y0: int, labels: np.ndarray, bad: np.ndarray | None
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Add rows ``[y0, y0 + rows)`` ((B, rows, W) uint8 labels, their (B, rows, W) bool
        non-finite mask or None); yield ``(first row, end row, (B, rows, W) labels)`` finished."""
        if bad is None:
            bad = np.zeros(labels.shape, bool)
        if self._labels is None:
            self._labels, self._bad, self._start = labels, bad, y0
        else:
            self._labels = np.concatenate([self._labels, labels], axis=1)
            self._bad = np.concatenate([self._bad, bad], axis=1)  # type: ignore[list-item]
        end = self._start + self._labels.shape[1]
        ready = self.height if end >= self.height else end - self.halo
        if ready <= self._done:
            return
        w0 = self._start  # the window: every row held (from self._done - halo, or 0)
        lab = self._labels
        if self.decision is not None:
            edges = (w0 > 0, end < self.height)
            lab = np.stack([clean_labels(m, self.decision, open_edges=edges) for m in lab])
        out = lab[:, self._done - w0 : ready - w0].copy()
        out[self._bad[:, self._done - w0 : ready - w0]] = 0  # type: ignore[index]
        yield self._done, ready, out
        self._done = ready
        keep = max(self._done - self.halo, w0) - w0  # rows before the next window: dropped
        self._labels, self._bad = self._labels[:, keep:], self._bad[:, keep:]  # type: ignore[index]
        self._start += keep


def bands_needed(height: int, width: int, roi: int, overlap: float, band_rows: int | None) -> bool:
    """Whether a slice is segmented by bands: ``band_rows`` 0 never, otherwise when it holds
    more than one band of rows."""
    if band_rows == 0:
        return False
    return height > band_rows_for(width, roi, overlap, band_rows) + roi


__all__ = ["BAND_PIXELS", "Band", "CleanStream", "bands_needed", "plan_bands", "tile_starts"]
