"""Reading, checking and atomically writing images, masks and datasets.

Conventions
-----------
* An *image* is a 2D grayscale array. PNG, JPEG and TIFF (8/16-bit integer or float, single page)
  are read with their dtype preserved. An RGB(A) file is accepted only when its three colour
  channels are equal (it is then a grey image saved as colour); otherwise it is refused.
* A *mask* is a 2D integer array of class ids ``0..K-1`` (0 = background). RGB or float masks are
  refused.
* A *dataset folder* holds ``dataset.json`` (``classes``: list of names, optional
  ``class_of_interest``) and ``{train,val,test}/{images,masks}/<id>.<ext>``; images and masks are
  matched by file stem (``<id>``).
* Intensities are normalised by :func:`fit_normalization` / :func:`normalize`: a percentile clip
  (0.5 %, 99.5 % by default) fitted on the *training* images, then a linear map to ``[0, 1]``.
  The fitted bounds are stored with every model so that 8-bit, 16-bit and float data behave alike.

Every problem is raised as :class:`tomoseg.errors.TomosegError` with a one-line message that names
the file. Every writer here writes to a temporary file in the target folder and renames it into
place, so a crash never leaves a half-written output or destroys an earlier one.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from tomoseg.errors import TomosegError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
SPLITS = ("train", "val", "test")

# ----------------------------------------------------------------------------- reading


def _natural_key(text: str) -> list[Any]:
    """Sort key that orders ``slice2`` before ``slice10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _read_raw(path: Path) -> np.ndarray:
    """Read a file into an array without interpreting it; raise TomosegError if unreadable."""
    if not path.exists():
        raise TomosegError(f"file not found: {path}")
    if not path.is_file():
        raise TomosegError(f"not a file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            return np.asarray(tifffile.imread(path))
        with Image.open(path) as im:
            return np.asarray(im)
    except PermissionError:
        raise TomosegError(f"cannot read {path}: permission denied") from None
    except (UnidentifiedImageError, tifffile.TiffFileError, ValueError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TomosegError(f"not a readable image: {path} ({reason})") from None


def _to_gray(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Turn an (H, W, C) array whose colour channels are equal into (H, W); refuse otherwise."""
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3]
        if what == "mask":
            raise TomosegError(
                f"mask is RGB, expected one channel of class ids: {path} "
                "(save masks as single-channel integer images)"
            )
        if not (
            np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        ):
            raise TomosegError(
                f"image is colour (its RGB channels differ), expected grayscale: {path}"
            )
        return np.ascontiguousarray(rgb[..., 0])
    if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha (PNG "LA")
        return np.ascontiguousarray(arr[..., 0])
    while arr.ndim > 2 and arr.shape[0] == 1:  # a one-page stack is a slice
        arr = arr[0]
    return arr


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one 2D grayscale image with its dtype preserved.

    Args:
        path: PNG, JPEG or TIFF file. A multi-page TIFF holding more than one page is refused here
            (use :func:`read_stack`).

    Returns:
        Array of shape (H, W) in the file's dtype (uint8, uint16, float32, ...).

    Raises:
        TomosegError: missing/unreadable file, not an image, colour image, 3D data, NaN values.
    """
    p = Path(path)
    arr = _to_gray(_read_raw(p), p, "image")
    if arr.ndim != 2:
        raise TomosegError(
            f"expected a 2D slice but {p} holds an array of shape {arr.shape} "
            "(a stack? read it with read_stack / segment-stack)"
        )
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise TomosegError(f"image contains NaN or infinite values: {p}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TomosegError(f"unsupported pixel type {arr.dtype} in {p}")
    return arr


def read_stack(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a multi-page TIFF (or a single 2D image) as a (Z, H, W) stack, dtype preserved.

    Args:
        path: TIFF file with one or more pages, or any 2D image file.

    Returns:
        Array of shape (Z, H, W).
    """
    p = Path(path)
    arr = _to_gray(_read_raw(p), p, "image")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise TomosegError(f"expected a (Z, H, W) stack but {p} has shape {arr.shape}")
    return arr


def read_mask(path: str | os.PathLike[str], n_classes: int | None = None) -> np.ndarray:
    """Read a label mask of integer class ids.

    Args:
        path: PNG or TIFF file holding one channel of integers.
        n_classes: if given, every value must lie in ``0..n_classes-1``.

    Returns:
        Array of shape (H, W), dtype uint8 (or int32 when ids exceed 255).

    Raises:
        TomosegError: RGB mask, float mask, 3D mask, values out of range.
    """
    p = Path(path)
    arr = _to_gray(_read_raw(p), p, "mask")
    if arr.ndim != 2:
        raise TomosegError(f"expected a 2D mask but {p} holds an array of shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TomosegError(f"mask must hold integer class ids, found {arr.dtype} values: {p}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or (n_classes is not None and hi >= n_classes):
        limit = f"0..{n_classes - 1}" if n_classes is not None else ">= 0"
        raise TomosegError(f"mask values {lo}..{hi} outside {limit} in {p}")
    return arr.astype(np.uint8 if hi < 256 else np.int32, copy=False)


def list_images(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Map file stem -> path for every image file in a folder, in natural sort order.

    Raises:
        TomosegError: folder missing, empty of images, or two files sharing a stem.
    """
    d = Path(folder)
    if not d.is_dir():
        raise TomosegError(f"folder not found: {d}")
    found: dict[str, Path] = {}
    for f in sorted(d.iterdir(), key=lambda q: _natural_key(q.name)):
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
            if f.stem in found:
                raise TomosegError(
                    f"two files share the id '{f.stem}' in {d}: {found[f.stem].name}, {f.name}"
                )
            found[f.stem] = f
    if not found:
        raise TomosegError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {d}")
    return found


class Pair(BaseModel):
    """An image file and its mask file, matched by id (file stem)."""

    id: str
    image: Path
    mask: Path


def pair_files(
    images_dir: str | os.PathLike[str], masks_dir: str | os.PathLike[str], what: str = "image"
) -> list[Pair]:
    """Match the files of two folders by stem.

    Args:
        images_dir: folder of images (or predictions).
        masks_dir: folder of masks (ground truth).
        what: word used for the first folder in error messages ("image" or "prediction").

    Returns:
        Pairs in natural order of id.

    Raises:
        TomosegError: a file of either folder without its partner.
    """
    imgs, masks = list_images(images_dir), list_images(masks_dir)
    only_img = [k for k in imgs if k not in masks]
    only_mask = [k for k in masks if k not in imgs]
    if only_img:
        raise TomosegError(
            f"{what} without a mask: {imgs[only_img[0]]} (no '{only_img[0]}.*' in {masks_dir})"
        )
    if only_mask:
        raise TomosegError(
            f"mask without an {what}: {masks[only_mask[0]]} (no '{only_mask[0]}.*' in {images_dir})"
        )
    return [Pair(id=k, image=imgs[k], mask=masks[k]) for k in imgs]


def read_pair(pair: Pair, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check one image/mask pair.

    Returns:
        ``(image, mask)``, both (H, W).

    Raises:
        TomosegError: any reading problem, or shapes that differ.
    """
    img = read_image(pair.image)
    mask = read_mask(pair.mask, n_classes)
    if img.shape != mask.shape:
        raise TomosegError(
            f"image {pair.image} is {img.shape} but its mask {pair.mask} is {mask.shape}"
        )
    return img, mask


# ----------------------------------------------------------------------------- datasets


class DatasetSpec(BaseModel):
    """What ``dataset.json`` says about a dataset.

    The class of interest defaults to the last class (for two classes: the foreground).
    """

    classes: list[str] = Field(min_length=2)
    class_of_interest: str | None = None
    name: str | None = None

    model_config = {"extra": "allow"}

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("class names must be unique")
        return v

    @model_validator(mode="after")
    def _coi(self) -> DatasetSpec:
        if self.class_of_interest is None:
            self.class_of_interest = self.classes[-1]
        elif self.class_of_interest not in self.classes:
            raise ValueError(
                f"class_of_interest '{self.class_of_interest}' is not one of {self.classes}"
            )
        return self

    @property
    def coi_index(self) -> int:
        """Index of the class of interest."""
        return self.classes.index(self.class_of_interest)  # type: ignore[arg-type]


def pydantic_message(exc: ValidationError) -> str:
    """Shorten a pydantic error to one line: ``field: message; field: message``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "value"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def load_dataset(root: str | os.PathLike[str]) -> DatasetSpec:
    """Read and validate ``<root>/dataset.json``.

    Raises:
        TomosegError: folder or file missing, not JSON, or invalid content.
    """
    r = Path(root)
    if not r.is_dir():
        raise TomosegError(f"dataset folder not found: {r}")
    f = r / "dataset.json"
    if not f.is_file():
        raise TomosegError(f"dataset.json missing in {r} (it must list the 'classes')")
    try:
        raw = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TomosegError(f"malformed {f}: {exc}") from None
    if not isinstance(raw, dict):
        raise TomosegError(f"malformed {f}: expected a JSON object")
    try:
        return DatasetSpec.model_validate(raw)
    except ValidationError as exc:
        raise TomosegError(f"malformed {f}: {pydantic_message(exc)}") from None


def split_pairs(root: str | os.PathLike[str], split: str) -> list[Pair]:
    """Image/mask pairs of one split (``train``, ``val`` or ``test``) of a dataset folder.

    Raises:
        TomosegError: the split is missing or inconsistent.
    """
    d = Path(root) / split
    if not (d / "images").is_dir() or not (d / "masks").is_dir():
        raise TomosegError(f"dataset {root} has no '{split}' split ({d}/images and {d}/masks)")
    return pair_files(d / "images", d / "masks")


def resolve_classes(classes: str | Sequence[str] | None, n_min: int = 2) -> list[str] | None:
    """Parse ``"a,b,c"`` into a list of class names (None passes through)."""
    if classes is None:
        return None
    names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else list(classes)
    if len(names) < n_min or any(not n for n in names) or len(set(names)) != len(names):
        raise TomosegError(
            f"--classes must name at least {n_min} distinct classes, got {classes!r}"
        )
    return names


# ----------------------------------------------------------------------------- normalisation


class Normalization(BaseModel):
    """Percentile clip fitted on training images: ``x -> clip((x - lower) / (upper - lower), 0, 1)``."""

    lower: float
    upper: float
    p_low: float = 0.5
    p_high: float = 99.5


def fit_normalization(
    images: Iterable[np.ndarray],
    p_low: float = 0.5,
    p_high: float = 99.5,
    max_pixels_per_image: int = 200_000,
    seed: int = 0,
) -> Normalization:
    """Fit percentile bounds on (a reproducible sample of the pixels of) training images.

    Args:
        images: 2D arrays of any numeric dtype.
        p_low: lower percentile (0..100).
        p_high: upper percentile (0..100), above ``p_low``.
        max_pixels_per_image: pixels sampled per image to bound time and memory.
        seed: sampling seed.

    Returns:
        The fitted :class:`Normalization`; ``upper > lower`` is guaranteed.
    """
    if not 0 <= p_low < p_high <= 100:
        raise TomosegError(
            f"percentiles must satisfy 0 <= low < high <= 100, got {p_low}, {p_high}"
        )
    rng = np.random.default_rng(seed)
    samples = []
    for img in images:
        flat = np.asarray(img).ravel()
        if flat.size > max_pixels_per_image:
            flat = flat[rng.integers(0, flat.size, max_pixels_per_image)]
        samples.append(flat.astype(np.float64))
    if not samples:
        raise TomosegError("cannot fit the intensity normalisation: no training images")
    allpx = np.concatenate(samples)
    lo, hi = np.percentile(allpx, [p_low, p_high])
    if not hi > lo:  # constant images: fall back to the full range
        lo, hi = float(allpx.min()), float(allpx.max())
        if not hi > lo:
            hi = lo + 1.0
    return Normalization(lower=float(lo), upper=float(hi), p_low=p_low, p_high=p_high)


def normalize(img: np.ndarray, norm: Normalization) -> np.ndarray:
    """Apply a fitted :class:`Normalization`.

    Returns:
        float32 array in ``[0, 1]`` of the same shape.
    """
    out = (np.asarray(img, dtype=np.float32) - np.float32(norm.lower)) / np.float32(
        norm.upper - norm.lower
    )
    return np.clip(out, 0.0, 1.0, out=out)


# ----------------------------------------------------------------------------- atomic writing


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The rename is atomic on POSIX, so readers see either the old file or the new one, never a
    half-written file.

    Returns:
        The final path.
    """
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp" + dst.suffix, dir=dst.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, dst)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return dst


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda t: t.write_text(text))


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, np.generic):
        return _nan_to_none(obj.item())
    return obj


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write JSON, with NaN and infinities written as ``null``."""
    return write_text(path, json.dumps(_nan_to_none(obj), indent=2) + "\n")


def write_image(path: str | os.PathLike[str], arr: np.ndarray) -> Path:
    """Atomically write a 2D (or RGB) array as PNG/JPEG (via Pillow) or TIFF (via tifffile)."""
    p = Path(path)
    if p.suffix.lower() in TIFF_SUFFIXES:
        return atomic_write(p, lambda t: tifffile.imwrite(t, arr))
    fmt = "JPEG" if p.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    return atomic_write(p, lambda t: Image.fromarray(arr).save(t, format=fmt))


def write_mask(path: str | os.PathLike[str], mask: np.ndarray) -> Path:
    """Atomically write a class-id mask (uint8 PNG by default, uint16 where ids exceed 255)."""
    m = np.asarray(mask)
    dtype = np.uint8 if int(m.max(initial=0)) < 256 else np.uint16
    return write_image(path, m.astype(dtype, copy=False))


def prepare_output_dir(
    out: str | os.PathLike[str], overwrite: bool, result_names: Iterable[str]
) -> Path:
    """Create an output folder, refusing one that already holds results unless ``overwrite``.

    Args:
        out: folder to write into.
        overwrite: allow replacing earlier results (each file is still replaced atomically).
        result_names: file names whose presence means "this folder already holds results".

    Raises:
        TomosegError: folder holds results and overwrite is False, or it is not writable.
    """
    d = Path(out)
    if d.exists() and not d.is_dir():
        raise TomosegError(f"output {d} exists and is not a folder")
    if d.is_dir() and not overwrite:
        held = [n for n in result_names if (d / n).exists()]
        if held:
            raise TomosegError(
                f"output folder {d} already holds results ({held[0]}); use --overwrite to replace them"
            )
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=d, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise TomosegError(f"output folder {d} is not writable ({exc.strerror or exc})") from None
    return d
