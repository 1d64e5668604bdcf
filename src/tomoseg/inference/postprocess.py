"""The decision and clean-up chosen on validation images (as nnU-Net chooses its
post-processing): an offset on the class of interest's logit, removal of its small objects and
filling of its small holes.

Stored in the run folder as ``decision.json`` by :func:`tomoseg.inference.tuning.tune_decision`
and applied by every command that segments with the run (predict, evaluate, segment-stack, the
sweep, :class:`tomoseg.Predictor`); ``evaluate`` reports the metrics with and without it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.utils.files import load_json, validated

DECISION_FILE = "decision.json"
#: the largest logit offset a ``decision.json`` may hold (tuning searches -2..2; an offset of
#: 1e6 already decides every pixel, and stays finite in float32 and bfloat16 logits)
MAX_OFFSET = 1e6
#: the largest object or hole size (pixels) a ``decision.json`` may hold: a 65536 x 65536 slice
MAX_SIZE = 2**32


@dataclass(frozen=True)
class Decision:
    """A tuned decision for one class of interest.

    Attributes:
        class_id: the class of interest's id.
        offset: added to that class's logit after the calibrated decision rule (0 = unchanged).
        min_size: its connected objects (8-connected, in one slice) with fewer pixels become
            background (0 = keep all).
        max_hole: holes in it (background regions enclosed by it) up to this many pixels are filled
            (0 = none).
    """

    class_id: int
    offset: float = 0.0
    min_size: int = 0
    max_hole: int = 0

    @property
    def is_identity(self) -> bool:
        return self.offset == 0 and self.min_size == 0 and self.max_hole == 0


def clean_labels(
    labels: np.ndarray, decision: Decision, open_edges: tuple[bool, bool] = (False, False)
) -> np.ndarray:
    """Apply the clean-up part of a decision to one (H, W) label image (a new array).

    Small objects of the class become class 0; small holes in it become the class
    (``skimage.morphology.remove_small_objects`` / ``remove_small_holes``, connectivity 2).

    Args:
        open_edges: whether the top / bottom row is a cut through a larger slice (a band of
            rows, :mod:`tomoseg.inference.bands`): objects and holes touching a cut edge are
            kept as they are (they go on beyond it), as if a large object or background lay
            across the cut.
    """
    if decision.min_size <= 0 and decision.max_hole <= 0:
        return labels
    from skimage.morphology import remove_small_holes, remove_small_objects

    out = np.array(labels, copy=True)
    fg = out == decision.class_id
    if decision.min_size > 0:
        padded, crop = _pad_edges(fg, open_edges, True, decision.min_size)
        try:  # scikit-image >= 0.26: objects of at most max_size pixels go
            kept = remove_small_objects(padded, max_size=decision.min_size - 1, connectivity=2)
        except TypeError:  # older: objects of fewer than min_size pixels go
            kept = remove_small_objects(padded, min_size=decision.min_size, connectivity=2)
        kept = kept[crop]
        out[fg & ~kept] = 0
        fg = kept
    if decision.max_hole > 0:
        padded, crop = _pad_edges(fg, open_edges, False, decision.max_hole + 1)
        try:
            filled = remove_small_holes(padded, max_size=decision.max_hole, connectivity=2)
        except TypeError:
            filled = remove_small_holes(
                padded, area_threshold=decision.max_hole + 1, connectivity=2
            )
        out[filled[crop] & ~fg] = decision.class_id
    return out


def _pad_edges(
    mask: np.ndarray, open_edges: tuple[bool, bool], value: bool, size: int
) -> tuple[np.ndarray, slice]:
    """``mask`` with rows of ``value`` (at least ``size`` pixels) added above / below at the
    open edges: whatever touches an open edge joins them and is never small. Returns the padded
    mask and the row slice giving the original rows back."""
    top, bottom = open_edges
    if not (top or bottom):
        return mask, slice(None)
    n = -(-size // max(mask.shape[1], 1))  # rows of padding holding at least ``size`` pixels
    block = np.full((n, mask.shape[1]), value, bool)
    parts = [block] * top + [mask] + [block] * bottom
    return np.concatenate(parts), slice(
        n if top else 0, n + mask.shape[0] if top else mask.shape[0]
    )


class DecisionFields(BaseModel):
    """The ``decision`` of a ``decision.json``: class id, finite offset, bounded sizes."""

    model_config = ConfigDict(extra="forbid", strict=True)

    class_id: int = Field(ge=0)
    offset: float = Field(default=0.0, ge=-MAX_OFFSET, le=MAX_OFFSET)
    min_size: int = Field(default=0, ge=0, le=MAX_SIZE)
    max_hole: int = Field(default=0, ge=0, le=MAX_SIZE)

    @field_validator("offset")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class DecisionRecord(BaseModel):
    """What tomoseg reads from a ``decision.json`` (the tuning report's other fields are kept
    unread)."""

    model_config = ConfigDict(extra="allow", strict=True)

    decision: DecisionFields
    epoch: int | None = Field(default=None, ge=0)


def read_decision(
    run: str | Path, epoch: int | None = None, num_classes: int | None = None
) -> Decision | None:
    """The run folder's tuned decision, or None when it has none.

    Args:
        epoch: the epoch of the weights it is to be applied to (their ``run.json``-style
            metadata); a decision tuned on the weights of another epoch (``weights="last"`` when
            the best epoch was not the last) is not applied, with a warning.
        num_classes: the run's classes K: the decision's class id must be below it.

    Raises:
        TomosegError: a malformed ``decision.json`` (bounded JSON, :class:`DecisionRecord`; a
            class id that is not one of the ``num_classes``), naming the file and the field.
    """
    f = Path(run) / DECISION_FILE
    if not f.is_file():
        return None
    record = validated(DecisionRecord, load_json(f), str(f))
    decision = Decision(**record.decision.model_dump())
    if num_classes is not None and decision.class_id >= num_classes:
        raise TomosegError(
            f"malformed {f}: decision.class_id: {decision.class_id} is not a class of this run "
            f"(0..{num_classes - 1})"
        )
    tuned = record.epoch
    if epoch is not None and tuned is not None and int(tuned) != int(epoch):
        warnings.warn(
            f"{f} was tuned on the weights of epoch {tuned}, not on these (epoch {epoch}): "
            "not applied (retune with tomoseg tune)",
            TomosegWarning,
            stacklevel=2,
        )
        return None
    return decision


def decision_record(decision: Decision, **extra: object) -> dict:
    """What ``decision.json`` holds: the decision and how it was chosen."""
    return {"decision": asdict(decision), **extra}
