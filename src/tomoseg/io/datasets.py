"""Dataset folders: ``dataset.json``, splits, image/mask pairs matched by file name, and the
samples of pairs of volumes (each z-slice one sample)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from pydantic import BaseModel, Field, field_validator, model_validator

from tomoseg.errors import TomosegError
from tomoseg.io.images import (
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    as_mask,
    natural_key,
    read_image,
    read_mask,
)
from tomoseg.io.sources.base import slice_ids
from tomoseg.utils.files import load_json, validated

#: the most classes a dataset may declare: class ids are stored as uint8 label images (0..255),
#: and one value is left for an ignore label (``tomoseg.models.registry.MAX_CLASSES``)
MAX_CLASSES = 255

SPLITS = ("train", "val", "test")


class Pair(BaseModel):
    """An image file and its mask file, matched by id (file stem)."""

    id: str
    image: Path
    mask: Path


#: mask-name endings of neighbouring tools (cellpose ``_masks``, others), suggested when
#: ``images`` and ``masks`` name one folder
MASK_SUFFIXES = ("_masks", "_mask", "_labels", "_label", "_seg")


def list_inputs(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Map id (name without its extension) -> path for every 2D image file of a folder
    (:func:`~tomoseg.io.images.list_images`) and every volume a registered format reads
    (a multi-page TIFF, a Zarr store, and the formats of :data:`tomoseg.io.sources.FORMATS`),
    in natural order.

    Raises:
        TomosegError: folder missing or empty, or two entries sharing an id.
    """
    d = Path(folder)
    if not d.is_dir():
        raise TomosegError(f"folder not found: {d}")
    found: dict[str, Path] = {}
    for f in sorted(d.iterdir(), key=lambda q: natural_key(q.name)):
        if f.name.startswith("."):
            continue
        image = f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        if not image and not _volume_format_claims(f):
            continue
        stem = _stem(f)
        if stem in found:
            raise TomosegError(
                f"two files share the id '{stem}' in {d}: {found[stem].name}, {f.name}"
            )
        found[stem] = f
    if not found:
        raise TomosegError(f"no images ({', '.join(IMAGE_SUFFIXES)}) or volumes in folder {d}")
    return found


def _volume_format_claims(path: Path) -> bool:
    """Whether a registered volume format (not a folder of slices, not an array) reads it."""
    from tomoseg.io.sources import FORMATS

    return any(fmt.kind not in ("folder", "array") and fmt.claims(path) for fmt in FORMATS)


def _one_input(path: Path) -> bool:
    """A file, or a store that is one volume (a Zarr or N5 folder): not a folder of inputs."""
    return path.is_file() or (path.is_dir() and _volume_format_claims(path))


