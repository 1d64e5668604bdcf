"""Datasets in memory: full-size images with their masks (a volume pair gives one sample per
z-slice)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tomoseg.errors import TomosegError
from tomoseg.io.datasets import (
    DatasetSpec,
    Item,
    ItemReader,
    Pair,
    expand_pairs,
    load_dataset,
    split_pairs,
)
from tomoseg.io.labels import ClassIds, label_stats, resolve_labels


@dataclass
class Sample:
    """One full-size image with its mask; a slice of a volume pair also names its image volume
    (``volume``) and its index ``z`` there (what orthogonal planes are rebuilt from)."""

    id: str
    image: np.ndarray
    mask: np.ndarray
    volume: Path | None = None
    z: int | None = None


def load_labelled(
    pairs: list[Pair],
    n_classes: int | None,
    *,
    ignore_label: int | None = None,
    instances: str = "error",
) -> tuple[list[Sample], ClassIds]:
    """Read and check every pair, with the one label rule of
    :func:`tomoseg.io.labels.resolve_labels` over all the masks together (0/255 masks read as
    0/1 with a warning; ids from 1 and instance labels refused, or instance labels binarised
    with ``instances="binarize"``).

    A pair of volumes (a multi-page TIFF, a Zarr store, any volume format of
    :data:`tomoseg.io.sources.FORMATS`) gives one sample per z-slice, read one slice at a time.

    Args:
        pairs: image/mask file pairs.
        n_classes: K; mask values must lie in ``0..K-1`` (None: K from the masks' ids).
        ignore_label: a further allowed mask value marking unannotated pixels.
        instances: ``"error"`` or ``"binarize"``.

    Returns:
        ``(samples, ids)``: the samples (masks as class ids) and how they were read
        (``ids.n_classes`` is K).

    Raises:
        TomosegError: unreadable files, shapes that differ, mask ids that break the rule.
    """
    items = expand_pairs(pairs)
    raw: list[Sample] = []
    with ItemReader() as reader:
        for it in items:
            image, mask = reader.pair(it)
            _same_shape(it, image, mask)
            raw.append(Sample(it.id, image, mask, *_origin(it)))
    if not raw:
        return raw, ClassIds(n_classes or 2, ignore_label=ignore_label)
    folder = f"masks folder {pairs[0].mask.parent}"
    ids = resolve_labels(
        {"masks": [label_stats(s.mask, ignore_label) for s in raw]},
        n_classes,
        ignore_label=ignore_label,
        instances=instances,
        where={"masks": folder},
    )
    samples = [
        Sample(s.id, s.image, ids.apply("masks", s.mask, it.where), s.volume, s.z)
        for s, it in zip(raw, items, strict=True)
    ]
    return samples, ids


def iter_labelled(
    pairs: list[Pair],
    n_classes: int | None,
    *,
    ignore_label: int | None = None,
    instances: str = "error",
) -> tuple[ClassIds, Iterator[Sample]]:
    """:func:`load_labelled` in bounded memory: the masks are read once to decide the label
    rule, then the samples are read again one at a time as the iterator is consumed (a volume
    one slice at a time).

    Returns:
        ``(ids, samples)``.

    Raises:
        TomosegError: as :func:`load_labelled` (a shape mismatch while iterating).
    """
    items = expand_pairs(pairs)
    with ItemReader() as reader:
        stats = [label_stats(reader.mask(it), ignore_label) for it in items]
    ids = resolve_labels(
        {"masks": stats},
        n_classes,
        ignore_label=ignore_label,
        instances=instances,
        where={"masks": f"masks folder {pairs[0].mask.parent}" if pairs else "masks"},
    )

    def samples() -> Iterator[Sample]:
        with ItemReader() as reader:
            for it in items:
                image, mask = reader.pair(it)
                _same_shape(it, image, mask)
                yield Sample(it.id, image, ids.apply("masks", mask, it.where), *_origin(it))

    return ids, samples()


def _origin(it: Item) -> tuple[Path | None, int | None]:
    """The image volume and slice index of an item (None, None for a 2D pair)."""
    return (None, None) if it.z is None else (Path(it.pair.image), it.z)


def _same_shape(it: Item, image: np.ndarray, mask: np.ndarray) -> None:
    if image.shape != mask.shape:
        raise TomosegError(
            f"image {it.pair.image} is {image.shape} but its mask {it.where} is {mask.shape}"
        )


def load_pairs(
    pairs: list[Pair],
    n_classes: int | None,
    *,
    ignore_label: int | None = None,
    instances: str = "error",
) -> list[Sample]:
    """The samples of :func:`load_labelled`."""
    return load_labelled(pairs, n_classes, ignore_label=ignore_label, instances=instances)[0]


def load_split(
    root: Path, split: str, spec: DatasetSpec | None = None, *, instances: str = "error"
) -> list[Sample]:
    """Read one split of a dataset folder, checking ids, shapes and class ids (the dataset's
    ``ignore_label``, if it declares one, is allowed in masks)."""
    spec = spec or load_dataset(root)
    return load_pairs(
        split_pairs(root, split),
        len(spec.classes),
        ignore_label=spec.ignore_label,
        instances=instances,
    )
