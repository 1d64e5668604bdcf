"""Did a run converge? The validation IoU of the class of interest over the last quarter of the
run's validations, read from ``metrics.csv``.

A run has converged, for this check, when the validation IoU of the class of interest (the
weights the run delivers: averaged where averaging is on) rose by at most :data:`RISE` from
the first to the last validation of the last quarter of its validations. A run that still
rose more was stopped while it was still learning: a longer schedule (a larger time budget,
more epochs) would likely give better masks. The rule is the plateau criterion of
learning-rate schedulers (PyTorch's ``ReduceLROnPlateau`` with ``threshold_mode="abs"``) and
early stopping (Lightning's ``EarlyStopping(min_delta=...)``), applied once at the end of the
run over a window of a quarter of it; with a cosine schedule the learning rate in that
quarter is below 15 % of its peak, so a rise there is learning the schedule cut short, not
noise of a high learning rate.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: net rise of the validation IoU over the last quarter above which a run has not converged
RISE = 0.02
#: fewest validations for the check (fewer: no verdict)
MIN_VALIDATIONS = 4


@dataclass(frozen=True)
class Convergence:
    """The validation IoU of the class of interest over the last quarter of a run.

    Attributes:
        class_name: the class of interest.
        first_epoch: the first epoch of the window (1-based, as ``metrics.csv``).
        last_epoch: the run's last validated epoch.
        start: validation IoU at ``first_epoch``, in [0, 1].
        end: validation IoU at ``last_epoch``.
        rise: ``end - start``.
        max_step: the largest change between consecutive validations in the window.
        validations: validations in the window.
        converged: ``rise <= RISE``.
    """

    class_name: str
    first_epoch: int
    last_epoch: int
    start: float
    end: float
    rise: float
    max_step: float
    validations: int
    converged: bool

    def record(self) -> dict[str, Any]:
        """What ``run.json`` records under ``convergence``."""
        return {**asdict(self), "threshold": RISE}

    def text(self) -> str:
        """One line for the run's output."""
        where = f"epochs {self.first_epoch}-{self.last_epoch}"
        if self.converged:
            return (
                f"validation IoU of {self.class_name} over the last quarter ({where}): "
                f"{self.start:.3f} -> {self.end:.3f}, at most {self.max_step:.3f} between "
                "validations: converged"
            )
        return (
            f"validation IoU of {self.class_name} still rose by {self.rise:+.3f} over the last "
            f"quarter ({where}: {self.start:.3f} -> {self.end:.3f}): the run stopped before it "
            "converged; a larger time budget (or more epochs) would likely give better masks"
        )


def convergence(metrics_csv: Path, class_name: str) -> Convergence | None:
    """The convergence check of a run's ``metrics.csv``.

    Args:
        metrics_csv: a run's ``metrics.csv`` (one row per epoch; ``val_iou_<class>`` empty in
            epochs without validation).
        class_name: the class of interest.

    Returns:
        The check, or None where the file is missing or holds fewer than
        :data:`MIN_VALIDATIONS` validations of the class.
    """
    if not metrics_csv.is_file():
        return None
    column = f"val_iou_{class_name}"
    points: list[tuple[int, float]] = []
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            value = row.get(column) or ""
            try:
                iou, epoch = float(value), int(float(row.get("epoch") or "nan"))
            except ValueError:
                continue
            if math.isfinite(iou):
                points.append((epoch, iou))
    if len(points) < MIN_VALIDATIONS:
        return None
    window = points[-max(2, math.ceil(len(points) / 4)) :]
    values = [v for _, v in window]
    rise = values[-1] - values[0]
    return Convergence(
        class_name=class_name,
        first_epoch=window[0][0],
        last_epoch=window[-1][0],
        start=values[0],
        end=values[-1],
        rise=rise,
        max_step=max(abs(b - a) for a, b in zip(values, values[1:], strict=False)),
        validations=len(window),
        converged=rise <= RISE,
    )
