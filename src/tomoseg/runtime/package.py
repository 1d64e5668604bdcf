"""Running a bioimage.io model package (``.zip`` or ``rdf.yaml``) as a tomoseg run.

A package written by ``tomoseg export`` loads as the run it came from
(:func:`load_package`): the network rebuilt from its ``pytorch_state_dict`` weights (the
architecture and hyperparameters in its ``config.tomoseg``), the input normalisation read from
its preprocessing (``scale_linear`` + ``clip`` [0, 1]), the calibrated decision bias from the
weights, and the tuned decision from its ``decision.json`` attachment, so that
:class:`~tomoseg.Predictor` (and ``predict``, ``evaluate``, ``segment-stack``) segments with it
exactly as with the run, tiles and all.

The package is read and validated by ``bioimageio.spec`` (``pip install 'tomoseg[export]'``).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import math
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import torch

from tomoseg.errors import TomosegError

#: file names that make a path a bioimage.io package
PACKAGE_NAMES = ("rdf.yaml", "bioimageio.yaml")

_PATCHED = False


def is_package(path: str | Path) -> bool:
    """Whether ``path`` names a bioimage.io package: a ``.zip`` file, an ``rdf.yaml`` /
    ``*.bioimageio.yaml`` description, or an unpacked package's folder (an ``rdf.yaml`` and no
    ``.safetensors`` weights of a run)."""
    p = Path(path)
    if p.is_dir():
        return (p / "rdf.yaml").is_file() and not any(p.glob("*.safetensors"))
    return p.suffix.lower() == ".zip" or p.name.endswith(PACKAGE_NAMES)


def bioimageio_spec() -> Any:
    """``bioimageio.spec``, imported, with its serializers fixed for pydantic >= 2.14.

    bioimageio.spec 0.5.12 calls pydantic's serializer handler as ``handler(value, info)``;
    pydantic-core 2.14 takes the second argument as an index key and refuses the
    ``SerializationInfo``, so every package description fails to validate. The three
    serializers that do so are recompiled once without that argument (what pydantic's handler
    does with it is nothing: it was ignored before 2.14).

    Raises:
        TomosegError: ``bioimageio.spec`` is not installed (naming ``tomoseg[export]``).
    """
    global _PATCHED
    try:
        import bioimageio.spec as spec
    except ImportError:
        raise TomosegError(
            "bioimage.io packages need the Python package bioimageio.spec: "
            "pip install 'tomoseg[export]'"
        ) from None
    if not _PATCHED:
        _fix_serializers()
        _PATCHED = True
    return spec


def _fix_serializers() -> None:
    from bioimageio.spec._internal import io_packaging
    from bioimageio.spec._internal import validated_string_with_inner_node as inner
    from bioimageio.spec.model import v0_4

    marker = "info,  # pyright: ignore[reportArgumentType]  # taken from pydantic docs"
    serializer = inner.ValidatedStringWithInnerNode.__dict__.get("_serialize")
    funcs = [io_packaging.package_file_descr_serializer, v0_4.package_weights]
    funcs.append(getattr(serializer, "wrapped", serializer))
    for f in funcs:
        try:
            src = textwrap.dedent(inspect.getsource(f))
        except (OSError, TypeError):
            continue
        if marker not in src:
            continue  # a bioimageio.spec that calls the handler as pydantic expects
        src = src.replace(marker, "")
        src = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith("@"))
        namespace: dict[str, Any] = {}
        exec(
            compile(src, inspect.getsourcefile(f) or "<bioimageio>", "exec"),
            f.__globals__,
            namespace,
        )  # noqa: S102
        f.__code__ = namespace[f.__name__].__code__


def _loc(parts: Any) -> str:
    """A pydantic error location without its internal steps (``function-after[...]``)."""
    return ".".join(str(p) for p in parts if "[" not in str(p) and "(" not in str(p))


def _short(msg: str, limit: int = 160) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def first_complaint(summary_or_exc: Any) -> str:
    """The validator's first complaint, one line (``loc: message``, at most 160 characters of
    message)."""
    errors = getattr(summary_or_exc, "errors", None)
    if callable(errors):  # a pydantic ValidationError
        try:
            first = errors()[0]
            loc = _loc(first.get("loc", ()))
            return f"{loc}: {_short(first.get('msg'))}" if loc else _short(first.get("msg"))
        except Exception:  # noqa: BLE001 - fall back to the message
            pass
    for d in getattr(summary_or_exc, "details", None) or []:
        for e in getattr(d, "errors", []) or []:
            loc = _loc(getattr(e, "loc", ()))
            return f"{loc}: {_short(e.msg)}" if loc else _short(e.msg)
    text = str(summary_or_exc).strip().splitlines()
    return _short(text[0]) if text else type(summary_or_exc).__name__


def check_license(license: str) -> None:
    """Refuse a licence that is not an SPDX id (as the package's validator would, but before
    the network is traced).

    Raises:
        TomosegError: naming the licence.
    """
    bioimageio_spec()
    from bioimageio.spec._internal.license_id import LicenseId

    try:
        LicenseId(license)
    except ValueError:
        raise TomosegError(
            f"the package fails validation: license={license!r} is not an SPDX licence id "
            "(e.g. CC-BY-4.0, MIT)"
        ) from None


def read_package(path: Path) -> Any:
    """The validated model description of a package.

    Raises:
        TomosegError: not found, not a model, fails validation (the first complaint).
    """
    spec = bioimageio_spec()
    if not path.exists():
        raise TomosegError(f"no bioimage.io package at {path}")
    descr = spec.load_description(str(path), perform_io_checks=False)
    if getattr(descr, "type", None) != "model" or not hasattr(descr, "inputs"):
        summary = getattr(descr, "validation_summary", descr)
        raise TomosegError(
            f"{path} fails validation as a bioimage.io model: {first_complaint(summary)}"
        )
    return descr


def _axes(tensor: Any) -> list[str]:
    return [
        str(getattr(a, "type", "")) if a.type in ("batch", "channel") else str(a.id)
        for a in tensor.axes
    ]


def check_2d(descr: Any, path: Path) -> None:
    """Refuse a package that is not a 2D segmentation network: one input and one output with
    axes (batch, channel, y, x) (batch and channel optional).

    Raises:
        TomosegError: naming the axes found.
    """
    for role, tensors in (("input", descr.inputs), ("output", descr.outputs)):
        if len(tensors) != 1:
            raise TomosegError(
                f"{path} is not a 2D segmentation network: it has {len(tensors)} {role}s"
            )
        axes = _axes(tensors[0])
        if [a for a in axes if a not in ("batch", "channel")] != ["y", "x"]:
            raise TomosegError(
                f"{path} is not a 2D segmentation network: its {role} has axes "
                f"({', '.join(axes)}), not (batch, channel, y, x)"
            )


def _normalization(descr: Any, path: Path) -> dict[str, float]:
    """tomoseg's fixed percentile clip from the input's ``scale_linear`` + ``clip`` [0, 1]."""
    gain = offset = None
    clipped = False
    for op in descr.inputs[0].preprocessing:
        kw = getattr(op, "kwargs", None)
        if op.id == "scale_linear":
            gain, offset = float(kw.gain), float(kw.offset)
        elif op.id == "clip":
            clipped = (kw.min, kw.max) == (0.0, 1.0)
    if gain is None or not clipped or not gain > 0 or not math.isfinite(gain):
        raise TomosegError(
            f"{path}: its preprocessing is not tomoseg's fixed clip (scale_linear, clip 0..1)"
        )
    lower = -offset / gain
    return {"lower": lower, "upper": lower + 1.0 / gain}


def _attachment(descr: Any, name: str) -> bytes | None:
    for a in descr.attachments:
        if Path(str(a.source)).name == name:
            return a.get_reader().read()
    return None


def _files_folder(path: Path, decision: bytes | None) -> Path:
    """A folder holding the package's ``decision.json`` (beside an ``rdf.yaml``; for a zip, a
    folder in the temporary directory named by the decision's SHA-256)."""
    digest = hashlib.sha256(decision or b"").hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"tomoseg-package-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    if decision is not None and not (folder / "decision.json").is_file():
        tmp = folder / f".decision.{digest}.part"
        tmp.write_bytes(decision)
        tmp.replace(folder / "decision.json")
    return folder


