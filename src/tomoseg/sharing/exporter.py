"""``tomoseg export``: a trained run as a bioimage.io model package, a TorchScript or an ONNX file
(see :mod:`tomoseg.sharing.prepare` for what every format shares)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from tomoseg.errors import TomosegError
from tomoseg.io.writers import atomic_write, write_text
from tomoseg.sharing.files import need, normalisation_record, write_json_text, write_network_file
from tomoseg.sharing.prepare import (
    FORMATS,
    Exported,
    Prepared,
    check_reproduces,
    onnx_diff,
    prepare,
    torchscript_diff,
)
from tomoseg.utils.files import load_json


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise TomosegError(f"out={out} is a folder; give a file name")
    if out.exists() and not overwrite:
        raise TomosegError(f"{out} exists; use overwrite=True to replace it")


def _network_file(fmt: str, prep: Prepared, out: Path) -> Exported:
    """``export --format torchscript|onnx``: the file and its normalisation JSON beside it."""
    if fmt == "onnx":
        need("onnx")
    example = torch.from_numpy(prep.normalized)
    diffs: dict[str, float] = {}

    def write(tmp: Path) -> None:
        write_network_file(fmt, prep.net, example, prep.stride, tmp)
        diffs[fmt] = (torchscript_diff if fmt == "torchscript" else onnx_diff)(tmp, prep)
        check_reproduces(diffs)

    atomic_write(out, write)
    side = out.with_name(out.name + ".json")
    meta = prep.meta
    record = normalisation_record(meta, prep.stride, prep.predictor.context)
    record.update(
        format=fmt,
        weights={"which": meta.get("which"), "epoch": meta.get("epoch")},
        tolerance={"max_abs_probability_difference": diffs[fmt], "precision": "float32"},
        decision_not_applied=_decision(prep),
    )
    write_text(side, write_json_text(record))
    return Exported(out, fmt, 0.0, diffs, prep.crop, side)


def _decision(prep: Prepared) -> dict[str, Any] | None:
    """The run's tuned decision (``decision.json``), which exported networks do not apply."""
    f = prep.predictor.run.folder / "decision.json"
    return load_json(f) if f.is_file() else None


#: the file endings each format is written under (a package named ``x.onnx``, or ONNX bytes
#: named ``x.zip``, would be taken for what it is not by every tool, tomoseg included)
SUFFIXES = {
    "bioimageio": (".zip",),
    "onnx": (".onnx",),
    "torchscript": (".pt", ".pth", ".torchscript"),
}


def _check_suffix(out: Path, format: str) -> None:
    ends = SUFFIXES[format]
    suffix = out.suffix.lower()
    if suffix not in ends:
        fits = [f for f, e in SUFFIXES.items() if suffix in e]
        hint = f"format={fits[0]} writes a {suffix} file" if fits else "rename it"
        raise TomosegError(
            f"out={out.name}: a {format} file is named *{' or *'.join(ends)}; {hint}"
        )


def export_run(
    run: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    format: str = "bioimageio",
    weights: str | None = None,
    overwrite: bool = False,
    data: str | os.PathLike[str] | None = None,
    name: str | None = None,
    authors: list[str] | None = None,
    license: str = "CC-BY-4.0",
    tags: list[str] | None = None,
    evaluation: str | os.PathLike[str] | None = None,
) -> Exported:
    """Export a trained run for other tools (see :mod:`tomoseg.sharing`).

    Args:
        run: the run folder.
        out: the file to write (``.zip`` for a package).
        format: ``bioimageio`` (a bioimage.io model package, spec 0.5), ``torchscript`` or
            ``onnx`` (one file with ``<out>.json`` beside it).
        weights: ``last`` or ``best`` (None: the run's delivered weights).
        overwrite: replace ``out``.
        data: the dataset to take the test image from (default: the run's training data).
        name, authors, license, tags, evaluation: the package's name (default: the run
            folder's), authors (default: the user's login name), licence (SPDX id), extra
            tags, and a ``tomoseg evaluate`` report (folder or ``metrics.json``) whose test
            scores its README gives.

    Returns:
        :class:`Exported`.

    Raises:
        TomosegError: an unknown ``format``, ``out`` exists (``overwrite``), an incomplete
            run, a network that cannot be traced (naming the layer), exported weights that do
            not reproduce tomoseg's probabilities, a package that fails validation (the
            validator's first complaint), the ``export`` extra not installed.
    """
    t0 = time.perf_counter()
    if format not in FORMATS:
        raise TomosegError(f"format={format!r}: choose {', '.join(FORMATS)}")
    out = Path(out)
    _check_suffix(out, format)
    _check_out(out, overwrite)
    if format == "bioimageio":
        for module in ("bioimageio.spec", "onnx"):
            need(module)
        from tomoseg.runtime.package import check_license

        check_license(license)
    prep = prepare(Path(run), weights=weights, data=data)
    if format == "bioimageio":
        from tomoseg.sharing.bioimageio import write_package

        result = write_package(
            prep, out, name=name, authors=authors, license=license, tags=tags or [],
            evaluation=Path(evaluation) if evaluation else None,
        )  # fmt: skip
    else:
        result = _network_file(format, prep, out)
    result.seconds = time.perf_counter() - t0
    return result
