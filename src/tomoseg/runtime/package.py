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
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
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
        if _pydantic_at_least(2, 14):  # the extra pins pydantic<2.14; other installs may not
            _fix_serializers()
        _PATCHED = True
    return spec


def _pydantic_at_least(major: int, minor: int) -> bool:
    import pydantic

    got = tuple(int(p) for p in pydantic.VERSION.split(".")[:2] if p.isdigit())
    return got >= (major, minor)


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
    if path.is_file() and path.suffix.lower() == ".zip" and not zipfile.is_zipfile(path):
        raise TomosegError(
            f"{path} is not a bioimage.io package (not a zip file) nor a tomoseg run"
        )
    try:
        descr = spec.load_description(str(path), perform_io_checks=False)
    except (ValueError, OSError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise TomosegError(
            f"{path} is not a bioimage.io package nor a tomoseg run ({_short(exc, 120)})"
        ) from None
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
    """A package, as the fields of a :class:`~tomoseg.runtime.checkpoint.LoadedRun` but its
    ``config`` (which :func:`~tomoseg.runtime.checkpoint.run_config` makes of ``meta``): one
    written by ``tomoseg export`` as its run; another tool's as :func:`load_foreign_package`
    (its weights in a :class:`PackageNetwork`, its preprocessing a :class:`PackagePreprocessing`
    of each whole image, no tuned decision).

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
        return load_foreign_package(descr, path, device)
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


# ----------------------------------------------------------------------------- other tools' packages

#: postprocessing steps whose output tomoseg turns back into class scores (others are refused)
KNOWN_POSTPROCESSING = ("softmax", "sigmoid", "ensure_dtype")


class PackagePreprocessing:
    """A package's input preprocessing, applied by bioimageio.core's own operators to each
    whole image before tomoseg tiles it (so statistics such as ``zero_mean_unit_variance`` or
    ``scale_range`` percentiles are the image's, not a tile's). Picklable: it holds the
    package's path and sets the operators up where it is first called.

    Call: (H, W) raw image (float32; non-finite pixels already 0) -> (C, H, W) float32.
    """

    def __init__(self, source: Path) -> None:
        self.source = Path(source)
        self._ops: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source, "_ops": None}

    def _setup(self) -> Any:
        from bioimageio.core.proc_setup import setup_pre_and_postprocessing

        descr = read_package(self.source)
        pre, _ = setup_pre_and_postprocessing(descr, [])
        tensor = descr.inputs[0]
        dims = tuple(str(a.id) for a in tensor.axes)
        return pre, str(tensor.id), dims

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from bioimageio.core.sample import Sample
        from bioimageio.core.tensor import Tensor

        if self._ops is None:
            self._ops = self._setup()
        pre, tid, dims = self._ops
        arr = np.asarray(image, np.float32)
        arr = arr.reshape((1,) * (len(dims) - arr.ndim) + arr.shape)
        sample = Sample(members={tid: Tensor.from_numpy(arr, dims=dims)}, stat={}, id=None)
        for op in pre:
            op(sample)
        out = np.asarray(sample.members[tid].data, np.float32)
        return out.reshape((-1, *out.shape[-2:]))  # (C, H, W)


class PackageNetwork(torch.nn.Module):
    """Another tool's network (TorchScript, ONNX or PyTorch state dict) called as tomoseg calls
    its own: (B, C, h, w) preprocessed float32 tiles -> (B, K, h, w) class scores, padded to
    the sizes the package accepts (reflect, or replicate when too small) and cropped back. A
    ``softmax`` output is taken before the softmax (the network's scores); a one-channel
    ``sigmoid`` (or plain one-channel) output ``s`` becomes the two scores ``(0, s)``.

    Attributes:
        foldable: False: tomoseg's CPU runtime does not fold BatchNorm into it.
    """

    foldable = False

    def __init__(self, run: Any, min_size: tuple[int, int], step: tuple[int, int], batch: bool):
        super().__init__()
        self._run = run
        self._probe = torch.nn.Parameter(torch.zeros(0), requires_grad=False)  # the device
        self.min_size, self.step, self.batch = min_size, step, batch

    def _size(self, n: int, d: int) -> int:
        low, step = self.min_size[d], self.step[d]
        if n <= low or not step:
            return low if step or n <= low else n
        return low + -(-(n - low) // step) * step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        th, tw = self._size(h, 0), self._size(w, 1)
        if (th, tw) != (h, w):
            ph, pw = th - h, tw - w
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
        if self.batch:
            y = self._run(x)
        else:
            y = torch.stack([self._run(x[i]) for i in range(x.shape[0])])
        if y.ndim == 3:
            y = y[:, None]
        if y.shape[1] == 1:
            y = torch.cat([torch.zeros_like(y), y], 1)
        return y[..., :h, :w].float()


def _sizes(tensor: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """(min, step) of the input's y and x axes (a fixed size: step 0)."""
    mins, steps = [], []
    for a in tensor.axes:
        if str(a.id) in ("y", "x"):
            size = a.size
            if isinstance(size, int):
                mins.append(size)
                steps.append(0)
            else:
                mins.append(int(getattr(size, "min", 1)))
                steps.append(int(getattr(size, "step", 1)))
    return (mins[0], mins[1]), (steps[0], steps[1])


def _runner(descr: Any, path: Path) -> Any:
    """A callable running the package's weights on a torch tensor: TorchScript first, then
    ONNX (ONNX Runtime, CPU), then the PyTorch state dict (bioimageio.core's loader)."""
    w = descr.weights
    if w.torchscript is not None:
        module = torch.jit.load(io.BytesIO(w.torchscript.get_reader().read()), map_location="cpu")
        module.eval()

        def run_ts(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(x.cpu()).to(x.device)

        return run_ts
    if w.onnx is not None:
        import onnxruntime as ort

        session = ort.InferenceSession(
            w.onnx.get_reader().read(), providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name

        def run_onnx(x: torch.Tensor) -> torch.Tensor:
            out = session.run(None, {name: np.ascontiguousarray(x.cpu().numpy(), np.float32)})
            return torch.from_numpy(out[0]).to(x.device)

        return run_onnx
    if w.pytorch_state_dict is not None:
        from bioimageio.core.backends.pytorch_backend import load_torch_model

        net = load_torch_model(w.pytorch_state_dict, devices=["cpu"]).eval()

        def run_sd(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return net(x.cpu()).to(x.device)

        return run_sd
    raise TomosegError(
        f"{path}: tomoseg runs TorchScript, ONNX or PyTorch state dict weights; this package has "
        + ", ".join(k for k, v in w if v is not None)
    )


def load_foreign_package(descr: Any, path: Path, device: torch.device | None) -> dict[str, Any]:
    """Another tool's 2D segmentation package as the fields of a LoadedRun (see
    :func:`load_package`).

    Raises:
        TomosegError: postprocessing other than softmax / sigmoid, weights of another format.
    """
    from tomoseg.data.normalization import Normalization

    out = descr.outputs[0]
    steps = [str(p.id) for p in out.postprocessing]
    unknown = [s for s in steps if s not in KNOWN_POSTPROCESSING]
    if unknown:
        raise TomosegError(
            f"{path}: its output postprocessing {', '.join(unknown)} is not a class decision "
            "tomoseg can take (softmax or sigmoid)"
        )
    channel = next((a for a in out.axes if a.type == "channel"), None)
    names = [str(c) for c in getattr(channel, "channel_names", [])] or ["foreground"]
    classes = names if len(names) > 1 else ["background", names[0]]
    axes = [a.type for a in descr.inputs[0].axes]
    low, step = _sizes(descr.inputs[0])
    model = PackageNetwork(_runner(descr, path), low, step, batch="batch" in axes)
    model.eval().to(device or torch.device("cpu"))
    tile = max(low) if not all(step) else None
    config: dict[str, Any] = {"model": "unet", "decision": "weighted", "precision": "32"}
    if tile:
        config["tile_size"] = tile
    meta = {
        "model": {"name": "package", "width": 16},
        "classes": classes,
        "class_of_interest": classes[-1],
        "normalization": {"lower": 0.0, "upper": 1.0},
        "config": config,
        "package": str(path),
    }
    return {
        "path": path,
        "model": model,
        "classes": classes,
        "class_of_interest": classes[-1],
        "normalization": Normalization(lower=0.0, upper=1.0, clip=False),
        "meta": meta,
        "weights_file": path,
        "intensity": None,
        "prepare": PackagePreprocessing(path),
    }
