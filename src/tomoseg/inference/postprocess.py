"""The decision and clean-up chosen on validation images (as nnU-Net chooses its
post-processing): an offset on the class of interest's logit, removal of its small objects and
filling of its small holes.

Stored in the run folder as ``decision.json`` by :func:`tomoseg.inference.tuning.tune_decision`
and applied by every command that segments with the run (predict, evaluate, segment-stack, the
sweep, :class:`tomoseg.Predictor`); ``evaluate`` reports the metrics with and without it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tomoseg.errors import TomosegError, TomosegWarning

DECISION_FILE = "decision.json"


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


def clean_labels(labels: np.ndarray, decision: Decision) -> np.ndarray:
    """Apply the clean-up part of a decision to one (H, W) label image (a new array).

    Small objects of the class become class 0; small holes in it become the class
    (``skimage.morphology.remove_small_objects`` / ``remove_small_holes``, connectivity 2).
    """
    if decision.min_size <= 0 and decision.max_hole <= 0:
        return labels
    from skimage.morphology import remove_small_holes, remove_small_objects

    out = np.array(labels, copy=True)
    fg = out == decision.class_id
    if decision.min_size > 0:
        try:  # scikit-image >= 0.26: objects of at most max_size pixels go
            kept = remove_small_objects(fg, max_size=decision.min_size - 1, connectivity=2)
        except TypeError:  # older: objects of fewer than min_size pixels go
            kept = remove_small_objects(fg, min_size=decision.min_size, connectivity=2)
        out[fg & ~kept] = 0
        fg = kept
    if decision.max_hole > 0:
        try:
            filled = remove_small_holes(fg, max_size=decision.max_hole, connectivity=2)
        except TypeError:
            filled = remove_small_holes(fg, area_threshold=decision.max_hole + 1, connectivity=2)
        out[filled & ~fg] = decision.class_id
    return out


def read_decision(run: str | Path, epoch: int | None = None) -> Decision | None:
    """The run folder's tuned decision, or None when it has none.

    Args:
        epoch: the epoch of the weights it is to be applied to (their ``run.json``-style
            metadata); a decision tuned on the weights of another epoch (``weights="last"`` when
            the best epoch was not the last) is not applied, with a warning.

    Raises:
        TomosegError: a malformed ``decision.json``.
    """
    f = Path(run) / DECISION_FILE
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
        decision = Decision(
            **{k: data["decision"][k] for k in ("class_id", "offset", "min_size", "max_hole")}
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TomosegError(f"malformed {f}: {exc}") from None
    tuned = data.get("epoch")
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