def load_package(path: Path, device: torch.device | None = None) -> dict[str, Any]:
    """A package written by ``tomoseg export``, as the fields of a
    :class:`~tomoseg.runtime.checkpoint.LoadedRun` but its ``config`` (which
    :func:`~tomoseg.runtime.checkpoint.run_config` makes of ``meta``).

    Raises:
        TomosegError: not found, fails validation, not a 2D segmentation network (its axes),
            not a tomoseg package (no ``config.tomoseg``, no ``pytorch_state_dict``), weights
            that do not fit.
    """
    from tomoseg.data.normalization import Normalization
    from tomoseg.models.registry import build_model

    if path.is_dir():
        path = path / "rdf.yaml"
    descr = read_package(path)
    check_2d(descr, path)
    extra = getattr(descr.config, "model_extra", None) or {}
    info = extra.get("tomoseg")
    sd = descr.weights.pytorch_state_dict
    if not isinstance(info, dict) or "model" not in info or sd is None:
        raise TomosegError(
            f"{path} is not a tomoseg package (no config.tomoseg with pytorch_state_dict "
            "weights): tomoseg runs the packages that tomoseg export writes"
        )
    try:
        state = torch.load(
            io.BytesIO(sd.get_reader().read()), map_location="cpu", weights_only=True
        )
        model = build_model(**info["model"])
        model.load_state_dict(
            {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        )
        bias = state["bias"].flatten().double()
    except (RuntimeError, KeyError, OSError, ValueError) as exc:
        raise TomosegError(
            f"{path}: weights do not fit its network: {str(exc).splitlines()[0]}"
        ) from None
    model.eval().to(device or torch.device("cpu"))
    norm = _normalization(descr, path)
    decision = _attachment(descr, "decision.json")
    config = dict(info.get("config") or {})
    config["decision"] = "calibrated"
    meta = {
        "model": dict(info["model"]),
        "classes": list(info["classes"]),
        "class_of_interest": info["class_of_interest"],
        "normalization": norm,
        "config": config,
        "class_weights": [float(w) for w in torch.exp(-bias)],
        "epoch": info.get("epoch"),
        "which": info.get("weights"),
        "package": str(path),
    }
    return {
        "path": path,
        "model": model,
        "classes": list(info["classes"]),
        "class_of_interest": info["class_of_interest"],
        "normalization": Normalization(**norm),
        "meta": meta,
        "weights_file": path,
        "intensity": None,
        "files": _files_folder(path, decision),
    }
