"""Segmenting arrays with a loaded run: the one inference path of every command and the API."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tomoseg.data.normalization import normalize
from tomoseg.errors import TomosegError
from tomoseg.inference.runtimes import inference_engine, resolve_runtime
from tomoseg.inference.sliding_window import check_untiled_memory, class_argmax, infer_logits
from tomoseg.runtime.checkpoint import LoadedRun, load_run
from tomoseg.runtime.device import resolve_device, resolve_precision
from tomoseg.runtime.logit_adjustment import decision_bias


def segment_batch(
    run: LoadedRun,
    images: Sequence[np.ndarray],
    tile_size: int | None = None,
    tile_batch: int | None = None,
    overlap: float | None = None,
    tiling: bool = True,
    bf16: bool | None = None,
    probabilities: bool = True,
    runtime: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment raw 2D images of one shape in one pass (tiles of all of them share batches).

    ``bf16=None`` follows the run's precision setting on this device (``auto``: bf16 autocast
    where the CPU or GPU computes bf16 natively). ``runtime`` runs the network with eager
    PyTorch (``torch``) or compiled once per loaded run (``openvino``, ``onnxruntime``; ``auto``:
    the fastest installed on CPU, PyTorch on GPU; see :mod:`tomoseg.inference.runtimes`);
    None = ``run.runtime``. The
    decision applies the run's class-weight correction (:func:`decision_bias`).

    Returns:
        ``(labels (B, H, W) uint8, probabilities (B, K, H, W) float32)``; the probabilities are
        None (neither computed nor copied off the device) when ``probabilities`` is False.
    """
    cfg = run.config
    dev = next(run.model.parameters()).device
    if bf16 is None:
        bf16 = resolve_precision(cfg.precision, dev) == "bf16-mixed"
    if not tiling and dev.type == "cpu":
        h, w = images[0].shape
        check_untiled_memory(
            (h * len(images), w), run.meta["model"]["width"] or 16, len(run.classes)
        )
    x = torch.from_numpy(np.stack([normalize(im, run.normalization) for im in images]))[:, None]
    engine = inference_engine(run.model, run.runtime if runtime is None else runtime, bf16)
    logits = infer_logits(
        engine,
        x.to(dev),
        tile_size or cfg.tile_size,
        cfg.tile_overlap if overlap is None else overlap,
        tile_batch or cfg.tile_batch,
        tiling=tiling,
        autocast_bf16=bf16 and engine is run.model,
    )
    bias = decision_bias(run.meta.get("class_weights"), cfg.decision)
    if bias is not None:
        logits = logits + bias.to(logits.device)[None, :, None, None]
    labels = class_argmax(logits).to(torch.uint8).cpu().numpy()  # softmax keeps the argmax
    return labels, torch.softmax(logits, 1).cpu().numpy() if probabilities else None


def segment(run: LoadedRun, image: np.ndarray, **kwargs) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment one raw 2D image (see :func:`segment_batch` for the options).

    Returns:
        ``(labels (H, W) uint8, probabilities (K, H, W) float32 or None)``.
    """
    labels, prob = segment_batch(run, [image], **kwargs)
    return labels[0], None if prob is None else prob[0]


def as_image(image: object, name: str = "image") -> np.ndarray:
    """Check an array given to the API: a 2D grayscale image of integers or floats.

    Raises:
        TomosegError: not 2D (after dropping leading length-1 axes), or not numeric.
    """
    arr = np.asarray(image)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise TomosegError(f"{name} must be a 2D (H, W) array, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TomosegError(f"{name} must hold integers or floats, got {arr.dtype}")
    if min(arr.shape) < 1:
        raise TomosegError(f"{name} is empty (shape {arr.shape})")
    return arr


class Predictor:
    """Segment 2D arrays with a trained run: ``tomoseg``'s inference for notebooks and scripts.

    The same path as ``tomoseg predict``, ``evaluate`` and ``segment-stack``: the run's intensity
    normalisation, overlapping tiles blended by MONAI's ``sliding_window_inference`` (memory
    bounded whatever the image size), the run's precision and decision rule.

    Example::

        p = Predictor.from_run("runs/xct")
        labels = p.predict(image)          # (H, W) uint8 class ids
        prob = p.predict_proba(image)      # (K, H, W) float32, sums to 1 over K

    Attributes:
        model: the ``torch.nn.Module`` (in eval mode, on the chosen device).
        classes: class names; ``labels == k`` is ``classes[k]``.
        class_of_interest: the run's class of interest.
        run: the underlying :class:`~tomoseg.runtime.checkpoint.LoadedRun`.
    """

    def __init__(
        self,
        run: LoadedRun,
        *,
        tile_size: int | None = None,
        tile_batch: int | None = None,
        runtime: str = "auto",
    ):
        self.run = run
        self.tile_size, self.tile_batch = tile_size, tile_batch
        dev = next(run.model.parameters()).device
        run.runtime = resolve_runtime(runtime, dev)  # an unavailable runtime fails here

    @classmethod
    def from_run(
        cls,
        run: str | os.PathLike[str],
        *,
        device: str = "auto",
        which: str = "best",
        tile_size: int | None = None,
        tile_batch: int | None = None,
        runtime: str = "auto",
    ) -> Predictor:
        """Load a run folder written by ``tomoseg train`` (or one of its ``.safetensors`` files).

        Args:
            run: run folder or weights file.
            device: ``auto`` (CUDA when available), ``cpu`` or ``gpu``.
            which: ``best`` (by validation IoU of the class of interest) or ``last``.
            tile_size: tile side in px (default: the run's setting; 0 = automatic).
            tile_batch: tiles per forward pass (default: the run's setting).
            runtime: ``auto`` (today ``torch``: on CPU with BatchNorm folded, channels-last),
                ``torch``, ``openvino`` or ``onnxruntime`` (built once, on first use).

        Raises:
            TomosegError: not a run, corrupted weights, ``which``, ``device`` or ``runtime``
                unknown, or a runtime that is not installed.
        """
        if which not in ("best", "last"):
            raise TomosegError(f"which must be 'best' or 'last', got {which!r}")
        loaded = load_run(Path(run), which, device=resolve_device(device))
        return cls(loaded, tile_size=tile_size, tile_batch=tile_batch, runtime=runtime)

    @property
    def model(self) -> torch.nn.Module:
        return self.run.model

    @property
    def classes(self) -> list[str]:
        return list(self.run.classes)

    @property
    def class_of_interest(self) -> str:
        return self.run.class_of_interest

    def _segment(self, image: object, probabilities: bool):
        return segment(
            self.run,
            as_image(image),
            tile_size=self.tile_size,
            tile_batch=self.tile_batch,
            probabilities=probabilities,
        )

    def predict(self, image: object) -> np.ndarray:
        """Class ids of one image.

        Args:
            image: (H, W) array, any size, integer or float dtype (raw intensities, as read from
                the files the run was trained on).

        Returns:
            (H, W) uint8 class ids.
        """
        return self._segment(image, False)[0]

    def predict_proba(self, image: object) -> np.ndarray:
        """Class probabilities of one image after the run's decision rule (softmax of the
        adjusted logits, so ``predict`` is their argmax).

        Returns:
            (K, H, W) float32.
        """
        prob = self._segment(image, True)[1]
        assert prob is not None
        return prob
