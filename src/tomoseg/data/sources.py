"""Where training data comes from, and what it holds: a dataset folder (``dataset.json`` with
``train`` and optionally ``val``) or a folder of images with a folder of masks.

* **Partial labels**: ``dataset.json`` may declare ``"ignore_label": V`` (or the run's config
  ``ignore_label`` where there is no ``dataset.json``); mask pixels equal to V are unannotated and
  count for nothing. Inside training, unannotated pixels, and pixels whose image value is NaN or
  infinite, carry :data:`IGNORE_INDEX` in int16 masks.
* **No validation split**: a seeded fraction ``val_fraction`` of the training images (at least
  one) is held out; with a single training image, a band of its last rows (``val_fraction`` of
  its height) is held out instead: those pixels are unannotated in training and are the
  validation image. :func:`load_training_samples` returns what was held out, for ``run.json``.
* **Bit depths**: training and validation images must share one integer bit depth (8- and
  16-bit images normalised with one set of bounds would not look alike to the network), so a
  mix is refused with one line naming a file of each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tomoseg.data.context import check_consecutive, with_context
from tomoseg.data.samples import Sample, load_labelled, load_pairs
from tomoseg.errors import TomosegError
from tomoseg.io.datasets import DatasetSpec, Pair, load_dataset, pair_files, split_pairs
from tomoseg.io.images import natural_key
from tomoseg.io.labels import check_ignore_label as labels_check_ignore
from tomoseg.io.labels import warn_label_like
from tomoseg.utils.format import plural

IGNORE_INDEX = -1  #: mask value of unannotated pixels inside training (int16 masks)


@dataclass(frozen=True)
class DataSource:
    """A dataset folder, or images with their masks (folders matched by file name, or one
    image volume with its label volume), and how to read their labels.

    Attributes:
        root: dataset folder holding ``dataset.json`` and ``train/`` (``val/`` optional).
        images: folder of training images (instead of ``root``), or one image file or volume.
        masks: folder of their masks (class ids), with ``images``; the mask file of an image
            file; may be ``images`` itself with ``mask_suffix``.
        classes: class names for ``images``/``masks``; default ``"0".."K-1"`` from the largest
            id in the masks.
        image_suffix: the ending of every image name, not part of its id (nnU-Net's ``_0000``).
        mask_suffix: the ending of every mask name (cellpose's ``_masks``).
        instances: masks that look like instance labels: ``"error"`` (refused) or
            ``"binarize"`` (every object class 1); see :mod:`tomoseg.io.labels`.
    """

    root: Path | None = None
    images: Path | None = None
    masks: Path | None = None
    classes: tuple[str, ...] | None = None
    image_suffix: str = ""
    mask_suffix: str = ""
    instances: str = "error"

    @classmethod
    def of(
        cls,
        data: str | os.PathLike[str] | DataSource | None = None,
        *,
        images: str | os.PathLike[str] | None = None,
        masks: str | os.PathLike[str] | None = None,
        classes: str | list[str] | tuple[str, ...] | None = None,
        image_suffix: str | None = None,
        mask_suffix: str | None = None,
        instances: str | None = None,
    ) -> DataSource:
        """Check and build a source: ``data``, or ``images`` with ``masks`` (a source given as
        ``data`` is returned as it is).

        Raises:
            TomosegError: neither or both given, only one of images/masks, classes with data,
                ``instances`` not one of ``error``, ``binarize``.
        """
        from tomoseg.io.datasets import resolve_classes
        from tomoseg.io.labels import check_instances

        if isinstance(data, DataSource):
            return data
        how = {
            "image_suffix": image_suffix or "",
            "mask_suffix": mask_suffix or "",
            "instances": check_instances(instances or "error"),
        }
        if data is not None and (images is not None or masks is not None):
            raise TomosegError("give data=DIR, or images=DIR with masks=DIR, not both")
        if data is None:
            if images is None or masks is None:
                raise TomosegError("give data=DIR, or both images=DIR and masks=DIR")
            names = resolve_classes(classes)
            return cls(None, Path(images), Path(masks), tuple(names) if names else None, **how)
        if classes is not None:
            names = classes if isinstance(classes, str) else ",".join(classes)
            raise TomosegError(
                f"classes={names!r} goes with images=DIR and masks=DIR; a dataset lists its classes"
            )
        return cls(Path(data), None, None, None, **how)

    @classmethod
    def from_record(
        cls, data: object, classes: object = None, where: str | os.PathLike[str] = "the run"
    ) -> DataSource:
        """The source a run recorded as ``data`` in its ``run.json`` (:meth:`describe`): a
        dataset folder, or images and masks read with the run's ``classes`` (where they are
        not the ``"0".."K-1"`` inferred from the masks), with the recorded name endings and
        ``instances``.

        Raises:
            TomosegError: no such record, naming ``where``; as :meth:`of`.
        """
        if isinstance(data, str) and data:
            return cls.of(data)
        if not isinstance(data, dict) or not isinstance(data.get("data", data.get("images")), str):
            raise TomosegError(
                f"{where}: its run.json records no training data to resume with; give data=DIR"
            )
        how = {k: data.get(k) for k in ("image_suffix", "mask_suffix", "instances")}
        if isinstance(data.get("data"), str):
            return cls.of(data["data"], **how)
        names = [str(c) for c in classes] if isinstance(classes, list) else None
        if names == [str(i) for i in range(len(names or []))]:
            names = None  # inferred from the masks' ids, as in training
        return cls.of(images=data["images"], masks=data.get("masks"), classes=names, **how)

    def describe(self) -> str | dict[str, str]:
        """What ``run.json`` records as ``data`` (the name endings and ``instances`` where
        they are not the defaults)."""
        how = {
            k: v
            for k, v in (
                ("image_suffix", self.image_suffix),
                ("mask_suffix", self.mask_suffix),
                ("instances", "binarize" if self.instances == "binarize" else ""),
            )
            if v
        }
        if self.root is not None:
            if not how:
                return str(self.root.resolve())
            return {"data": str(self.root.resolve()), **how}
        return {
            "images": str(Path(self.images).resolve()),
            "masks": str(Path(self.masks).resolve()),
            **how,
        }  # type: ignore[arg-type]

    def pairs(self, split: str = "train") -> list[Pair]:
        """The image/mask pairs of a split of the dataset (``images``/``masks``: all of them,
        whatever ``split``).

        Raises:
            TomosegError: as :func:`~tomoseg.io.datasets.pair_files`.
        """
        how = {"image_suffix": self.image_suffix, "mask_suffix": self.mask_suffix}
        if self.root is not None:
            return split_pairs(self.root, split, **how)
        return pair_files(self.images, self.masks, **how)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        """The source as messages name it."""
        if self.root is not None:
            return f"dataset {self.root}"
        return f"images {self.images}"


@dataclass
class LoadedSamples:
    """The training and validation samples of a source, as read (masks hold the file's values).

    ``where`` names the source in messages.
    """

    spec: DatasetSpec
    ignore_label: int | None
    train: list[Sample]
    val: list[Sample]
    validation: dict[str, Any] = field(default_factory=dict)
    where: str = "the training data"

    def with_context(
        self, train: list[np.ndarray], val: list[np.ndarray], k: int
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """2.5D context of arrays made from :attr:`train` and :attr:`val` (raw or normalised
        images, one per sample, in the same order): each becomes (2k + 1, H, W) with the
        ``k`` sections above and below it in its sequence, edges replicated
        (:func:`~tomoseg.data.context.context_stack`). The sequences are the splits in
        natural order of id; validation held out of several training images takes its
        neighbours from the training split it came from (one sequence, natural order). ``k =
        0`` returns the arrays unchanged.

        Raises:
            TomosegError: ``k > 0`` on a source that does not declare consecutive sections
                (``dataset.json``'s ``"consecutive": true``); neighbours of other shapes.
        """
        if k == 0:
            return train, val
        check_consecutive(bool(self.spec.consecutive), k, self.where)
        rec = self.validation
        if rec.get("source") == "held out of train" and "block" not in rec:
            ids = [s.id for s in self.train] + [s.id for s in self.val]
            arrays = list(train) + list(val)
            order = sorted(range(len(ids)), key=lambda i: natural_key(ids[i]))
            ctx = with_context([arrays[i] for i in order], k)
            by_index = dict(zip(order, ctx, strict=True))
            out = [by_index[i] for i in range(len(ids))]
            return out[: len(train)], out[len(train) :]
        return with_context(train, k), with_context(val, k)


def dataset_ignore_label(spec: DatasetSpec, where: Path | str) -> int | None:
    """``ignore_label`` declared by ``dataset.json`` (None if absent), checked.

    Raises:
        TomosegError: not a non-negative integer, or equal to a class id.
    """
    return spec.ignore_label  # validated when dataset.json is read


def check_ignore_label(value: Any, n_classes: int | None, what: str = "ignore_label") -> int | None:
    """Validate an ignore label: a mask value >= 0 that is not a class id (None passes); the
    rule of :func:`tomoseg.io.labels.check_ignore_label`."""
    labels_check_ignore(value, n_classes, what)
    return None if value is None else int(value)


def _resolve_ignore(declared: int | None, option: int | None, where: str) -> int | None:
    if declared is not None and option is not None and declared != option:
        raise TomosegError(
            f"ignore_label={option} differs from the ignore_label {declared} that {where} declares"
        )
    return declared if declared is not None else option


def _check_bit_depths(samples: list[Sample]) -> None:
    depths: dict[str, str] = {}
    for s in samples:
        if np.issubdtype(s.image.dtype, np.integer):
            depths.setdefault(f"{8 * s.image.dtype.itemsize}-bit", s.id)
    if len(depths) > 1:
        parts = ", ".join(f"{d} ('{i}')" for d, i in sorted(depths.items()))
        raise TomosegError(
            f"training images mix bit depths: {parts}; one intensity normalisation cannot fit "
            "both, so convert them to one bit depth first"
        )


def hold_out(
    train: list[Sample], fraction: float, seed: int, ignore_label: int | None
) -> tuple[list[Sample], list[Sample], dict[str, Any]]:
    """Split validation off the training samples (for a dataset without a ``val`` split).

    Several images: ``max(1, round(fraction * N))`` of them, chosen with
    ``numpy.random.default_rng(seed)``. One image: the band of its last
    ``max(1, round(fraction * H))`` rows becomes the validation image and is unannotated
    (``ignore_label``, or :data:`IGNORE_INDEX` when None) in the training copy.

    Returns:
        ``(train, val, record)``; ``record`` describes the hold-out for ``run.json``.

    Raises:
        TomosegError: fraction outside (0, 1), or no training image left.
    """
    if not 0 < fraction < 1:
        raise TomosegError(f"val_fraction={fraction} must lie strictly between 0 and 1")
    n = len(train)
    rec: dict[str, Any] = {"source": "held out of train", "val_fraction": fraction, "seed": seed}
    if n == 1:
        s = train[0]
        h = s.image.shape[0]
        band = max(1, round(fraction * h))
        if band >= h:
            raise TomosegError(
                f"val_fraction={fraction} leaves no training rows in the one image '{s.id}'"
            )
        y0 = h - band
        mask = s.mask.astype(np.int16 if ignore_label is None else s.mask.dtype, copy=True)
        mask[y0:] = IGNORE_INDEX if ignore_label is None else ignore_label
        tr = Sample(s.id, s.image, mask)
        va = Sample(f"{s.id}[rows {y0}:{h}]", s.image[y0:].copy(), s.mask[y0:].copy())
        rec.update(images=[s.id], block={"image": s.id, "rows": [y0, h]})
        return [tr], [va], rec
    n_val = max(1, round(fraction * n))
    if n_val >= n:
        raise TomosegError(
            f"val_fraction={fraction} of {plural(n, 'training image')} leaves no training image"
        )
    pick = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    rec["images"] = [train[i].id for i in sorted(pick)]
    return (
        [s for i, s in enumerate(train) if i not in pick],
        [s for i, s in enumerate(train) if i in pick],
        rec,
    )


#: what a warning about training images that look like label images suggests
LABEL_LIKE_REMEDY = (
    "a network learns from grayscale intensities (give the raw images, and their labels as masks)"
)


def load_training_samples(
    source: DataSource,
    *,
    ignore_label: int | None,
    val_fraction: float,
    seed: int,
    need_val: bool = True,
) -> LoadedSamples:
    """Read the training (and validation) samples of a source.

    Args:
        source: the :class:`DataSource`.
        ignore_label: mask value of unannotated pixels where the dataset declares none (an
            ``ignore_label`` in ``dataset.json`` wins; a different value here is an error).
        val_fraction: share held out for validation when there is no ``val`` split.
        seed: seed of the hold-out.
        (These three come from the run's :class:`~tomoseg.config.TrainConfig`, which holds
        their defaults.)
        need_val: False: validation is not read or held out (``lr-find``).

    Returns:
        A :class:`LoadedSamples`.

    Raises:
        TomosegError: missing folders or files, bad masks, bad ignore label or fraction, mixed
            bit depths.

    Warns:
        TomosegWarning: images that look like label images
            (:func:`~tomoseg.io.labels.warn_label_like`).
    """
    how = {"instances": source.instances}
    if source.root is not None:
        spec = load_dataset(source.root)
        ignore = _resolve_ignore(
            dataset_ignore_label(spec, source.root / "dataset.json"),
            check_ignore_label(ignore_label, len(spec.classes)),
            f"{source.root / 'dataset.json'}",
        )
        k = len(spec.classes)
        train = load_pairs(source.pairs("train"), k, ignore_label=ignore, **how)
        has_val = (source.root / "val").is_dir()
        val = (
            load_pairs(source.pairs("val"), k, ignore_label=ignore, **how)
            if need_val and has_val
            else []
        )
        where = f"split 'val' of {source.root}" if has_val else None
    else:
        ignore = check_ignore_label(ignore_label, None)
        n = len(source.classes) if source.classes else None
        train, ids = load_labelled(source.pairs(), n, ignore_label=ignore, **how)
        spec = DatasetSpec(classes=list(source.classes) if source.classes else ids.classes)
        val, where = [], None
    _check_bit_depths(train + val)
    warn_label_like(
        [s.image for s in train + val], f"{source.name}: the training images", LABEL_LIKE_REMEDY
    )
    record: dict[str, Any] = {}
    if need_val:
        if where is not None:
            record = {"source": where, "images": [s.id for s in val]}
        else:
            train, val, record = hold_out(train, val_fraction, seed, ignore)
    return LoadedSamples(spec, ignore, train, val, record, source.name)


def training_mask(sample: Sample, ignore_label: int | None) -> np.ndarray:
    """The int16 training mask of a sample: class ids, and :data:`IGNORE_INDEX` on unannotated
    pixels (the ignore label) and on non-finite image pixels (NaN, inf)."""
    m = sample.mask.astype(np.int16)
    if ignore_label is not None:
        m[sample.mask == ignore_label] = IGNORE_INDEX
    if np.issubdtype(sample.image.dtype, np.floating):
        m[~np.isfinite(sample.image)] = IGNORE_INDEX
    return m


def annotated_fraction(
    mask: np.ndarray, image: np.ndarray | None, ignore_label: int | None
) -> float:
    """Fraction of a mask's pixels that are annotated (not the ignore label, finite image)."""
    ok = np.ones(mask.shape, bool) if ignore_label is None else mask != ignore_label
    if image is not None and np.issubdtype(image.dtype, np.floating):
        ok &= np.isfinite(image)
    return float(ok.mean()) if ok.size else float("nan")
