"""The run record ``run.json``: the one module that reads and writes it.

A run folder's ``run.json`` records what training resolved before fitting (the network's
hyperparameters, classes, normalisation, the training images' dtypes and intensity range
(``intensity``, which inference checks every image against), class counts and weights, ignore
label, where validation came from, precision, the time-budget plan) and what came after it (the
finished epochs ``epochs_done``, ``complete`` once the run is finished, the tuned decision). Training writes it; training (on resume), tuning and any other reader go through
:func:`read_run_record`, :func:`write_run_record` and :func:`update_run_record`.

The weights files (``best``/``last.safetensors``) carry the same record in their metadata, with
the epoch they come from. Both are input (a run folder may come from a colleague): they are read
with bounded JSON (:mod:`tomoseg.utils.files`) and checked by :class:`RunRecord` /
:class:`WeightsRecord` before any number in them is used: the network within the registry's
limits (:data:`~tomoseg.models.registry.MAX_WIDTH`, ...), class names as many as the network's
classes, the class of interest among them, a finite normalisation with ``upper > lower``,
positive finite class weights. Fields this version does not know are kept (a newer tomoseg may
add some).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tomoseg.data.normalization import Normalization
from tomoseg.errors import TomosegError
from tomoseg.io.writers import write_json
from tomoseg.models.registry import (
    MAX_CLASSES,
    MAX_DEPTH,
    MAX_IN_CHANNELS,
    MAX_WIDTH,
    get_architecture,
)
from tomoseg.utils.files import load_json, validated
from tomoseg.utils.format import plural

RUN_FILE = "run.json"
#: the most epochs a record may name (a time budget's plan, a weights file's epoch)
MAX_EPOCHS = 1_000_000


class NetworkRecord(BaseModel):
    """The ``model`` of a run record: the keyword arguments of
    :func:`~tomoseg.models.registry.build_model`, within the registry's limits."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    in_channels: int = Field(ge=1, le=MAX_IN_CHANNELS)
    num_classes: int = Field(ge=2, le=MAX_CLASSES)
    width: int | None = Field(default=None, ge=1, le=MAX_WIDTH)
    depth: int | None = Field(default=None, ge=2, le=MAX_DEPTH)
    deep_supervision: bool = False  # auxiliary heads in the weights (unet-resenc)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        try:
            get_architecture(v)
        except TomosegError as exc:
            raise ValueError(str(exc)) from None
        return v


class NormalizationRecord(Normalization):
    """A recorded :class:`~tomoseg.data.normalization.Normalization`: finite, ``upper > lower``."""

    model_config = ConfigDict(strict=True)

    @model_validator(mode="after")
    def _finite(self) -> NormalizationRecord:
        values = (self.lower, self.upper, self.p_low, self.p_high)
        if not all(math.isfinite(v) for v in values) or not self.upper > self.lower:
            raise ValueError(
                f"must be finite with upper > lower, got lower {self.lower}, upper {self.upper}"
            )
        return self


