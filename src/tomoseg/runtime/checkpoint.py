"""The run's weights on disk: safetensors with tomoseg metadata (no pickle), and loading them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from tomoseg.config.schema import TrainConfig
from tomoseg.data.intensity import IntensityRange
from tomoseg.data.normalization import Normalization
from tomoseg.errors import TomosegError
from tomoseg.models.registry import build_model
from tomoseg.runtime.package import is_package, load_package
from tomoseg.runtime.run_record import (
    RUN_FILE,  # noqa: F401 - the run record's owner names it
    WeightsRecord,
    check_complete,
    read_run_record,
)
from tomoseg.utils.files import loads_json, validated
from tomoseg.utils.format import pydantic_message

# ----------------------------------------------------------------------------- runs on disk


def weights_metadata(meta: dict) -> dict[str, str]:
    """Metadata stored inside a safetensors file (strings only)."""
    return {"tomoseg": json.dumps(meta)}


@dataclass(frozen=True)
class LoadedRun:
    """A trained network ready for inference, with what it needs to read new data (immutable:
    how it segments is the :class:`~tomoseg.inference.predictor.Predictor`'s settings)."""

    path: Path
    model: torch.nn.Module
    classes: list[str]
    class_of_interest: str
    normalization: Normalization
    config: TrainConfig
    meta: dict = field(repr=False)
    #: the ``.safetensors`` file the weights came from (``last``/``best`` as resolved)
    weights_file: Path | None = None
    #: the training images' dtypes and intensity range (None: a run written before runs
    #: recorded it; its images are never checked)
    intensity: IntensityRange | None = None
    #: the folder of the run's files (``decision.json``) where it is not ``path`` (a
    #: bioimage.io package: :mod:`tomoseg.runtime.package`)
    files: Path | None = None
    #: another tool's package: its preprocessing of each whole image, after ``normalization``
    #: (then the identity): (H, W) float32 -> (C, H, W) float32 (None: tomoseg's own)
    prepare: Any = None

    @property
    def folder(self) -> Path:
        """The run folder (the folder of a ``.safetensors`` file given directly)."""
        if self.files is not None:
            return self.files
        return self.path.parent if self.path.suffix == ".safetensors" else self.path

    @property
    def coi_index(self) -> int:
        """Index of the class of interest."""
        return self.classes.index(self.class_of_interest)


def run_config(meta: dict) -> TrainConfig:
    """The run's resolved training configuration: the one source of inference settings (tile
    size, overlap, precision, decision rule). A run written before a setting existed gets the
    value that run was trained with (``decision: weighted`` before the calibrated decision)."""
    cfg = dict(meta.get("config") or {})
    cfg.setdefault("decision", "weighted")
    cfg.setdefault("weights", "best")  # runs written before the setting delivered best
    known = TrainConfig.model_fields
    try:
        return TrainConfig.model_validate({k: v for k, v in cfg.items() if k in known})
    except ValidationError as exc:
        raise TomosegError(f"config: {pydantic_message(exc)}") from None


WEIGHTS = ("last", "best")


def weights_file_metadata(wfile: Path) -> object:
    """The tomoseg metadata of a safetensors file as parsed (None where it has none), read with
    bounded JSON (:func:`~tomoseg.utils.files.loads_json`); not yet checked (:class:`WeightsRecord`).

    Raises:
        SafetensorError, OSError: not a readable safetensors file.
        TomosegError: metadata that is not bounded JSON.
    """
    from safetensors import safe_open

    with safe_open(str(wfile), framework="pt") as f:
        text = (f.metadata() or {}).get("tomoseg")
    return None if text is None else loads_json(text, f"{wfile} (metadata)")


def delivered_weights(run: Path) -> str:
    """Which weights a run folder delivers when not told: its configured ``weights`` (``last``
    by default; ``best`` for runs written before the setting existed), read from the metadata
    of its weights files. ``best`` where the folder has no weights (``load_run`` then says what is
    missing); the file itself where its metadata is unreadable (``load_run`` then says why)."""
    for which in WEIGHTS:
        wfile = Path(run) / f"{which}.safetensors"
        if wfile.is_file():
            try:
                meta = weights_file_metadata(wfile)
                return run_config(meta).weights if isinstance(meta, dict) else "best"
            except (SafetensorError, OSError, ValueError):  # TomosegError among them
                return which  # load_run reads it and says what is wrong with it
    return "best"


def _pretrained_message(folder: Path) -> str:
    return (
        f"{folder} holds pretrained weights without classes (tomoseg pretrain): train a run "
        f"from them on labelled data first (init={str(folder)!r})"
    )


def load_run(
    run: Path,
    weights: str | None = None,
    device: torch.device | None = None,
    *,
    allow_incomplete: bool = False,
) -> LoadedRun:
    """Load a run folder written by ``tomoseg train`` (weights via safetensors: no pickle), or a
    bioimage.io package written by ``tomoseg export`` (:mod:`tomoseg.runtime.package`).

    Args:
        run: run folder (holding ``run.json`` and ``<weights>.safetensors``), a
            ``.safetensors`` file, or a package (``.zip``, ``rdf.yaml``; ``weights`` and
            ``allow_incomplete`` do not apply).
        weights: ``last`` (the end of the schedule) or ``best`` (by validation IoU of the class
            of interest); None = the run's configured ``weights`` (:func:`delivered_weights`).
            Ignored when ``run`` is a ``.safetensors`` file.
        device: where to put the model (CPU by default).
        allow_incomplete: load a run whose training did not finish (``run.json`` says
            ``complete: false``: interrupted, or still training); refused otherwise.

    Raises:
        TomosegError: an incomplete run (unless ``allow_incomplete``), missing or corrupted
            files, weights that do not fit the recorded model, an unknown ``weights``.
    """
    if weights is not None and weights not in WEIGHTS:
        raise TomosegError(f"weights: must be 'last' or 'best', got {weights!r}")
    run = Path(run)
    if is_package(run):
        fields = load_package(run, device)
        return LoadedRun(config=run_config(fields["meta"]), **fields)
    folder = run.parent if run.suffix == ".safetensors" else run
    if (read_run_record(folder, missing_ok=True) or {}).get("pretrained"):
        raise TomosegError(_pretrained_message(folder))
    check_complete(folder, allow_incomplete)
    if run.suffix != ".safetensors" and weights is None:
        weights = delivered_weights(run)
    wfile = run if run.suffix == ".safetensors" else run / f"{weights}.safetensors"
    if not wfile.is_file():
        raise TomosegError(f"no trained weights at {wfile} (is {run} a tomoseg run folder?)")
    try:
        meta = weights_file_metadata(wfile)
    except (SafetensorError, OSError) as exc:
        raise TomosegError(f"corrupted checkpoint {wfile}: {str(exc).splitlines()[0]}") from None
    if not isinstance(meta, dict) or "model" not in meta:
        raise TomosegError(f"{wfile} is not a tomoseg checkpoint (no tomoseg metadata)")
    if meta.get("pretrained"):
        raise TomosegError(_pretrained_message(wfile.parent))
    # every number that decides an allocation is checked before the weights are read
    validated(WeightsRecord, meta, f"{wfile} (metadata)")
    try:
        config = run_config(meta)
        model = build_model(**meta["model"])
    except TomosegError as exc:
        raise TomosegError(f"{wfile} (metadata): {exc}") from None
    try:
        state = load_file(str(wfile))
    except (SafetensorError, OSError, ValueError) as exc:
        raise TomosegError(f"corrupted checkpoint {wfile}: {str(exc).splitlines()[0]}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TomosegError(
            f"checkpoint {wfile} does not fit its model: {str(exc).splitlines()[0]}"
        ) from None
    model.eval().to(device or torch.device("cpu"))
    return LoadedRun(
        path=run,
        model=model,
        classes=list(meta["classes"]),
        class_of_interest=meta["class_of_interest"],
        normalization=Normalization.model_validate(meta["normalization"]),
        config=config,
        meta=meta,
        weights_file=wfile,
        intensity=IntensityRange.model_validate(meta["intensity"])
        if meta.get("intensity")
        else None,
    )
