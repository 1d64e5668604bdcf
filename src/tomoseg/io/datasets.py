"""Dataset folders: ``dataset.json``, splits, image/mask pairs matched by file stem."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from tomoseg.errors import TomosegError
from tomoseg.io.images import list_images, read_image, read_mask
from tomoseg.utils.format import pydantic_message

SPLITS = ("train", "val", "test")


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
    #: mask value of unannotated pixels (partial labels): not a class id, e.g. 255
    ignore_label: int | None = None
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
        raise TomosegError(f"classes={classes!r}: must name at least {n_min} distinct classes")
    return names
