"""Running a trained network: :class:`Predictor`, the one inference path of every command and the API.

Settings at construction, data at call (MONAI's ``SlidingWindowInferer``, nnU-Net's
``nnUNetPredictor``): a :class:`Predictor` holds a loaded run (immutable) and one frozen
:class:`InferenceSettings` (device, weights, runtime, TTA, post-processing, non-finite rule,
intensity rule, tiles). ``predict``, ``evaluate``, ``tune``, ``segment-stack`` (threads, I/O
processes, Ray actors, parts) and the API all segment through a Predictor; workers in other
processes rebuild it from its picklable :class:`PredictorSpec` (run path + settings). Two
Predictors of one run with different settings never affect each other.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tomoseg.data.context import centre, context_reader, in_channels
from tomoseg.data.intensity import (
    IntensityCheck,
    IntensityTally,
    check_intensity_rule,
)
from tomoseg.data.normalization import (
    check_nonfinite_rule,
    nonfinite_mask,
    normalize,
    refuse_nonfinite,
)
from tomoseg.errors import TomosegError
from tomoseg.inference.bands import CleanStream, band_rows_for, bands_needed, plan_bands
from tomoseg.inference.postprocess import Decision, clean_labels, read_decision
from tomoseg.inference.runtimes import TRACE_GUARD, inference_engine, resolve_runtime
from tomoseg.inference.sliding_window import check_untiled_memory, class_argmax, infer_logits
from tomoseg.inference.tta import parse_tta, with_tta
from tomoseg.runtime.checkpoint import WEIGHTS, LoadedRun, load_run
from tomoseg.runtime.device import auto_tiles, resolve_device, resolve_precision
from tomoseg.runtime.logit_adjustment import decision_bias


@dataclass(frozen=True)
class InferenceSettings:
    """How a trained network segments: fixed when a :class:`Predictor` is built (picklable).

    Attributes:
        device: ``auto`` (CUDA when available), ``cpu`` or ``gpu``.
        weights: ``last`` (the end of the schedule) or ``best`` (the epoch of highest
            validation IoU of the class of interest); None = the run's configured ``weights``
            (``last`` unless trained with ``weights: best``).
        runtime: ``auto`` (today ``torch``: on CPU with BatchNorm folded, channels-last),
            ``torch``, ``openvino`` or ``onnxruntime`` (:mod:`tomoseg.inference.runtimes`).
        tta: test-time augmentation: ``none``, ``flips`` (4 passes), ``all`` (the 8 symmetries
            of the square), or transform names (:mod:`tomoseg.inference.tta`); None = the run's
            configured ``tta`` (``none`` by default).
        postprocess: apply the decision and clean-up tuned on validation (``decision.json``;
            nothing when the run has none).
        nonfinite: NaN / infinite pixels are labelled ``background`` (class 0; the network sees
            the normalisation's lower bound there), or refused (``error``).
        intensity: an image of another dtype family than the training images (uint8, uint16,
            float, signed...) or with most of its pixels outside the run's normalisation
            clip (:mod:`tomoseg.data.intensity`) gives one warning naming it (``warn``), is
            refused (``error``), or every image's own 0.5 / 99.5 percentiles are mapped
            linearly onto the run's (``rescale``). A run that records no training intensities
            (written by an older tomoseg) is never checked.
        tile_size: tile side in px (None: the run's setting; 0 = automatic).
        tile_batch: tiles per forward pass (None: the run's setting).
        overlap: overlap of neighbouring tiles, a fraction of the tile in [0, 1) (None: the
            run's setting).
        band_rows: a tall slice is segmented by bands of about this many rows, each with the
            halo of tiles around it, so one slice of any size takes bounded memory and gets the
            same labels (:mod:`tomoseg.inference.bands`); None: automatic (bands of about 8
            Mpx, at least 4 rows of tiles, for slices taller than one band); 0: whole slices.
        allow_incomplete: use a run whose training did not finish (its ``run.json`` says
            ``complete: false``; the weights of its last finished epoch); refused otherwise.
    """

    device: str = "auto"
    weights: str | None = None
    runtime: str = "auto"
    tta: Any = None
    postprocess: bool = True
    nonfinite: str = "background"
    intensity: str = "warn"
    tile_size: int | None = None
    tile_batch: int | None = None
    overlap: float | None = None
    band_rows: int | None = None
    allow_incomplete: bool = False

    def __post_init__(self) -> None:
        """Check every setting that needs no run (one line naming the parameter).

        Raises:
            TomosegError: an unknown ``weights``, ``nonfinite``, ``intensity`` or TTA
                transform, a tile size or batch below its minimum, an overlap outside [0, 1).
        """
        if self.weights is not None and self.weights not in WEIGHTS:
            raise TomosegError(f"weights: must be 'last' or 'best', got {self.weights!r}")
        check_nonfinite_rule(self.nonfinite)
        check_intensity_rule(self.intensity)
        if self.tta is not None:
            object.__setattr__(self, "tta", parse_tta(self.tta))
        for name, low in (("tile_size", 0), ("tile_batch", 1), ("band_rows", 0)):
            v = getattr(self, name)
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low
            ):
                raise TomosegError(f"{name}={v!r}: must be an integer >= {low}")
        if self.overlap is not None and not 0 <= float(self.overlap) < 1:
            raise TomosegError(f"overlap={self.overlap!r}: must be in [0, 1)")
        object.__setattr__(self, "postprocess", bool(self.postprocess))
        object.__setattr__(self, "allow_incomplete", bool(self.allow_incomplete))

    @classmethod
    def merged(
        cls, settings: InferenceSettings | None, options: dict[str, Any]
    ) -> InferenceSettings:
        """``settings`` (default: the defaults) with ``options`` (field -> value) replacing
        its values: the one way a Predictor, the API and the commands combine the two.

        Raises:
            TomosegError: an invalid value (as at construction); TypeError: an unknown field.
        """
        settings = settings or cls()
        return replace(settings, **options) if options else settings


@dataclass(frozen=True)
class PredictorSpec:
    """What rebuilds a :class:`Predictor` in another process (an I/O worker, a Ray actor): the
    run's path and the settings. Picklable; :meth:`build` loads the run there."""

    run: Path
    settings: InferenceSettings = field(default_factory=InferenceSettings)

    def build(self, **changes: Any) -> Predictor:
        """The Predictor (``changes``: settings replaced here, e.g. ``device="cpu"``)."""
        return Predictor.from_run(self.run, settings=replace(self.settings, **changes))


def check_context(
    context: int, images: Sequence[np.ndarray], names: Sequence[str] | None = None
) -> None:
    """Refuse images that do not fit the network's input: (H, W) slices for a run without 2.5D
    context, (2k + 1, H, W) context stacks (:func:`~tomoseg.data.context.context_stack`) for
    a run with context ``k``.

    Raises:
        TomosegError: one line naming the image, the shape given and the shape expected.
    """
    k = int(context)
    for j, im in enumerate(images):
        ok = im.ndim == 2 if k == 0 else (im.ndim == 3 and im.shape[0] == in_channels(k))
        if not ok:
            name = names[j] if names is not None else f"image {j}"
            want = "(H, W)" if k == 0 else f"({in_channels(k)}, H, W): the slice with the {k}"
            raise TomosegError(
                f"{name} has shape {im.shape}, but the run expects {want}"
                + ("" if k == 0 else " slices above and below it (tomoseg.context_stack)")
            )


def decide(
    logits: torch.Tensor,
    images: Sequence[np.ndarray],
    decision: Decision | None,
    probabilities: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and probabilities) from :meth:`Predictor.logits`: the tuned decision's offset
    added to the class of interest's score, argmax, its clean-up on each label image, then
    non-finite pixels of the raw ``images`` labelled background (probability 1 for class 0).
    The probabilities are the softmax of the adjusted scores (the clean-up changes labels only).

    Returns:
        ``(labels (B, H, W) uint8, probabilities (B, K, H, W) float32 or None)``.
    """
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


#: what :meth:`Predictor.predict_uncertainty` can measure
UNCERTAINTY_MEASURES = ("entropy", "margin", "disagreement")


def uncertainty_of(prob: np.ndarray, measure: str = "entropy") -> np.ndarray:
    """Per-pixel uncertainty of the class decision from class probabilities, in [0, 1].

    * ``entropy``: Shannon entropy of the softmax divided by ``log K`` (0: one class has
      probability 1; 1: all K classes equally likely), as MONAI Label's and ilastik's
      uncertainty maps.
    * ``margin``: ``1 - (p_first - p_second)``, one minus the gap between the two most
      probable classes (Scheffer et al., 2001, "margin sampling"); 1 on a tie.

    Args:
        prob: (K, H, W) or (B, K, H, W) probabilities (sum 1 over K), any float dtype.
        measure: ``entropy`` or ``margin``.

    Returns:
        (H, W) or (B, H, W) float32.

    Raises:
        TomosegError: an unknown ``measure``, fewer than 2 classes.
    """
    if measure not in ("entropy", "margin"):
        raise TomosegError(f"measure={measure!r}: must be 'entropy' or 'margin'")
    p = np.asarray(prob, dtype=np.float32)
    axis = p.ndim - 3
    k = p.shape[axis]
    if k < 2:
        raise TomosegError(f"prob has {k} class: uncertainty needs at least 2")
    if measure == "entropy":
        h = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=axis)
        return np.clip(h / np.log(k), 0.0, 1.0).astype(np.float32)
    top = np.sort(p, axis=axis)
    first = np.take(top, k - 1, axis=axis)
    second = np.take(top, k - 2, axis=axis)
    return np.clip(1.0 - (first - second), 0.0, 1.0).astype(np.float32)


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
    """Segment 2D arrays with a trained run: tomoseg's one inference path.

    The same path for ``tomoseg predict``, ``evaluate``, ``tune``, ``segment-stack`` and the
    API: the run's intensity normalisation, overlapping tiles blended by MONAI's
    ``sliding_window_inference`` (memory bounded whatever the image size), optional test-time
    augmentation, the run's precision, decision rule and tuned post-processing
    (``decision.json``). Settings are fixed at construction (:class:`InferenceSettings`); the
    loaded run is never changed, so Predictors with other settings can share it
    (:meth:`with_settings`).

    Example::

        p = Predictor.from_run("runs/xct")
        labels = p.predict(image)          # (H, W) uint8 class ids
        prob = p.predict_proba(image)      # (K, H, W) float32, sums to 1 over K

    Args:
        run: a loaded run (:func:`~tomoseg.runtime.checkpoint.load_run`).
        settings: the inference settings (default: the defaults); ``device`` and ``weights``
            describe how ``run`` was loaded.
        **options: any :class:`InferenceSettings` field, replacing ``settings``' value.

    Raises:
        TomosegError: an invalid setting, a runtime not installed, a malformed
            ``decision.json``.
    """

    def __init__(self, run: LoadedRun, settings: InferenceSettings | None = None, **options: Any):
        settings = InferenceSettings.merged(settings, options)
        self._run, self._settings = run, settings
        dev = self.device
        self._runtime = resolve_runtime(settings.runtime, dev)
        self._tta = settings.tta if settings.tta is not None else parse_tta(run.config.tta)
        self._decision = (
            read_decision(run.folder, run.meta.get("epoch"), len(run.classes))
            if settings.postprocess
            else None
        )
        self._bf16 = resolve_precision(run.config.precision, dev) == "bf16-mixed"
        self._intensity = IntensityCheck(settings.intensity, run.normalization, run.intensity)

    @classmethod
    def from_run(
        cls,
        run: str | os.PathLike[str],
        *,
        settings: InferenceSettings | None = None,
        **options: Any,
    ) -> Predictor:
        """Load a run folder written by ``tomoseg train`` (or one of its ``.safetensors`` files).

        Args:
            run: run folder or weights file.
            settings: the inference settings (default: the defaults).
            **options: any :class:`InferenceSettings` field (``device``, ``weights``,
                ``runtime``, ``tta``, ``postprocess``, ``nonfinite``, ``intensity``,
                ``tile_size``, ``tile_batch``, ``overlap``, ``allow_incomplete``), replacing
                ``settings``' value.

        Raises:
            TomosegError: not a run, a run whose training did not finish (unless
                ``allow_incomplete``), corrupted weights, an invalid setting, a runtime that is
                not installed, an unknown TTA transform.
        """
        settings = InferenceSettings.merged(settings, options)
        loaded = load_run(
            Path(run),
            settings.weights,
            device=resolve_device(settings.device),
            allow_incomplete=settings.allow_incomplete,
        )
        return cls(loaded, settings)

    def with_settings(self, **changes: Any) -> Predictor:
        """A Predictor of the same loaded run with some settings changed (``device`` and
        ``weights`` cannot change without loading the run again: use :meth:`from_run`).

        Raises:
            TomosegError: ``device`` or ``weights`` changed, or an invalid setting.
        """
        for key in ("device", "weights", "allow_incomplete"):
            if key in changes and changes[key] != getattr(self._settings, key):
                raise TomosegError(f"{key}: load the run again to change it (Predictor.from_run)")
        return Predictor(self._run, replace(self._settings, **changes))

    # ------------------------------------------------------------------ what it holds
    @property
    def run(self) -> LoadedRun:
        """The loaded run (:class:`~tomoseg.runtime.checkpoint.LoadedRun`, immutable)."""
        return self._run

    @property
    def settings(self) -> InferenceSettings:
        """The frozen settings."""
        return self._settings

    @property
    def spec(self) -> PredictorSpec:
        """What rebuilds this Predictor in another process (picklable)."""
        return PredictorSpec(self._run.path, self._settings)

    @property
    def model(self) -> torch.nn.Module:
        """The ``torch.nn.Module`` (in eval mode, on the chosen device)."""
        return self._run.model

    @property
    def device(self) -> torch.device:
        """Where the network runs."""
        return next(self._run.model.parameters()).device

    @property
    def classes(self) -> list[str]:
        """Class names; ``labels == k`` is ``classes[k]``."""
        return list(self._run.classes)

    @property
    def class_of_interest(self) -> str:
        """The run's class of interest."""
        return self._run.class_of_interest

    @property
    def runtime(self) -> str:
        """The runtime in use (``auto`` resolved)."""
        return self._runtime

    @property
    def tta(self) -> tuple[str, ...]:
        """The TTA transforms (``("identity",)``: none)."""
        return self._tta

    @property
    def decision(self) -> Decision | None:
        """The tuned decision applied (None: none, or ``postprocess`` off)."""
        return self._decision

    @property
    def intensity(self) -> IntensityCheck:
        """The ``intensity`` rule with what the run was trained on (picklable: stack readers
        apply it where they read each slice)."""
        return self._intensity

    @property
    def context(self) -> int:
        """Slices above and below each slice that the network sees (2.5D context; 0: none).
        With context ``k``, :meth:`predict` takes ``tomoseg.context_stack(volume, z, k)``
        ((2k + 1, H, W)) for slice ``z`` of a volume, or use :meth:`predict_volume`."""
        return int(self._run.config.context)

    def record(self) -> dict[str, Any]:
        """What a report records of this inference: the weights (``which``, ``epoch``), the
        TTA transforms and the decision applied (a dict, or None)."""
        return {
            "weights": self._run.meta.get("which"),
            "epoch": self._run.meta.get("epoch"),
            "tta": list(self._tta),
            "decision": None if self._decision is None else asdict(self._decision),
        }

    # ------------------------------------------------------------------ segmenting
    def logits(
        self,
        images: Sequence[np.ndarray],
        *,
        names: Sequence[str] | None = None,
        tiling: bool = True,
        bf16: bool | None = None,
        tally: IntensityTally | None = None,
        checked: bool = False,
        roi: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """The network's class scores of raw 2D images of one shape, after the calibrated
        decision bias: (B, K, H, W) float32 on the model's device. Logits, or with TTA the log
        of the probabilities averaged over the transforms
        (:func:`~tomoseg.inference.tta.with_tta`).

        Args:
            images: (H, W) arrays, or (2k + 1, H, W) context stacks for a run with context k.
            names: the images' names for error messages (default ``image <index>``).
            tiling: overlapping tiles (False: the whole image in one pass; refused on CPU
                when it would not fit in memory).
            bf16: None follows the run's precision on this device (``auto``: bf16 autocast
                where the CPU or GPU computes bf16 natively).
            tally: the job these images belong to: its first image out of the run's
                intensity range is warned about, the others counted (None: each call warns).
            checked: the ``intensity`` rule was applied where the images were read (a stack
                reader): not again here.
            roi: the tile (height, width) of the whole slice when ``images`` are bands of it
                (:meth:`label_bands`).

        Raises:
            TomosegError: non-finite pixels with ``nonfinite="error"``; an image out of the
                run's intensity range with ``intensity="error"``; a shape that does not fit
                the run's context.
        """
        run, s = self._run, self._settings
        names = names if names is not None else [f"image {k}" for k in range(len(images))]
        if s.nonfinite == "error":
            for k, im in enumerate(images):
                refuse_nonfinite(im, names[k])
        if not checked:  # once per image, before any tile
            tally = tally if tally is not None else IntensityTally(s.intensity)
            images = [
                self._checked(im, name, tally) for im, name in zip(images, names, strict=True)
            ]
        cfg = run.config
        bf16 = self._bf16 if bf16 is None else bf16
        check_context(self.context, images, names)
        if not tiling and self.device.type == "cpu":
            h, w = images[0].shape[-2:]
            check_untiled_memory(
                (h * len(images), w), run.meta["model"]["width"] or 16, len(run.classes)
            )
        arrays = [normalize(im, run.normalization) for im in images]
        if run.prepare is not None:  # another tool's package: its own preprocessing
            arrays = [run.prepare(a) for a in arrays]
        x = torch.from_numpy(np.stack(arrays))
        if x.ndim == 3:
            x = x[:, None]  # (B, 1, H, W); with 2.5D context already (B, 2k+1, H, W)
        engine = inference_engine(run.model, self._runtime, bf16)
        with TRACE_GUARD.running():  # no engine is traced in another thread meanwhile
            logits = infer_logits(
                with_tta(engine, self._tta),  # wraps any runtime's callable
                x.to(self.device),
                s.tile_size if s.tile_size is not None else cfg.tile_size,
                cfg.tile_overlap if s.overlap is None else s.overlap,
                s.tile_batch or cfg.tile_batch,
                tiling=tiling,
                autocast_bf16=bf16 and engine is run.model,
                roi=roi,
            )
        bias = decision_bias(run.meta.get("class_weights"), cfg.decision)
        if bias is not None:
            logits = logits + bias.to(logits.device)[None, :, None, None]
        return logits

    def check_intensity(self, image: np.ndarray, name: str, tally: IntensityTally) -> None:
        """The intensity rule (``warn`` or ``error``) on an image or on its regular grid of
        pixels (a slice read by bands); ``rescale`` needs the image itself (:meth:`logits`).

        Raises:
            TomosegError: out of range with ``intensity="error"``.
        """
        self._checked(image, name, tally)

    def _checked(self, image: np.ndarray, name: str, tally: IntensityTally) -> np.ndarray:
        image, found = self._intensity.apply(image, name)
        tally.add(found)
        return image

    def decide(
        self,
        logits: torch.Tensor,
        images: Sequence[np.ndarray],
        *,
        probabilities: bool = False,
        postprocess: bool = True,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (and probabilities) from :meth:`logits` by this Predictor's decision
        (``postprocess=False``: without the tuned decision, as if it were off). See
        :func:`decide`."""
        return decide(logits, images, self._decision if postprocess else None, probabilities)

    def segment_batch(
        self,
        images: Sequence[np.ndarray],
        *,
        probabilities: bool = False,
        names: Sequence[str] | None = None,
        tiling: bool = True,
        bf16: bool | None = None,
        tally: IntensityTally | None = None,
        checked: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Segment raw 2D images of one shape in one pass (tiles of all of them share batches).

        Non-finite pixels (NaN, +-inf: outside the field of view) are the one rule of every
        command and the API: the network sees them filled with the normalisation's lower bound
        (:func:`~tomoseg.data.normalization.normalize`) and they are labelled background
        (class 0, probability 1 for class 0); ``nonfinite="error"`` refuses such an image.
        Images out of the run's intensity range follow the ``intensity`` rule (see
        :meth:`logits`: ``tally``, ``checked``).

        Returns:
            ``(labels (B, H, W) uint8, probabilities (B, K, H, W) float32)``; the
            probabilities are None (neither computed nor copied off the device) unless
            ``probabilities``.

        Raises:
            TomosegError: as :meth:`logits`.
        """
        h, w = images[0].shape[-2:] if len(images) else (0, 0)
        if tiling and not probabilities and self.banded(h, w):
            labels = np.empty((len(images), h, w), np.uint8)
            if not checked:  # the intensity rule on each whole slice, once
                tally = tally if tally is not None else IntensityTally(self._settings.intensity)
                names = names if names is not None else [f"image {k}" for k in range(len(images))]
                images = [self._checked(im, n, tally) for im, n in zip(images, names, strict=True)]
            rows = lambda a, b: [im[..., a:b, :] for im in images]  # noqa: E731
            bands = self.label_bands(rows, (h, w), names=names, bf16=bf16, checked=True)
            for y0, y1, lab in bands:
                labels[:, y0:y1] = lab
            return labels, None
        logits = self.logits(
            images, names=names, tiling=tiling, bf16=bf16, tally=tally, checked=checked
        )
        return self.decide(logits, images, probabilities=probabilities)

    def _tiles(self, h: int, w: int) -> tuple[int, int, float]:
        """The tile (height, width) on an (h, w) slice and the overlap, as resolved for it."""
        s, cfg = self._settings, self._run.config
        size = s.tile_size if s.tile_size is not None else cfg.tile_size
        size = auto_tiles(size, 1, self.device)[0]
        return min(size, h), min(size, w), cfg.tile_overlap if s.overlap is None else s.overlap

    def banded(self, height: int, width: int) -> bool:
        """Whether an (height, width) slice is segmented by bands of rows (``band_rows``)."""
        roi_h, roi_w, overlap = self._tiles(height, width)
        return bands_needed(height, width, roi_h, overlap, self._settings.band_rows)

    def label_bands(
        self,
        rows: Callable[[int, int], Sequence[np.ndarray]],
        shape: tuple[int, int],
        *,
        names: Sequence[str] | None = None,
        bf16: bool | None = None,
        tally: IntensityTally | None = None,
        checked: bool = False,
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """The labels of slices read by bands of rows: the same labels as
        :meth:`segment_batch` gives the whole slices (see :mod:`tomoseg.inference.bands`),
        in bounded memory.

        Args:
            rows: ``rows(y0, y1)`` -> the raw rows ``[y0, y1)`` of each slice ((y1 - y0, W)
                arrays, or (2k + 1, y1 - y0, W) with 2.5D context).
            shape: the slices' (H, W).
            names: the slices' names for messages.
            tally, checked: the intensity rule's job and whether it was applied to the whole
                slices already (as :meth:`logits`; otherwise it is applied to each band).

        Yields:
            ``(y0, y1, labels)``: rows ``[y0, y1)`` as (B, y1 - y0, W) uint8, in order,
            covering ``[0, H)`` once.

        Raises:
            TomosegError: as :meth:`logits`.
        """
        h, w = shape
        roi_h, roi_w, overlap = self._tiles(h, w)
        per = band_rows_for(w, roi_h, overlap, self._settings.band_rows)
        stream = CleanStream(self._decision, h)
        for band in plan_bands(h, roi_h, overlap, per):
            raw = list(rows(band.in0, band.in1))
            logits = self.logits(
                raw, names=names, bf16=bf16, roi=(roi_h, roi_w), tally=tally, checked=checked
            )
            cut = slice(band.out0 - band.in0, band.out1 - band.in0)
            offset = (
                None if self._decision is None else replace(self._decision, min_size=0, max_hole=0)
            )
            labels, _ = decide(logits[:, :, cut], [], offset, probabilities=False)
            del logits
            masks = [nonfinite_mask(centre(im)[cut]) for im in raw]
            bad = None
            if any(m is not None for m in masks):
                bad = np.stack(
                    [m if m is not None else np.zeros(labels.shape[1:], bool) for m in masks]
                )
            yield from stream.push(band.out0, labels, bad)

    def segment(
        self, image: np.ndarray, *, probabilities: bool = False, **kwargs: Any
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Segment one raw image (see :meth:`segment_batch`).

        Returns:
            ``(labels (H, W) uint8, probabilities (K, H, W) float32 or None)``.
        """
        labels, prob = self.segment_batch([image], probabilities=probabilities, **kwargs)
        return labels[0], None if prob is None else prob[0]

    def predict(self, image: object) -> np.ndarray:
        """Class ids of one image.

        Args:
            image: (H, W) array, any size, integer or float dtype (raw intensities, as read from
                the files the run was trained on); for a run with 2.5D context ``k``
                (:attr:`context`) the (2k + 1, H, W) stack of the slice and its neighbours.
                NaN / infinite pixels (of the slice itself) are labelled 0. An image out of
                the run's intensity range follows the ``intensity`` setting (one warning
                per call by default).

        Returns:
            (H, W) uint8 class ids.

        Raises:
            TomosegError: not a 2D numeric array; non-finite pixels with ``nonfinite="error"``;
                out of the run's intensity range with ``intensity="error"``.
        """
        return self.segment(as_image(image, context=self.context), names=["image"])[0]

    def predict_proba(self, image: object) -> np.ndarray:
        """Class probabilities of one image after the run's decision rule (softmax of the
        adjusted logits, so ``predict`` is their argmax).

        Returns:
            (K, H, W) float32.
        """
        image = as_image(image, context=self.context)
        prob = self.segment(image, probabilities=True, names=["image"])[1]
        assert prob is not None
        return prob

    def predict_uncertainty(self, image: object, *, measure: str = "entropy") -> np.ndarray:
        """Per-pixel uncertainty of the class decision of one image, in [0, 1].

        ``entropy`` and ``margin`` are computed from :meth:`predict_proba` (with TTA, the
        probabilities averaged over the passes), see :func:`uncertainty_of`.
        ``disagreement`` (TTA on only) is the fraction of TTA passes whose own decision
        (argmax of that pass's class scores) differs from :meth:`predict`'s label: 0 where all
        passes agree, at most ``1 - 1/passes``.

        Args:
            image: as :meth:`predict` ((H, W), or (2k + 1, H, W) with 2.5D context).
            measure: ``entropy`` (default), ``margin`` or ``disagreement``.

        Returns:
            (H, W) float32 in [0, 1]; NaN / infinite pixels of the image (labelled background
            with probability 1) have uncertainty 0.

        Raises:
            TomosegError: an unknown ``measure``; ``disagreement`` without TTA
                (``tta="flips"`` or ``"all"``); as :meth:`predict`.
        """
        if measure not in UNCERTAINTY_MEASURES:
            raise TomosegError(
                f"measure={measure!r}: must be one of {', '.join(UNCERTAINTY_MEASURES)}"
            )
        image = as_image(image, context=self.context)
        if measure != "disagreement":
            labels, prob = self.segment(image, probabilities=True, names=["image"])
            assert prob is not None
            return uncertainty_of(prob, measure)
        if len(self._tta) < 2:
            raise TomosegError(
                "measure='disagreement' compares TTA passes: give tta='flips' or tta='all'"
            )
        labels = self.predict(image)
        differ = np.zeros(labels.shape, np.float32)
        for t in self._tta:  # one pass per transform, each decided on its own
            one = Predictor(self._run, replace(self._settings, tta=(t,)))
            differ += one.segment(image, names=["image"])[0] != labels
        return differ / len(self._tta)

    def predict_volume(
        self,
        volume: object,
        *,
        channel: int | None = None,
        time: int | None = None,
        dataset: str | None = None,
        transpose: bool = False,
        missing: str = "warn",
        planes: str | Sequence[str] = "xy",
        voxel_size: Sequence[float] | str | None = None,
    ) -> np.ndarray:
        """Class ids of every slice of a (Z, H, W) volume of consecutive sections, one slice at
        a time (each with its 2.5D context when the run has one, edges replicated); with
        ``planes`` other than ``xy``, the argmax of the mean of the class probabilities of the
        passes along each plane, in memory (the rule of ``segment_stack(planes=...)``,
        :func:`~tomoseg.inference.stack_planes.average_planes`: the same labels).

        Args:
            volume: a (Z, H, W) array (numpy, or dask and other lazy arrays: read one slice
                at a time), or any stack input of :func:`tomoseg.io.sources.open_source` (a
                folder of slices, a multi-page TIFF, a Zarr, an HDF5, MRC or N5 file).
            channel, time, dataset, transpose, missing: how a file input is read, as for
                :func:`tomoseg.io.sources.open_source`.
            planes: ``xy`` or ``xy,xz,yz`` (also ``xy,xz``, ``xy,yz``); planes other than
                ``xy`` hold the whole volume and (K, Z, H, W) float16 probabilities per plane
                in memory, and need (nearly) cubic voxels
                (:func:`~tomoseg.utils.planes.check_isotropic`).
            voxel_size: (z, y, x) voxel size for that check (default: the input's metadata;
                unknown: a warning, treated as cubes).

        Slices out of the run's intensity range follow the ``intensity`` setting; with
        ``warn``, the volume gives one warning (naming its first such slice).

        Returns:
            (Z, H, W) uint8 class ids.

        Raises:
            TomosegError: not a 3D numeric array or stack (as :meth:`predict` otherwise); bad
                ``planes``, anisotropic voxels with planes other than ``xy``, planes with a 2.5D
                run.
        """
        from tomoseg.io.sources import is_array, open_source, parse_voxel_size
        from tomoseg.utils.planes import parse_planes

        chosen = parse_planes(planes)
        voxel = parse_voxel_size(voxel_size)

        if not is_array(volume) and not isinstance(volume, (str, os.PathLike)):
            volume = np.asarray(volume)
        if is_array(volume) and len(volume.shape) != 3:  # type: ignore[attr-defined]
            raise TomosegError(
                f"volume must be a (Z, H, W) array, got shape {tuple(volume.shape)}"  # type: ignore[attr-defined]
            )
        src = open_source(
            volume,
            channel=channel,
            time=time,
            dataset=dataset,
            transpose=transpose,
            missing=missing,
        )
        if chosen != ("xy",):
            return self._predict_planes(src, chosen, voxel or src.voxel_size)
        out = np.zeros((src.n, *src.shape), np.uint8)
        tally = IntensityTally(self._settings.intensity)
        with src.reader() as read:
            read = context_reader(read, src.n, self.context)
            for z in range(src.n):
                image = as_image(read(z), context=self.context)
                name = f"slice {src.ids[z]} of {src.where}"
                out[z] = self.segment(image, names=[name], tally=tally)[0]
        return out

    def _predict_planes(
        self, src: Any, planes: tuple[str, ...], voxel: Sequence[float] | None
    ) -> np.ndarray:
        """:meth:`predict_volume` along several planes, in memory."""
        from tomoseg.inference.planes import average_planes, plane_probabilities
        from tomoseg.utils.planes import check_context, check_isotropic

        check_context(planes, self.context)
        check_isotropic(planes, voxel, src.unit, src.where)
        volume = np.empty((src.n, *src.shape), np.float32)
        tally = IntensityTally(self._settings.intensity)
        with src.reader() as read:
            for z in range(src.n):
                name = f"slice {src.ids[z]} of {src.where}"
                volume[z] = self._checked(as_image(read(z)), name, tally)
        return average_planes([plane_probabilities(self, volume, p) for p in planes])


def as_predictor(
    run: Predictor | str | os.PathLike[str], settings: InferenceSettings | None = None
) -> Predictor:
    """``run`` itself when it is a :class:`Predictor` (``settings`` must then be None), else
    the Predictor of the run folder with ``settings``.

    Raises:
        TomosegError: a Predictor and settings given together; as :meth:`Predictor.from_run`.
    """
    if isinstance(run, Predictor):
        if settings is not None and settings != run.settings:
            raise TomosegError("settings: give them to the Predictor, not beside it")
        return run
    return Predictor.from_run(run, settings=settings)
