"""What a run was trained on (its images' dtypes and intensity range), and the check of every
image it segments against that: the one ``intensity`` rule of every inference path.

Training records :class:`IntensityRange` in ``run.json`` (``intensity``): the training images'
dtypes, their finite min / max, and the normalisation's clip ``[lower, upper]`` (the 0.5th and
99.5th percentiles of the training pixels, :func:`~tomoseg.data.normalization.fit_normalization`).

At inference an image is **out of range** when

* its dtype family (``uint8`` with ``bool``, ``uint16``, ``uint32`` with ``uint64``, ``int``:
  every signed integer, ``float``: every floating type) is none of the training images', or
* more than :data:`MOST_OUTSIDE` (half) of its finite pixels lie outside the run's clip
  ``[lower, upper]`` (about 1 % of the training pixels do),

measured on a regular grid of at most :data:`SAMPLE_PIXELS` pixels of the slice (every
``s``-th row and column, ``s = ceil(sqrt(H * W / SAMPLE_PIXELS))``): once per slice, whatever
the tiles. What then happens is the ``intensity`` setting:

* ``warn`` (default): one ``TomosegWarning`` naming the image, its dtype, the fraction of its
  pixels outside and what to do; the image is segmented as it is;
* ``error``: :class:`~tomoseg.errors.TomosegError` naming the same;
* ``rescale``: every image (out of range or not) is mapped linearly so that its own ``p_low`` /
  ``p_high`` percentiles (the run's, 0.5 / 99.5; finite pixels of the same grid) land on the
  run's ``lower`` / ``upper``: ``x -> lower + (x - p_lo) * (upper - lower) / (p_hi - p_lo)``,
  float32, NaN and infinities unchanged. The network then sees the image's own range stretched
  as the training range was. A 2.5D context stack is mapped with its centre slice's
  percentiles.

A run written before runs recorded this (no ``intensity`` in ``run.json``) is never checked and
never warned about; ``rescale`` still maps images onto its normalisation.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel

from tomoseg.data.context import centre
from tomoseg.data.normalization import Normalization, NormalizedImage
from tomoseg.errors import TomosegError, TomosegWarning

#: what to do with an image out of the run's range: ``warn``, ``error`` or ``rescale``
INTENSITY_RULES = ("warn", "error", "rescale")

#: an image with more than this fraction of its finite pixels outside the run's clip is flagged
MOST_OUTSIDE = 0.5

#: pixels of a slice the check and ``rescale`` look at (a regular grid)
SAMPLE_PIXELS = 65_536


def dtype_family(dtype: np.dtype | type | str) -> str:
    """The family of a pixel type: ``uint8`` (and ``bool``), ``uint16``, ``uint32`` (32 and 64
    bit), ``int`` (every signed integer) or ``float`` (every floating type)."""
    dt = np.dtype(dtype)
    if dt == np.bool_ or dt == np.uint8:
        return "uint8"
    if dt == np.uint16:
        return "uint16"
    if np.issubdtype(dt, np.unsignedinteger):
        return "uint32"
    if np.issubdtype(dt, np.signedinteger):
        return "int"
    return "float"


class IntensityRange(BaseModel):
    """What a run's training images held: ``run.json``'s ``intensity``.

    Attributes:
        dtypes: the training images' numpy dtype names (``["uint8"]``).
        min, max: their lowest and highest finite pixel values.
        lower, upper: the normalisation's clip, the ``p_low`` / ``p_high`` percentiles of the
            training pixels (in the images' own units).
        p_low, p_high: those percentiles (0..100).
    """

    dtypes: list[str]
    min: float
    max: float
    lower: float
    upper: float
    p_low: float = 0.5
    p_high: float = 99.5

    @property
    def families(self) -> list[str]:
        """The dtype families of the training images (:func:`dtype_family`)."""
        return sorted({dtype_family(d) for d in self.dtypes})


def intensity_range(images: Iterable[np.ndarray], norm: Normalization) -> IntensityRange:
    """The :class:`IntensityRange` of training images whose normalisation is ``norm``.

    Args:
        images: the raw training images (any numeric dtype; non-finite pixels ignored).
        norm: their fitted normalisation.
    """
    dtypes: set[str] = set()
    lo, hi = math.inf, -math.inf
    for img in images:
        arr = np.asarray(img)
        dtypes.add(arr.dtype.name)
        if np.issubdtype(arr.dtype, np.floating):
            arr = arr[np.isfinite(arr)]
        if arr.size:
            lo, hi = min(lo, float(arr.min())), max(hi, float(arr.max()))
    if lo > hi:  # no finite pixel (fit_normalization refuses that first)
        lo, hi = norm.lower, norm.upper
    return IntensityRange(
        dtypes=sorted(dtypes),
        min=lo,
        max=hi,
        lower=norm.lower,
        upper=norm.upper,
        p_low=norm.p_low,
        p_high=norm.p_high,
    )


def check_intensity_rule(rule: str) -> str:
    """Validate an ``intensity`` setting.

    Raises:
        TomosegError: not ``warn``, ``error`` or ``rescale``.
    """
    if rule not in INTENSITY_RULES:
        raise TomosegError(f"intensity must be 'warn', 'error' or 'rescale', got {rule!r}")
    return rule


def sample_pixels(image: np.ndarray, n: int = SAMPLE_PIXELS) -> np.ndarray:
    """The finite pixels of a regular grid of at most ``n`` pixels of a 2D image, as float64
    (every ``s``-th row and column, ``s = ceil(sqrt(H * W / n))``)."""
    arr = np.asarray(image)
    step = max(1, math.ceil(math.sqrt(arr.size / n))) if arr.size else 1
    grid = np.asarray(arr[::step, ::step], dtype=np.float64).ravel()
    return grid[np.isfinite(grid)] if np.issubdtype(arr.dtype, np.floating) else grid


def _number(v: float) -> str:
    return f"{v:.4g}"


@dataclass(frozen=True)
class IntensityFinding:
    """An image out of the run's range (:func:`check_intensity`); picklable.

    Attributes:
        where: the image (file, or slice of a stack).
        dtype: its dtype name.
        trained: the training images' dtype names.
        outside: fraction of its (sampled, finite) pixels outside the run's clip.
        lower, upper: the run's clip.
    """

    where: str
    dtype: str
    trained: tuple[str, ...]
    outside: float
    lower: float
    upper: float

    @property
    def other_type(self) -> bool:
        """Whether the image's dtype family is none of the training images'."""
        return dtype_family(self.dtype) not in {dtype_family(d) for d in self.trained}

    def text(self) -> str:
        """``<where> is uint16 (the run was trained on uint8 images) and has 99.7 % of its
        pixels outside the run's intensity range 31..220``."""
        kind = " and ".join(self.trained)
        typ = (
            f"is {self.dtype} (the run was trained on {kind} images) and has"
            if self.other_type
            else "has"
        )
        return (
            f"{self.where} {typ} {100 * self.outside:.1f} % of its pixels outside the run's "
            f"intensity range {_number(self.lower)}..{_number(self.upper)}"
        )


#: what the user can do about an image out of range (library terms; the CLI names options)
REMEDY = (
    "convert it like the training images, or pass intensity='rescale' to map its own "
    "0.5-99.5 percentiles onto the run's range"
)


@dataclass(frozen=True)
class IntensityCheck:
    """The ``intensity`` rule of one Predictor: the setting, the run's normalisation and what
    the run was trained on (None: a run written before runs recorded it). Picklable (I/O
    worker processes and Ray actors apply it where they read the slice).
    """

    rule: str = "warn"
    norm: Normalization | None = None
    trained: IntensityRange | None = None

    def find(self, image: np.ndarray, where: str) -> IntensityFinding | None:
        """The finding of an out-of-range image (None: in range, or nothing recorded).

        Args:
            image: (H, W) raw image, or a (2k + 1, H, W) context stack (its centre is checked).
            where: the image's name for the message.
        """
        if self.trained is None or isinstance(image, NormalizedImage):
            return None
        own = centre(np.asarray(image))
        px = sample_pixels(own)
        t = self.trained
        outside = float(((px < t.lower) | (px > t.upper)).mean()) if px.size else 0.0
        found = IntensityFinding(
            where, own.dtype.name, tuple(t.dtypes), round(outside, 4), t.lower, t.upper
        )
        return found if found.other_type or outside > MOST_OUTSIDE else None

    def apply(self, image: np.ndarray, where: str) -> tuple[np.ndarray, IntensityFinding | None]:
        """Check one image and apply the rule (no warning: see :class:`IntensityTally`).

        Returns:
            ``(image, finding)``: the image as it is, or with ``rescale`` mapped onto the run's
            range (float32, same shape); the finding when it is out of range.

        Raises:
            TomosegError: out of range with ``rule="error"``, naming ``where``.
        """
        if isinstance(image, NormalizedImage):  # normalised where it was read (and checked)
            return image, None
        found = self.find(image, where)
        if found is not None and self.rule == "error":
            raise TomosegError(f"{found.text()}; {REMEDY}")
        if self.rule == "rescale" and self.norm is not None:
            image = rescale(image, self.norm)
        return image, found


def rescale(image: np.ndarray, norm: Normalization) -> np.ndarray:
    """Map an image's own ``norm.p_low`` / ``norm.p_high`` percentiles (finite pixels of a
    :func:`sample_pixels` grid of its centre slice) linearly onto ``norm.lower`` /
    ``norm.upper``.

    ``x -> lower + (x - p_lo) * (upper - lower) / (p_hi - p_lo)``; where ``p_hi == p_lo`` the
    image's min / max are used, and a constant image is shifted onto ``lower``.

    Returns:
        float32 array of ``image``'s shape; NaN and infinities stay where they are.
    """
    arr = np.asarray(image)
    px = sample_pixels(centre(arr))
    if not px.size:
        return arr.astype(np.float32)
    p_lo, p_hi = np.percentile(px, [norm.p_low, norm.p_high])
    if not p_hi > p_lo:
        p_lo, p_hi = float(px.min()), float(px.max())
    gain = (norm.upper - norm.lower) / (p_hi - p_lo) if p_hi > p_lo else 1.0
    out = arr.astype(np.float32)
    out -= np.float32(p_lo)
    out *= np.float32(gain)
    out += np.float32(norm.lower)
    return out


@dataclass
class IntensityTally:
    """Out-of-range images of one job (a command over many images, a volume, a stack): the
    first is warned about at once (``rule="warn"``), the others only counted, so a job gives one
    warning. Thread-safe.

    Attributes:
        rule: the ``intensity`` setting.
        findings: every finding added, in order.
        warned: whether the warning was given.
    """

    rule: str = "warn"
    findings: list[IntensityFinding] = field(default_factory=list)
    warned: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __getstate__(self) -> dict:  # sent to Ray actors with the job: the lock stays here
        return {"rule": self.rule, "findings": list(self.findings), "warned": self.warned}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def add(self, finding: IntensityFinding | None) -> None:
        """Count a finding (None: nothing); warn about the job's first one."""
        if finding is None:
            return
        with self._lock:
            self.findings.append(finding)
            first = not self.warned and self.rule == "warn"
            self.warned = self.warned or first
        if first:
            warn_intensity(finding)


def warn_intensity(finding: IntensityFinding, more: str = "") -> None:
    """The one warning of an out-of-range image (``more``: a count of others, appended)."""
    warnings.warn(
        f"{finding.text()}: its labels are likely wrong{more}; {REMEDY} "
        "(intensity='error' refuses such images)",
        TomosegWarning,
        stacklevel=3,
    )