def _stem(path: Path) -> str:
    """A file's id: its name without the extension (``vol.ome.zarr`` -> ``vol``)."""
    name = path.name
    for ext in (".ome.zarr", ".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _strip(found: dict[str, Path], suffix: str, what: str, folder: Path) -> dict[str, Path]:
    """Ids without their ``suffix`` (every entry must end with it)."""
    if not suffix:
        return found
    out: dict[str, Path] = {}
    for stem, f in found.items():
        if not stem.endswith(suffix):
            opt = "image_suffix" if what == "image" else "mask_suffix"
            raise TomosegError(
                f"{what} {f} does not end with {opt}='{suffix}' (in {folder} every {what} "
                f"name ends with it, e.g. case_001{suffix}{f.suffix})"
            )
        out[stem[: -len(suffix)]] = f
    return out


def _one_folder(
    found: dict[str, Path], image_suffix: str, mask_suffix: str, folder: Path
) -> tuple[dict[str, Path], dict[str, Path]]:
    """Images and masks of one folder, told apart by their name endings."""
    imgs: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for stem, f in found.items():
        if mask_suffix and stem.endswith(mask_suffix):
            masks[stem[: -len(mask_suffix)]] = f
        elif image_suffix and stem.endswith(image_suffix):
            imgs[stem[: -len(image_suffix)]] = f
        elif not image_suffix:
            imgs[stem] = f
        elif not mask_suffix:
            masks[stem] = f
        else:
            raise TomosegError(
                f"{f} ends neither with image_suffix='{image_suffix}' nor with "
                f"mask_suffix='{mask_suffix}'"
            )
    if not masks or not imgs:
        what = "mask" if not masks else "image"
        raise TomosegError(f"no {what} in {folder} (with image_suffix='{image_suffix}' and "
                           f"mask_suffix='{mask_suffix}')")  # fmt: skip
    return imgs, masks


def same_folder_error(folder: Path) -> TomosegError:
    """One folder given for images and masks, without the name endings that tell them apart."""
    names = [_stem(f) for f in folder.iterdir()] if folder.is_dir() else []
    seen = [s for s in MASK_SUFFIXES if any(n.endswith(s) for n in names)]
    hint = f"mask_suffix='{seen[0] if seen else '_masks'}' (the ending of the mask names)"
    return TomosegError(
        f"images={folder} and masks={folder} are one folder: every file would be its own mask; "
        f"where images and masks share a folder (img_001.tif with img_001_masks.png, as cellpose "
        f"lays them out) give {hint}"
    )


def pair_files(
    images_dir: str | os.PathLike[str],
    masks_dir: str | os.PathLike[str],
    what: str = "image",
    *,
    image_suffix: str = "",
    mask_suffix: str = "",
) -> list[Pair]:
    """Match images (or predictions) with their masks by id.

    Args:
        images_dir: folder of images (or predictions), or one image or volume file.
        masks_dir: folder of masks (ground truth), or the one mask file of ``images_dir``.
            May be ``images_dir`` itself when ``mask_suffix`` (or ``image_suffix``) tells
            them apart.
        what: word used for the first folder in error messages ("image" or "prediction").
        image_suffix: the ending of every image name before its extension, not part of the id
            (nnU-Net's channel ``_0000``: ``case_001_0000.tif`` is case ``case_001``).
        mask_suffix: the ending of every mask name (cellpose's ``_masks``:
            ``img_001_masks.png`` is the mask of ``img_001.tif``).

    Returns:
        Pairs in natural order of id.

    Raises:
        TomosegError: a file without its partner, a file and a folder, one folder for both
            without a suffix, a name without its suffix.
    """
    ip, mp = Path(images_dir), Path(masks_dir)
    if not ip.exists() or not mp.exists():
        raise TomosegError(f"not found: {ip if not ip.exists() else mp}")
    if _one_input(ip) or _one_input(mp):
        if not (_one_input(ip) and _one_input(mp)):
            f, d = (ip, mp) if _one_input(ip) else (mp, ip)
            raise TomosegError(f"{f} is a file but {d} a folder: give two files or two folders")
        if ip.resolve() == mp.resolve():
            raise TomosegError(f"{what}={ip} is also the mask file: give the mask file")
        return [Pair(id=_stem(ip), image=ip, mask=mp)]
    if ip.resolve() == mp.resolve() and (what == "image" or mask_suffix or image_suffix):
        if not (mask_suffix or image_suffix):  # (a prediction folder may be its own truth)
            raise same_folder_error(ip)
        imgs, masks = _one_folder(list_inputs(ip), image_suffix, mask_suffix, ip)
    else:
        imgs = _strip(list_inputs(ip), image_suffix, what, ip)
        masks = _strip(list_inputs(mp), mask_suffix, "mask", mp)
    only_img = [k for k in imgs if k not in masks]
    only_mask = [k for k in masks if k not in imgs]
    if only_img:
        i = only_img[0]
        tail = re.search(r"_\d{4}$", i)
        hint = (
            f"; nnU-Net names images with a channel ending: give image_suffix='{tail.group()}'"
            if tail and not image_suffix and i[: tail.start()] in masks
            else ""
        )
        raise TomosegError(
            f"{what} without a mask: {imgs[i]} (no '{i}{mask_suffix}.*' in {masks_dir}){hint}"
        )
    if only_mask:
        raise TomosegError(
            f"mask without an {what}: {masks[only_mask[0]]} (no "
            f"'{only_mask[0]}{image_suffix}.*' in {images_dir})"
        )
    return [Pair(id=k, image=imgs[k], mask=masks[k]) for k in imgs]


def read_pair(pair: Pair, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check one 2D image/mask pair.

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


# ----------------------------------------------------------------------------- volumes


@dataclass(frozen=True)
class Item:
    """One sample of a set of pairs: a 2D pair (``z`` None), or slice ``z`` of a volume pair
    (an image volume with its label volume of the same (Z, Y, X) shape).

    ``id`` is the pair's id, with ``_z0003`` (the slice) for a volume.
    """

    id: str
    pair: Pair
    z: int | None = None

    @property
    def where(self) -> str:
        """The mask as messages name it (its slice for a volume)."""
        return str(self.pair.mask) if self.z is None else f"slice {self.z} of {self.pair.mask}"


def is_volume(path: Path) -> bool:
    """Whether a file of a pair holds a (Z, Y, X) volume: a TIFF with more than one slice,
    or anything a registered volume format reads (Zarr, ...), as opposed to a 2D image."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            with tifffile.TiffFile(path) as tf:
                s = tf.series[0]
                return any(n > 1 for a, n in zip(s.axes, s.shape, strict=True) if a in "ZQIT")
        except Exception:  # unreadable: the 2D reader names the fault
            return False
    return not (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def expand_pairs(pairs: list[Pair]) -> list[Item]:
    """Every sample of some pairs: a 2D pair is one, a volume pair one per z-slice (the
    volumes are opened through :func:`tomoseg.io.sources.open_source`, no slice is read).

    Raises:
        TomosegError: an image volume and its mask of other shapes, a volume paired with a 2D
            file, an unreadable volume.
    """
    out: list[Item] = []
    for p in pairs:
        vi, vm = is_volume(p.image), is_volume(p.mask)
        if not (vi or vm):
            out.append(Item(p.id, p))
            continue
        si, sm = _open(p.image), _open(p.mask)
        if (si.n, *si.shape) != (sm.n, *sm.shape):
            raise TomosegError(
                f"image {p.image} is {(si.n, *si.shape)} (Z, Y, X) but its mask {p.mask} is "
                f"{(sm.n, *sm.shape)}"
            )
        out += [Item(f"{p.id}_{sid}", p, z) for z, sid in enumerate(slice_ids(si.n))]
    return out


def _open(path: Path) -> Any:
    from tomoseg.io.sources import open_source

    return open_source(path)


class ItemReader:
    """Reads the images and masks of :class:`Item` s, keeping the volumes open while their
    slices are read in order (one slice at a time: never a whole volume). Use as a context
    manager, or call :meth:`close`."""

    def __init__(self) -> None:
        self._open: dict[Path, tuple[ExitStack, Callable[[int], np.ndarray]]] = {}

    def _slice(self, path: Path, z: int) -> np.ndarray:
        if path not in self._open:
            while len(self._open) >= 4:  # an image and a mask volume, and the next pair
                stack, _ = self._open.pop(next(iter(self._open)))
                stack.close()
            stack = ExitStack()
            read = stack.enter_context(_open(path).reader())
            self._open[path] = (stack, read)
        return self._open[path][1](z)

    def image(self, item: Item) -> np.ndarray:
        """(H, W) image of the item, its file's dtype."""
        if item.z is None:
            return read_image(item.pair.image)
        return self._slice(item.pair.image, item.z)

    def mask(self, item: Item) -> np.ndarray:
        """(H, W) label array of the item, as :func:`~tomoseg.io.images.read_mask` gives it."""
        if item.z is None:
            return read_mask(item.pair.mask)
        return as_mask(self._slice(item.pair.mask, item.z), item.where)

    def pair(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
        """``(image, mask)`` of the item, shapes checked."""
        if item.z is None:
            return read_pair(item.pair)
        return self.image(item), self.mask(item)

    def close(self) -> None:
        for stack, _ in self._open.values():
            stack.close()
        self._open.clear()

    def __enter__(self) -> ItemReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- datasets


class DatasetSpec(BaseModel):
    """What ``dataset.json`` says about a dataset.

    The class of interest defaults to the last class (for two classes: the foreground).
    """

    classes: list[str] = Field(min_length=2, max_length=MAX_CLASSES)
    class_of_interest: str | None = None
    name: str | None = None
    #: mask value of unannotated pixels (partial labels): not a class id, e.g. 255
    ignore_label: int | None = Field(default=None, le=2**31 - 1)
    #: each split's images, in natural order of file stem, are consecutive sections of one
    #: volume (needed for 2.5D context: ``TrainConfig.context``)
    consecutive: bool = False

    model_config = {"extra": "allow"}

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("class names must be unique")
        return v

    @model_validator(mode="after")
    def _ignore(self) -> DatasetSpec:
        v = self.ignore_label
        if v is not None and (isinstance(v, bool) or v < 0 or v < len(self.classes)):
            raise ValueError(
                f"ignore_label {v!r} is a class id or negative (classes are "
                f"0..{len(self.classes) - 1}): unannotated pixels need a mask value no class "
                "uses, e.g. 255"
            )
        return self

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
    raw = load_json(f)
    if not isinstance(raw, dict):
        raise TomosegError(f"malformed {f}: expected a JSON object")
    return validated(DatasetSpec, raw, str(f))


def split_pairs(
    root: str | os.PathLike[str], split: str, *, image_suffix: str = "", mask_suffix: str = ""
) -> list[Pair]:
    """Image/mask pairs of one split (``train``, ``val`` or ``test``) of a dataset folder
    (name endings as :func:`pair_files`).

    Raises:
        TomosegError: the split is missing or inconsistent.
    """
    d = Path(root) / split
    if not (d / "images").is_dir() or not (d / "masks").is_dir():
        raise TomosegError(f"dataset {root} has no '{split}' split ({d}/images and {d}/masks)")
    return pair_files(d / "images", d / "masks", image_suffix=image_suffix, mask_suffix=mask_suffix)


def resolve_classes(classes: str | Sequence[str] | None, n_min: int = 2) -> list[str] | None:
    """Parse ``"a,b,c"`` into a list of class names (None passes through)."""
    if classes is None:
        return None
    names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else list(classes)
    if len(names) < n_min or any(not n for n in names) or len(set(names)) != len(names):
        raise TomosegError(f"classes={classes!r}: must name at least {n_min} distinct classes")
    return names