class PlanRecord(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    epochs: int = Field(ge=1, le=MAX_EPOCHS)


class TimeBudgetRecord(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    plan: PlanRecord | None = None


class RunRecord(BaseModel):
    """What tomoseg reads from a ``run.json`` (every field optional: older runs lack some; fields
    it does not know are kept)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: NetworkRecord | None = None
    classes: list[str] | None = Field(default=None, min_length=2, max_length=MAX_CLASSES)
    class_of_interest: str | None = None
    normalization: NormalizationRecord | None = None
    class_weights: list[float] | None = Field(default=None, max_length=MAX_CLASSES)
    config: dict[str, Any] | None = None
    time_budget: TimeBudgetRecord | None = None
    epoch: int | None = Field(default=None, ge=0, le=MAX_EPOCHS)
    #: whether training finished (None: a run written before the field, which is complete)
    complete: bool | None = None
    #: the epochs finished so far
    epochs_done: int | None = Field(default=None, ge=0, le=MAX_EPOCHS)

    @model_validator(mode="after")
    def _consistent(self) -> RunRecord:
        k = self.model.num_classes if self.model else None
        if self.classes is not None:
            if k is not None and len(self.classes) != k:
                raise ValueError(f"{len(self.classes)} class names for a network of {k} classes")
            if len(set(self.classes)) != len(self.classes):
                raise ValueError("class names must be unique")
            if self.class_of_interest is not None and self.class_of_interest not in self.classes:
                raise ValueError(f"class_of_interest {self.class_of_interest!r} is not a class")
        w = self.class_weights
        if w is not None:
            if k is not None and len(w) != k:
                raise ValueError(f"class_weights: {len(w)} weights for {k} classes")
            if not all(math.isfinite(x) and x > 0 for x in w):
                raise ValueError("class_weights must be positive finite numbers")
        return self


class WeightsRecord(RunRecord):
    """The metadata of a weights file: a run record whose network, classes and normalisation are
    required (they rebuild the network and read new data)."""

    model: NetworkRecord
    classes: list[str] = Field(min_length=2, max_length=MAX_CLASSES)
    class_of_interest: str
    normalization: NormalizationRecord


def run_record_path(run: Path | str) -> Path:
    """``<run>/run.json``."""
    return Path(run) / RUN_FILE


def read_run_record(run: Path | str, missing_ok: bool = False) -> dict[str, Any] | None:
    """The run record of the run folder ``run``.

    Args:
        run: the run folder.
        missing_ok: return None (rather than raise) when the folder has no ``run.json``.

    Raises:
        TomosegError: no ``run.json`` (unless ``missing_ok``), or one that is not a JSON object
            or fails :class:`RunRecord` (naming the file and the field).
    """
    path = run_record_path(run)
    if not path.is_file():
        if missing_ok:
            return None
        raise TomosegError(f"run: {Path(run)} holds no {RUN_FILE} (is it a tomoseg run folder?)")
    record = load_json(path)
    if not isinstance(record, dict):
        raise TomosegError(f"run: {path} is not a tomoseg run record")
    validated(RunRecord, record, str(path))
    return record


def write_run_record(run: Path | str, record: dict[str, Any]) -> Path:
    """Write ``record`` as the run's ``run.json`` (atomically) and return its path."""
    return write_json(run_record_path(run), record)


def update_run_record(run: Path | str, **fields: Any) -> dict[str, Any] | None:
    """Set ``fields`` in an existing ``run.json`` (as tuning records its decision).

    Returns:
        The updated record, or None where the folder has no ``run.json`` (a bare weights
        folder: nothing is written).
    """
    record = read_run_record(run, missing_ok=True)
    if record is None:
        return None
    record.update(fields)
    write_run_record(run, record)
    return record


def is_complete(record: dict[str, Any] | None) -> bool:
    """Whether a run record describes a finished run: its ``complete`` field (runs written
    before the field existed were written only at the end, so a record without it is complete;
    so is a folder without ``run.json``)."""
    return record is None or record.get("complete", True) is not False


def progress_text(record: dict[str, Any]) -> str:
    """``epoch E of N`` of a run record (its ``epochs_done`` and the planned epochs)."""
    done = record.get("epochs_done", 0)
    total = (record.get("config") or {}).get("epochs", "?")
    return f"epoch {done} of {total}"


def check_complete(run: Path | str, allow_incomplete: bool = False) -> None:
    """Refuse a run whose training did not finish (interrupted, or still running), in one line.

    Every command and function that loads a run for inference goes through it
    (:func:`~tomoseg.runtime.checkpoint.load_run`).

    Args:
        run: the run folder (a folder without ``run.json``, such as a bare weights folder, is
            not checked).
        allow_incomplete: use it anyway (its weights are those of the last finished epoch).

    Raises:
        TomosegError: the run's ``run.json`` says ``complete: false``.
    """
    if allow_incomplete:
        return
    record = read_run_record(run, missing_ok=True)
    if is_complete(record):
        return
    assert record is not None
    done = record.get("epochs_done", 0)
    total = (record.get("config") or {}).get("epochs", "?")
    raise TomosegError(
        f"run {Path(run)} is incomplete ({done} of {plural(total, 'epoch')} trained; "
        "interrupted, or "
        "still training): finish it (train with resume=True) or use allow_incomplete=True to "
        "use it as it is"
    )
