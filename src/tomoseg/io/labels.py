"""The label conventions of other tools, recognised on every path that reads label files.

Masks drawn or exported by other tools do not always hold tomoseg's class ids ``0..K-1``:

* **0/255 binary masks** (an image editor's default): read as 0/1, with a warning.
* **Ids counted from 1** (ilastik's *Simple Segmentation* export writes 1, 2, ... with no 0):
  against classes counted from 0 (a prediction, a run's or a dataset's ``0..K-1``), every pixel
  would be one class off. Refused, naming the relabelling to do (subtract 1).
* **Label images given as images** (a mask folder where grayscale slices belong): an integer
  image with at most :data:`LABEL_LIKE_VALUES` distinct values; a warning
  (:class:`LabelLikeTally`).
* **Instance labels** (napari's Labels layer, cellpose masks, a watershed: every object its own
  id, the ids differing from image to image): not classes. Refused, or with
  ``instances="binarize"`` read as 0 (background) / 1 (object).

:func:`label_stats` summarises one label array; :func:`resolve_labels` decides, from the
summaries of all the label arrays of a job together, how to read them (a :class:`ClassIds`).
``score``, ``evaluate``, ``check``, ``train``, ``tune``, ``crops``, ``lr-find``, the sweep and the
API all read their labels through these two functions.

Instance detection uses connected regions of equal value (:func:`skimage.measure.label`, 8-
connectivity): a label array whose every non-zero id is one connected region is "one object per
id".
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.io.images import read_mask
from tomoseg.utils.format import plural

#: what to do with masks that look like instance labels
INSTANCES = ("error", "binarize")
#: fewest non-zero ids that can make instance labels
MIN_INSTANCE_IDS = 3
#: with one label array (or the same ids in each), this many one-object ids make instance labels
MANY_INSTANCE_IDS = 8


#: an integer image with at most this many distinct values looks like a label image
LABEL_LIKE_VALUES = 16
#: pixels of each image that :class:`LabelLikeTally` looks at (a regular grid)
LABEL_LIKE_SAMPLE = 1 << 16
#: images that :func:`warn_label_like` looks at (evenly spaced)
LABEL_LIKE_IMAGES = 32


class LabelLikeTally:
    """Whether images look like label images rather than grayscale ones, one image at a time:
    integer (or bool) arrays holding at most :data:`LABEL_LIKE_VALUES` distinct values in all.
    A grayscale slice holds hundreds; a class mask a few.

    Each image is measured on a regular grid of at most :data:`LABEL_LIKE_SAMPLE` pixels of its
    last two axes (every ``s``-th row and column); once a floating-point image or more values
    are seen, later images are not looked at.
    """

    def __init__(self) -> None:
        self.values: set[int] = set()
        self.grayscale = False

    def add(self, image: np.ndarray) -> None:
        """Count the distinct values of one (..., H, W) array."""
        if self.grayscale:
            return
        a = np.asarray(image)
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            self.grayscale = True
            return
        s = max(1, math.ceil(math.sqrt(a.shape[-2] * a.shape[-1] / LABEL_LIKE_SAMPLE)))
        self.values.update(int(v) for v in np.unique(a[..., ::s, ::s]))
        self.grayscale = len(self.values) > LABEL_LIKE_VALUES

    @property
    def count(self) -> int | None:
        """The number of distinct values when the images look like label images, else None."""
        return None if self.grayscale or not self.values else len(self.values)

    def warn(self, where: str, remedy: str) -> None:
        """One :class:`~tomoseg.errors.TomosegWarning` when the images look like label images:
        ``<where> look like label images (N distinct values ...), not grayscale; <remedy>``."""
        n = self.count
        if n is not None:
            warnings.warn(
                f"{where} look like label images ({plural(n, 'distinct value')} in integer "
                f"pixels), not grayscale; {remedy}",
                TomosegWarning,
                stacklevel=3,
            )


def warn_label_like(images: Sequence[np.ndarray], where: str, remedy: str) -> None:
    """:meth:`LabelLikeTally.warn` of at most :data:`LABEL_LIKE_IMAGES` evenly spaced
    ``images``."""
    tally = LabelLikeTally()
    for im in list(images)[:: max(1, math.ceil(len(images) / LABEL_LIKE_IMAGES))]:
        tally.add(im)
    tally.warn(where, remedy)


@dataclass(frozen=True)
class LabelStats:
    """What one label array shows (see :func:`label_stats`).

    Attributes:
        ids: the values found, the ignore label included.
        one_object_each: every non-zero id (not the ignore label) is one 8-connected region;
            None where not measured (fewer than :data:`MIN_INSTANCE_IDS` such ids, or ids only).
    """

    ids: frozenset[int]
    one_object_each: bool | None = None


def label_stats(mask: np.ndarray, ignore_label: int | None = None) -> LabelStats:
    """Summarise one (H, W) integer label array for :func:`resolve_labels`.

    Costs one :func:`numpy.unique`, plus one :func:`skimage.measure.label` pass when the array
    holds at least :data:`MIN_INSTANCE_IDS` non-zero ids.
    """
    m = np.asarray(mask)
    ids = frozenset(int(v) for v in np.unique(m))
    objects = ids - {0} - ({ignore_label} if ignore_label is not None else set())
    if len(objects) < MIN_INSTANCE_IDS:
        return LabelStats(ids)
    from skimage.measure import label

    if ignore_label is not None and ignore_label in ids:
        m = np.where(m == ignore_label, 0, m)
    regions = int(label(m, background=0, connectivity=2).max())
    return LabelStats(ids, regions == len(objects))


def stats_of_ids(ids: Iterable[int]) -> list[LabelStats]:
    """A :class:`LabelStats` of ids alone (no shape known: instance labels are not detected)."""
    return [LabelStats(frozenset(int(i) for i in ids))]


def check_instances(instances: str) -> str:
    """Validate ``instances``.

    Raises:
        TomosegError: not one of :data:`INSTANCES`.
    """
    if instances not in INSTANCES:
        raise TomosegError(f"instances={instances!r}: must be one of {', '.join(INSTANCES)}")
    return instances


@dataclass(frozen=True)
class ClassIds:
    """How the label files of one job are to be read (see :func:`resolve_labels`).

    Attributes:
        n_classes: K; every id read lies in ``0..K-1`` (or is the ignore label).
        stored_255: the groups (e.g. ``"truth"``) holding binary masks stored as 0/255, read
            as 0/1.
        ignore_label: the mask value of unannotated pixels, kept as it is.
        binarized: the groups read as 0 (background) / 1 (any other id), ``instances="binarize"``.
    """

    n_classes: int
    stored_255: frozenset[str] = frozenset()
    ignore_label: int | None = None
    binarized: frozenset[str] = frozenset()

    @property
    def classes(self) -> list[str]:
        """Class names from the ids: ``"0".."K-1"``."""
        return [str(i) for i in range(self.n_classes)]

    def apply(self, group: str, mask: np.ndarray, where: object = None) -> np.ndarray:
        """A mask of ``group`` as class ids: 0/255 storage read as 0/1, instance labels
        binarised where asked, ids checked.

        Raises:
            TomosegError: an id outside ``0..K-1`` (naming ``where``).
        """
        m = np.asarray(mask)
        ign = self.ignore_label
        if group in self.binarized:
            keep = m == ign if ign is not None else np.zeros(m.shape, bool)
            out = (m != 0).astype(np.uint8 if ign is None or ign < 256 else np.int32)
            if ign is not None:
                out[keep] = ign
            m = out
        elif group in self.stored_255:
            m = (m == 255).astype(np.uint8)
        ids = {int(v) for v in np.unique(m)} - ({ign} if ign is not None else set())
        bad = sorted(i for i in ids if not 0 <= i < self.n_classes)
        if bad:
            raise TomosegError(
                f"mask values {', '.join(map(str, bad[:5]))} outside 0..{self.n_classes - 1} "
                f"in {where or group}"
            )
        return m

    def read(self, group: str, path: str | os.PathLike[str]) -> np.ndarray:
        """:func:`~tomoseg.io.images.read_mask` then :meth:`apply`."""
        return self.apply(group, read_mask(path), path)


def _looks_like_instances(stats: Sequence[LabelStats], ignore_label: int | None) -> bool:
    """Many ids, each one connected object in every array, varying between arrays (or very
    many in one)."""
    drop = {0} | ({ignore_label} if ignore_label is not None else set())
    sets = [s.ids - drop for s in stats]
    every = set().union(*sets) if sets else set()
    if len(every) < MIN_INSTANCE_IDS:
        return False
    if any(s.one_object_each is False for s in stats) or all(
        s.one_object_each is None for s in stats
    ):
        return False
    varying = len({frozenset(s) for s in sets if s}) > 1
    return varying or len(every) >= MANY_INSTANCE_IDS


def _instances_error(where: str, n_ids: int) -> TomosegError:
    return TomosegError(
        f"{where} looks like instance labels ({n_ids} ids, each one connected object, differing "
        "from image to image), not class ids: binarise them with instances='binarize' (every "
        "object becomes class 1, 0 stays background), or, if these ids are classes, give the "
        "class names (classes, or a dataset.json)"
    )


def _from_one(v: set[int]) -> int:
    """K when the ids are exactly 1..K (K >= 2, no 0), else 0."""
    k = max(v, default=0)
    return k if k >= 2 and v == set(range(1, k + 1)) else 0


def _check_from_one(
    effective: Mapping[str, set[int]],
    n_classes: int | None,
    where: Mapping[str, str],
    ignore_label: int | None,
) -> None:
    """Refuse ids 1..K (no 0) against classes 0..K-1 on the other side (ilastik's export)."""
    for group, v in effective.items():
        k = _from_one(v)
        if not k:
            continue
        others = [(g, w) for g, w in effective.items() if g != group]
        if n_classes == k:
            other = f"the {k} classes 0..{k - 1}"
        elif n_classes is None and not others:
            other = "class ids counted from 0 (none of its pixels is 0)"
        else:
            against = [g for g, w in others if 0 in w and max(w) < k]
            if n_classes is not None or not against:
                continue
            other = f"{where.get(against[0], against[0])}, counted from 0"
        unlabelled = (
            " (where 0 marks unannotated pixels, as ilastik's label export writes them, set "
            "those to 255 first and give ignore_label=255)"
            if ignore_label == 0
            else ""
        )
        raise TomosegError(
            f"{where.get(group, group)} holds ids 1..{k} with no 0, against {other}: labels "
            "numbered from 1 (ilastik's Simple Segmentation export) are one class off; "
            f"subtract 1 from every mask so that its classes are 0..{k - 1}{unlabelled}"
        )


def check_ignore_label(value: object, n_classes: int | None, what: str = "ignore_label") -> None:
    """Validate an ignore label: a mask value >= 0 that is not a class id (None passes).

    Raises:
        TomosegError: negative, not an integer, or one of ``0..n_classes-1``.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise TomosegError(f"{what}={value!r}: must be a mask value >= 0")
    if n_classes is not None and value < n_classes:
        raise TomosegError(
            f"{what}={value} is a class id (classes are 0..{n_classes - 1}); unannotated "
            "pixels need a value no class uses, e.g. 255"
        )


def resolve_labels(
    groups: Mapping[str, Sequence[LabelStats]],
    n_classes: int | None = None,
    *,
    ignore_label: int | None = None,
    instances: str = "error",
    where: Mapping[str, str] | None = None,
) -> ClassIds:
    """Decide how a job's label arrays are read, from all of them together: the one rule of
    ``score``, ``evaluate``, ``check``, ``train``, ``tune``, ``crops`` and the API.

    * A group (a folder of masks, a truth or prediction array) that looks like instance labels
      (at least :data:`MIN_INSTANCE_IDS` non-zero ids, each one connected object in every
      array, the ids differing between arrays or :data:`MANY_INSTANCE_IDS` of them) is refused
      unless ``instances="binarize"``; with it, every group is read as 0 / 1 (``!= 0``). Not
      when ``n_classes`` is given and every id fits it (the classes are declared).
    * A group whose ids are exactly {0, 255} (or {255}) is a binary mask stored as 0/255: read
      as 0/1, with a :class:`~tomoseg.errors.TomosegWarning`. Not when 255 is a valid class id
      or the ignore label.
    * A group whose ids are exactly 1..K with no 0, against 0..K-1 on the other side
      (``n_classes == K``, another group's ids, or no other group and no 0 anywhere), is
      refused: ids numbered from 1.
    * With ``n_classes``, every id must lie in ``0..K-1``; without it, K is the largest id + 1
      (at least 2), and ids leaving most of ``0..K-1`` unused (e.g. {0, 1, 255}) are refused.
    * The ignore label must not be one of the K class ids.

    Args:
        groups: group name (``truth``, ``prediction``, ``masks``) -> one :class:`LabelStats`
            per label array (:func:`label_stats`).
        n_classes: K when known (a dataset's, a run's, the given class names).
        ignore_label: the mask value of unannotated pixels (not a class).
        instances: ``"error"`` or ``"binarize"``.
        where: group name -> the folder or file, for messages.

    Returns:
        The :class:`ClassIds` to read the arrays with.

    Raises:
        TomosegError: each case above, one line naming the group's folder and the remedy.
    """
    check_instances(instances)
    check_ignore_label(ignore_label, None)
    where = dict(where or {})
    drop = {ignore_label} if ignore_label is not None else set()
    raw = {g: set().union(*(s.ids for s in st)) - drop if st else set() for g, st in groups.items()}
    binarized: set[str] = set()
    for group, st in groups.items():
        fits = n_classes is not None and all(0 <= i < n_classes for i in raw[group])
        if instances == "binarize":
            binarized.add(group)
        elif not fits and _looks_like_instances(st, ignore_label):
            raise _instances_error(where.get(group, group), len(raw[group] - {0}))
    stored: set[str] = set()
    effective: dict[str, set[int]] = {}
    for group, v in raw.items():
        if group in binarized:
            v = {1 if i != 0 else 0 for i in v}
        elif 255 in v and v <= {0, 255} and (n_classes is None or n_classes <= 255):
            stored.add(group)
            warnings.warn(
                f"{where.get(group, group)} holds binary masks stored as 0/255: read as class "
                "ids 0/1",
                TomosegWarning,
                stacklevel=3,
            )
            v = {1 if i == 255 else i for i in v}
        effective[group] = v
    _check_from_one(effective, n_classes, where, ignore_label)
    every = set().union(*effective.values()) if effective else set()
    if n_classes is None:
        k = max(max(every, default=0) + 1, 2)
        if k > 16 and len(every) * 2 < k:
            listed = ", ".join(map(str, sorted(every)[:8]))
            raise TomosegError(
                f"class ids {listed} of {' and '.join(where.get(g, g) for g in groups)} would "
                f"make {k} classes, most of them unused; give the class names (classes, or a "
                "dataset.json) to say how many classes there are"
            )
        n_classes = k
    for group, v in effective.items():
        bad = sorted(i for i in v if not 0 <= i < n_classes)
        if bad:
            raise TomosegError(
                f"mask values {', '.join(map(str, bad[:5]))} outside 0..{n_classes - 1} in "
                f"{where.get(group, group)} (the class ids of {n_classes} classes)"
            )
    check_ignore_label(ignore_label, n_classes)
    return ClassIds(int(n_classes), frozenset(stored), ignore_label, frozenset(binarized))


def resolve_class_ids(
    ids: Mapping[str, Iterable[int]],
    n_classes: int | None = None,
    *,
    ignore_label: int | None = None,
    where: Mapping[str, str] | None = None,
) -> ClassIds:
    """:func:`resolve_labels` from the ids alone (one set per group; instance labels, which
    need the arrays, are not detected)."""
    return resolve_labels(
        {g: stats_of_ids(v) for g, v in ids.items()},
        n_classes,
        ignore_label=ignore_label,
        where=where,
    )
