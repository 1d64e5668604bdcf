"""What every export format shares: the run is loaded as tomoseg segments with it (its delivered
weights, or ``weights``), its network is copied into :class:`~tomoseg.sharing.network.TomosegNetwork`
(logits plus the calibrated decision bias), a crop of a real training image is the test input,
tomoseg's own probabilities on it (fp32, the whole crop in one pass, without the tuned
decision) are the reference, and every written network is run on it and compared: the largest
absolute probability difference is reported (and a package's test output is tomoseg's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tomoseg.data.context import context_reader
from tomoseg.data.normalization import normalize
from tomoseg.data.sources import DataSource
from tomoseg.errors import TomosegError
from tomoseg.inference.predictor import Predictor
from tomoseg.io.datasets import ItemReader, expand_pairs
from tomoseg.runtime.logit_adjustment import decision_bias
from tomoseg.sharing.files import (
    onnx_scores,
    softmax,
)
from tomoseg.sharing.network import TomosegNetwork
from tomoseg.utils.files import load_json

#: what ``format`` may be
FORMATS = ("bioimageio", "onnx", "torchscript")
#: the largest side of the test crop (px)
TEST_SIDE = 256
#: exported probabilities must match tomoseg's within this (fp32 on the CPU)
TOLERANCE = 1e-4


@dataclass
class Exported:
    """What :func:`export_run` wrote and measured.

    Attributes:
        path: the file written (``.zip`` package, ``.pt`` TorchScript, ``.onnx``).
        format: ``bioimageio``, ``torchscript`` or ``onnx``.
        seconds: wall time of the export (and, for a package, its validation).
        max_abs_diff: per weights format, the largest absolute difference of the class
            probabilities it gives on the test input from tomoseg's (fp32).
        test_input: the test crop's source (image file and crop) and shape.
        sidecar: the JSON beside a TorchScript / ONNX file (None for a package).
    """

    path: Path
    format: str
    seconds: float
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    test_input: dict[str, Any] = field(default_factory=dict)
    sidecar: Path | None = None


@dataclass
class Prepared:
    """A loaded run ready to export: the network, the test crop and tomoseg's answer on it."""

    predictor: Predictor
    meta: dict[str, Any]
    record: dict[str, Any]
    net: TomosegNetwork
    stride: int
    raw: np.ndarray  # (1, C, h, w) float32 raw intensities
    normalized: np.ndarray  # (1, C, h, w) float32 in [0, 1]
    reference: np.ndarray  # (1, K, h, w) float32 probabilities
    crop: dict[str, Any]


def _training_image(run: Path, record: dict[str, Any], data: Path | None, context: int):
    """The first training image of the run's data (with its 2.5D context) and its name."""
    try:
        source = (
            DataSource.of(data)
            if data is not None
            else DataSource.from_record(record.get("data"), record.get("classes"), run)
        )
        items = expand_pairs(source.pairs("train"))
    except TomosegError as exc:
        raise TomosegError(
            f"the test input is a crop of a training image, but the run's training data cannot "
            f"be read ({exc}); give data=DIR"
        ) from None
    if not items:
        raise TomosegError("the run's training data holds no image; give data=DIR")
    with ItemReader() as reader:
        image = context_reader(lambda i: reader.image(items[i]), len(items), context)(0)
    return np.asarray(image), str(items[0].pair.image)


def _crop(image: np.ndarray, stride: int) -> tuple[np.ndarray, dict[str, Any]]:
    """A centred crop of at most :data:`TEST_SIDE` px whose sides are multiples of ``stride``
    (edges replicated when the image is smaller than one stride)."""
    stack = image if image.ndim == 3 else image[None]
    h, w = stack.shape[-2:]
    side = [max(stride, min(TEST_SIDE, s) // stride * stride) for s in (h, w)]
    y0, x0 = max(0, (h - side[0]) // 2), max(0, (w - side[1]) // 2)
    crop = stack[:, y0 : y0 + side[0], x0 : x0 + side[1]]
    ph, pw = side[0] - crop.shape[-2], side[1] - crop.shape[-1]
    if ph or pw:
        crop = np.pad(crop, ((0, 0), (0, ph), (0, pw)), mode="edge")
    return crop, {"y": int(y0), "x": int(x0), "height": side[0], "width": side[1]}


def prepare(
    run: Path, *, weights: str | None = None, data: str | os.PathLike[str] | None = None
) -> Prepared:
    """Load ``run`` for export (see the module's docstring).

    Raises:
        TomosegError: not a complete run, its training data unreadable (``data``), as
            :meth:`~tomoseg.Predictor.from_run`.
    """
    predictor = Predictor.from_run(
        run, device="cpu", weights=weights, runtime="torch", postprocess=False, tta="none"
    )
    loaded = predictor.run
    meta = loaded.meta
    record_file = loaded.folder / "run.json"
    record = load_json(record_file) if record_file.is_file() else {}
    hp = dict(meta["model"])
    bias = decision_bias(meta.get("class_weights"), loaded.config.decision)
    net = TomosegNetwork(
        hp["name"], hp["in_channels"], hp["num_classes"], hp["width"], hp["depth"],
        bias=None if bias is None else [float(b) for b in bias], pad=False,
    )  # fmt: skip
    # a deep-supervision run's weights also hold its auxiliary heads, used in training only: the
    # shared network is the inference one (every one of its weights must come from the run)
    wanted = net.model.state_dict()
    net.model.load_state_dict(
        {k: v for k, v in loaded.model.state_dict().items() if k in wanted}, strict=True
    )
    net.eval()
    stride = int(loaded.model.stride)
    image, where = _training_image(
        loaded.folder, record, Path(data) if data else None, predictor.context
    )
    crop, box = _crop(image, stride)
    raw = crop.astype(np.float32)[None]
    if predictor.context == 0:
        logits = predictor.logits([raw[0, 0]], tiling=False, bf16=False, checked=True)
    else:
        logits = predictor.logits([raw[0]], tiling=False, bf16=False, checked=True)
    reference = torch.softmax(logits, 1).cpu().numpy().astype(np.float32)
    normalized = normalize(raw, loaded.normalization).astype(np.float32)
    box.update(image=where, shape=list(raw.shape))
    return Prepared(predictor, meta, record, net, stride, raw, normalized, reference, box)


def _max_diff(prob: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(prob - reference).max())


def torchscript_diff(path: Path, prep: Prepared) -> float:
    """The largest probability difference of a saved TorchScript file from tomoseg's."""
    ts = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        scores = ts(torch.from_numpy(prep.normalized)).numpy()
    return _max_diff(softmax(scores), prep.reference)


def onnx_diff(path: Path, prep: Prepared) -> float:
    """The largest probability difference of a saved ONNX file (ONNX Runtime) from tomoseg's."""
    return _max_diff(softmax(onnx_scores(path, prep.normalized)), prep.reference)


def check_reproduces(diffs: dict[str, float]) -> None:
    """Refuse an export whose weights do not give tomoseg's probabilities.

    Raises:
        TomosegError: a difference above :data:`TOLERANCE`, naming the format.
    """
    for fmt, d in diffs.items():
        if not d <= TOLERANCE:
            raise TomosegError(
                f"the exported {fmt} weights give probabilities {d:.3g} away from tomoseg's "
                f"on the test input (more than {TOLERANCE:g}); not written"
            )
