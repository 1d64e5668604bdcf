"""Segmenting arrays with a loaded run: the one inference path of every command and the API."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tomoseg.data.context import centre, context_reader, in_channels
from tomoseg.data.normalization import (
    check_nonfinite_rule,
    nonfinite_mask,
    normalize,
    refuse_nonfinite,
)
from tomoseg.errors import TomosegError
from tomoseg.inference.postprocess import Decision, clean_labels, read_decision
from tomoseg.inference.runtimes import inference_engine, resolve_runtime
from tomoseg.inference.sliding_window import check_untiled_memory, class_argmax, infer_logits
from tomoseg.inference.tta import parse_tta, with_tta
from tomoseg.runtime.checkpoint import LoadedRun, load_run
from tomoseg.runtime.device import resolve_device, resolve_precision
from tomoseg.runtime.logit_adjustment import decision_bias


def run_tta(run: LoadedRun, tta: object = None) -> tuple[str, ...]:
    """The TTA transforms to use: ``tta`` if given, else the run's (``run.tta``, set by a
    command's ``--tta``), else its configuration's ``tta`` (default ``none``).

    Raises:
        TomosegError: an unknown transform (one line listing the valid ones).
    """
    if tta is None:
        tta = run.tta if run.tta is not None else run.config.tta
    return parse_tta(tta)  # type: ignore[arg-type]


def run_decision(run: LoadedRun, postprocess: bool | None = None) -> Decision | None:
    """The run's tuned decision (``decision.json``, read once) when post-processing is on
    (``postprocess``, else ``run.postprocess``); None when off or the run has none."""
    if not (run.postprocess if postprocess is None else postprocess):
        return None
    if "decision" not in run.cache:
        run.cache["decision"] = read_decision(run.folder, run.meta.get("epoch"))
    return run.cache["decision"]


def configure_run(
    run: LoadedRun, *, runtime: str | None = "auto", tta: object = None, postprocess: bool = True
) -> LoadedRun:
    """Set how a loaded run segments from now on (every command does this once): the runtime
    (resolved: an unavailable one fails here), the TTA (parsed: an unknown transform fails
    here; None = the run's configured ``tta``) and whether its tuned decision applies."""
    run.runtime = resolve_runtime(runtime, next(run.model.parameters()).device)
    run.tta = run_tta(run, tta)
    run.postprocess = bool(postprocess)
    return run


def run_context(run: LoadedRun) -> int:
    """Slices above and below that the run's network sees (2.5D context; 0: single slices)."""
    return int(run.config.context)


def check_context(
    run: LoadedRun, images: Sequence[np.ndarray], names: Sequence[str] | None = None
) -> None:
    """Refuse images that do not fit the run's input: (H, W) slices for a run without 2.5D
    context, (2k + 1, H, W) context stacks (:func:`~tomoseg.data.context.context_stack`) for
    a run with context ``k``.

    Raises:
        TomosegError: one line naming the image, the shape given and the shape expected.
    """
    k = run_context(run)
    for j, im in enumerate(images):
        ok = im.ndim == 2 if k == 0 else (im.ndim == 3 and im.shape[0] == in_channels(k))
        if not ok:
            name = names[j] if names is not None else f"image {j}"
            want = "(H, W)" if k == 0 else f"({in_channels(k)}, H, W): the slice with the {k}"
            raise TomosegError(
                f"{name} has shape {im.shape}, but the run expects {want}"
                + ("" if k == 0 else " slices above and below it (tomoseg.context_stack)")
            )


def segment_logits(
    run: LoadedRun,
    images: Sequence[np.ndarray],
    tile_size: int | None = None,
    tile_batch: int | None = None,
    overlap: float | None = None,
    tiling: bool = True,
    bf16: bool | None = None,
    *,
    nonfinite: str = "background",
    names: Sequence[str] | None = None,
    runtime: str | None = None,
    tta: object = None,
) -> torch.Tensor:
    """The network's class scores of raw 2D images of one shape, after the calibrated decision
    bias: (B, K, H, W) float32 on the model's device. Logits, or with TTA the log of the
    probabilities averaged over the transforms (:func:`~tomoseg.inference.tta.with_tta`).
    See :func:`segment_batch` for the options."""
    check_nonfinite_rule(nonfinite)
    transforms = run_tta(run, tta)
    if nonfinite == "error":
        for k, im in enumerate(images):
            refuse_nonfinite(im, names[k] if names is not None else f"image {k}")
    cfg = run.config
    dev = next(run.model.parameters()).device
    if bf16 is None:
        bf16 = resolve_precision(cfg.precision, dev) == "bf16-mixed"
    check_context(run, images, names)
    if not tiling and dev.type == "cpu":
        h, w = images[0].shape[-2:]
        check_untiled_memory(
            (h * len(images), w), run.meta["model"]["width"] or 16, len(run.classes)
        )
    x = torch.from_numpy(np.stack([normalize(im, run.normalization) for im in images]))
    if x.ndim == 3:
        x = x[:, None]  # (B, 1, H, W); with 2.5D context already (B, 2k+1, H, W)
    engine = inference_engine(run.model, run.runtime if runtime is None else runtime, bf16)
    eager = engine is run.model
    logits = infer_logits(
        with_tta(engine, transforms),  # wraps any runtime's callable
        x.to(dev),
        tile_size or cfg.tile_size,
        cfg.tile_overlap if overlap is None else overlap,
        tile_batch or cfg.tile_batch,
        tiling=tiling,
        autocast_bf16=bf16 and eager,
    )
    bias = decision_bias(run.meta.get("class_weights"), cfg.decision)
    if bias is not None:
        logits = logits + bias.to(logits.device)[None, :, None, None]
    return logits


def decide(
    logits: torch.Tensor,
    images: Sequence[np.ndarray],
    decision: Decision | None,
    probabilities: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and probabilities) from :func:`segment_logits`'s scores: the tuned decision's
    offset added to the class of interest's score, argmax, its clean-up on each label image,
    then non-finite pixels of the raw ``images`` labelled background (probability 1 for
    class 0). The probabilities are the softmax of the adjusted scores (the clean-up changes
    labels only)."""
    if decision is not None and decision.offset:
        logits = logits.clone()
        logits[:, decision.class_id] += decision.offset
    labels = class_argmax(logits).to(torch.uint8).cpu().numpy()  # softmax keeps the argmax
    prob = torch.softmax(logits, 1).cpu().numpy() if probabilities else None
    if decision is not None:
        labels = np.stack([clean_labels(lab, decision) for lab in labels])
    for k, im in enumerate(images):  # outside the field of view: background
        bad = nonfinite_mask(centre(im))
        if bad is not None:
            labels[k][bad] = 0
            if prob is not None:
                prob[k][:, bad] = 0.0
                prob[k][0][bad] = 1.0
    return labels, prob


def segment_batch(
    run: LoadedRun,
    images: Sequence[np.ndarray],
    tile_size: int | None = None,
    tile_batch: int | None = None,
    overlap: float | None = None,
    tiling: bool = True,
    bf16: bool | None = None,
    probabilities: bool = True,
    *,
    nonfinite: str = "background",
    names: Sequence[str] | None = None,
    runtime: str | None = None,
    tta: object = None,
    postprocess: bool | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment raw 2D images of one shape in one pass (tiles of all of them share batches).

    ``bf16=None`` follows the run's precision setting on this device (``auto``: bf16 autocast
    where the CPU or GPU computes bf16 natively). ``runtime`` runs the network with eager
    PyTorch (``torch``; on CPU with BatchNorm folded into the convolutions, channels-last) or
    compiled once per loaded run (``openvino``, ``onnxruntime``; ``auto``: ``torch``, measured
    fastest on a quiet CPU; see :mod:`tomoseg.inference.runtimes`);
    None = ``run.runtime``.

    The decision: the run's class-weight correction (:func:`decision_bias`), then, with
    ``postprocess`` (None = ``run.postprocess``, True unless a command's ``--no-postprocess``
    turned it off), the decision tuned on validation (``decision.json``: an offset on the class
    of interest's score, removal of its small objects and filling of its small holes; see
    :mod:`tomoseg.inference.postprocess`). ``tta`` (None = ``run.tta``, else the run's
    configured ``tta``): ``none``, ``flips``, ``all`` or a list of D4 transforms
    (:mod:`tomoseg.inference.tta`) whose softmax is averaged.

    Non-finite pixels (NaN, +-inf: outside the field of view) are the one rule of every command
    and the API: the network sees them filled with the normalisation's lower bound
    (:func:`~tomoseg.data.normalization.normalize`) and they are labelled background (class 0,
    probability 1 for class 0); ``nonfinite="error"`` refuses such an image instead.

    Args:
        names: the images' names for error messages (default ``image <index>``).

    Returns:
        ``(labels (B, H, W) uint8, probabilities (B, K, H, W) float32)``; the probabilities are
        None (neither computed nor copied off the device) when ``probabilities`` is False.

    Raises:
        TomosegError: ``nonfinite="error"`` and an image holds NaN or infinite pixels; an unknown
            TTA transform; a malformed ``decision.json``.
    """
    logits = segment_logits(
        run,
        images,
        tile_size,
        tile_batch,
        overlap,
        tiling,
        bf16,
        nonfinite=nonfinite,
        names=names,
        runtime=runtime,
        tta=tta,
    )
    return decide(logits, images, run_decision(run, postprocess), probabilities)


def segment(run: LoadedRun, image: np.ndarray, **kwargs) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment one raw 2D image (see :func:`segment_batch` for the options).

    Returns:
        ``(labels (H, W) uint8, probabilities (K, H, W) float32 or None)``.
    """
    labels, prob = segment_batch(run, [image], **kwargs)
    return labels[0], None if prob is None else prob[0]


def as_image(image: object, name: str = "image", context: int = 0) -> np.ndarray:
    """Check an array given to the API: a 2D grayscale image of integers or floats, or for a
    run with 2.5D context ``k`` a (2k + 1, H, W) stack of the slice and its neighbours.

    Raises:
        TomosegError: not 2D (after dropping leading length-1 axes; with context the
            (2k + 1, H, W) shape is :func:`check_context`'s to refuse), or not numeric.
    """
    arr = np.asarray(image)
    dims = 3 if context else 2
    while arr.ndim > dims and arr.shape[0] == 1:
        arr = arr[0]
    if not context and arr.ndim != 2:  # a context stack's shape: check_context, the one rule
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
    bounded whatever the image size), optional test-time augmentation, the run's precision,
    decision rule and tuned post-processing (``decision.json``).

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
        nonfinite: str = "background",
        runtime: str = "auto",
        tta: object = None,
        postprocess: bool = True,
    ):
        self.run = run
        self.tile_size, self.tile_batch = tile_size, tile_batch
        self.nonfinite = check_nonfinite_rule(nonfinite)
        configure_run(run, runtime=runtime, tta=tta, postprocess=postprocess)

    @classmethod
    def from_run(
        cls,
        run: str | os.PathLike[str],
        *,
        device: str = "auto",
        which: str | None = None,
        tile_size: int | None = None,
        tile_batch: int | None = None,
        nonfinite: str = "background",
        runtime: str = "auto",
        tta: object = None,
        postprocess: bool = True,
    ) -> Predictor:
        """Load a run folder written by ``tomoseg train`` (or one of its ``.safetensors`` files).

        Args:
            run: run folder or weights file.
            device: ``auto`` (CUDA when available), ``cpu`` or ``gpu``.
            which: the weights: ``last`` (the end of the schedule) or ``best`` (the epoch of
                highest validation IoU of the class of interest); None = the run's configured
                ``weights`` (``last`` unless trained with ``--weights best``).
            tile_size: tile side in px (default: the run's setting; 0 = automatic).
            tile_batch: tiles per forward pass (default: the run's setting).
            nonfinite: NaN / infinite pixels are labelled ``background`` (class 0; the network
                sees the normalisation's lower bound there), or refused (``error``).
            runtime: ``auto`` (today ``torch``: on CPU with BatchNorm folded, channels-last),
                ``torch``, ``openvino`` or ``onnxruntime`` (built once, on first use).
            tta: test-time augmentation: ``none``, ``flips`` (4 passes), ``all`` (the 8
                symmetries of the square), or a list of transform names; None = the run's
                configured ``tta`` (``none`` by default).
            postprocess: apply the decision and clean-up tuned on validation
                (``decision.json``; nothing when the run has none).

        Raises:
            TomosegError: not a run, corrupted weights, ``which``, ``device`` or ``runtime``
                unknown, a runtime that is not installed, an unknown TTA transform.
        """
        loaded = load_run(Path(run), which, device=resolve_device(device))
        return cls(
            loaded,
            tile_size=tile_size,
            tile_batch=tile_batch,
            nonfinite=nonfinite,
            runtime=runtime,
            tta=tta,
            postprocess=postprocess,
        )

    @property
    def model(self) -> torch.nn.Module:
        return self.run.model

    @property
    def classes(self) -> list[str]:
        return list(self.run.classes)

    @property
    def class_of_interest(self) -> str:
        return self.run.class_of_interest

    @property
    def context(self) -> int:
        """Slices above and below each slice that the network sees (2.5D context; 0: none).
        With context ``k``, :meth:`predict` takes ``tomoseg.context_stack(volume, z, k)``
        ((2k + 1, H, W)) for slice ``z`` of a volume, or use :meth:`predict_volume`."""
        return run_context(self.run)

    def predict_volume(self, volume: object) -> np.ndarray:
        """Class ids of every slice of a (Z, H, W) volume of consecutive sections, one slice at
        a time (each with its 2.5D context when the run has one, edges replicated).

        Args:
            volume: a (Z, H, W) array (numpy, or dask and other lazy arrays: read slice by
                slice), or any stack input of :func:`tomoseg.io.sources.open_source` (a folder
                of slices, a multi-page TIFF, a Zarr).

        Returns:
            (Z, H, W) uint8 class ids.

        Raises:
            TomosegError: not a 3D numeric array or stack (as :meth:`predict` otherwise).
        """
        from tomoseg.io.sources import is_array, open_source

        if not is_array(volume) and not isinstance(volume, (str, os.PathLike)):
            volume = np.asarray(volume)
        if is_array(volume) and len(volume.shape) != 3:  # type: ignore[attr-defined]
            raise TomosegError(
                f"volume must be a (Z, H, W) array, got shape {tuple(volume.shape)}"  # type: ignore[attr-defined]
            )
        src = open_source(volume)
        with src.reader() as read:
            read = context_reader(read, src.n, self.context)
            return np.stack([self.predict(read(z)) for z in range(src.n)])

    def _segment(self, image: object, probabilities: bool):
        return segment(
            self.run,
            as_image(image, context=self.context),
            tile_size=self.tile_size,
            tile_batch=self.tile_batch,
            probabilities=probabilities,
            nonfinite=self.nonfinite,
            names=["image"],
        )

    def predict(self, image: object) -> np.ndarray:
        """Class ids of one image.

        Args:
            image: (H, W) array, any size, integer or float dtype (raw intensities, as read from
                the files the run was trained on); for a run with 2.5D context ``k``
                (:attr:`context`) the (2k + 1, H, W) stack of the slice and its neighbours.
                NaN / infinite pixels (of the slice itself) are labelled 0.

        Returns:
            (H, W) uint8 class ids.

        Raises:
            TomosegError: not a 2D numeric array; non-finite pixels with ``nonfinite="error"``.
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
