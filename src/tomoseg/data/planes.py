"""Training samples from the ``xz`` and ``yz`` planes of labelled volumes (``TrainConfig.planes``).

A labelled volume is rebuilt from the training samples that are its z-slices:

* the slices of an image volume paired with a label volume (``train --images vol.tif --masks
  labels.tif``, a Zarr, any volume format), by their index in it;
* the slices of a split of a dataset that declares consecutive sections (``dataset.json``'s
  ``"consecutive": true``, as the phantom's), in natural order of their ids.

Its ``xz`` planes (one per y row, (Z, X)) and ``yz`` planes (one per x column, (Z, Y)) become
more training samples, so the uniform crop sampling (:mod:`tomoseg.data.crops`) draws crops
from every plane in proportion to its valid positions (a cube gives each plane about a third).
Slices held out for validation stay in the rebuilt volume as unannotated rows of the planes
(:data:`~tomoseg.data.sources.IGNORE_INDEX`: the network sees them, no loss is taken there), so
no validation label trains. Validation itself stays on the ``xy`` slices.

The voxels must be (nearly) cubes (:func:`tomoseg.utils.planes.check_isotropic`: the voxel size
of the image volume's metadata; a dataset of 2D files declares none: a warning, treated as
cubes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tomoseg.data.samples import Sample
from tomoseg.data.sources import IGNORE_INDEX, LoadedSamples, training_mask
from tomoseg.errors import TomosegError
from tomoseg.io.images import natural_key
from tomoseg.utils.format import plural
from tomoseg.utils.planes import check_context, check_isotropic

_SPLIT = "consecutive sections"


def _groups(loaded: LoadedSamples) -> dict[str, list[tuple[Sample, bool]]]:
    """The volumes of the training (and held-out validation) samples: name -> [(sample,
    trains)] in z order."""
    groups: dict[str, list[tuple[Any, Sample, bool]]] = {}
    consecutive = bool(loaded.spec.consecutive)
    held_out = loaded.validation.get("source") == "held out of train"
    for s, trains in [(s, True) for s in loaded.train] + [(s, False) for s in loaded.val]:
        if s.volume is not None and s.z is not None:
            groups.setdefault(str(s.volume.resolve()), []).append((s.z, s, trains))
        elif consecutive and (trains or held_out) and "[rows" not in s.id:
            groups.setdefault(_SPLIT, []).append((natural_key(s.id), s, trains))
    return {
        k: [(s, t) for _, s, t in sorted(v, key=lambda e: e[0])]
        for k, v in groups.items()
        if any(t for _, _, t in v)
    }


def _voxel(name: str) -> tuple[Any, Any, str]:
    """(voxel size, unit, where) of a group for the isotropy check."""
    if name == _SPLIT:
        return None, None, "the training data's consecutive sections"
    from tomoseg.io.sources import open_source

    src = open_source(name)
    return src.voxel_size, src.unit, f"image volume {name}"


def plane_samples(
    loaded: LoadedSamples, planes: Sequence[str], crop_size: int, context: int = 0
) -> tuple[list[Sample], dict[str, Any]]:
    """The ``xz`` / ``yz`` training samples of the labelled volumes of ``loaded``.

    Args:
        loaded: the training and validation samples (masks as read: class ids, the ignore
            label on unannotated pixels).
        planes: the run's planes (:func:`~tomoseg.utils.planes.parse_planes`); ``xy`` alone
            gives none.
        crop_size: the run's crop side (0: whole images); every volume needs at least as many
            slices.
        context: the run's 2.5D context (refused with planes other than ``xy``).

    Returns:
        ``(samples, record)``: the samples (raw images, int16 training masks with
        :data:`IGNORE_INDEX` on unannotated pixels and held-out slices) and what ``run.json``
        records (``planes``, ``volumes``: name -> (Z, Y, X), ``samples``: count per plane).

    Raises:
        TomosegError: planes with 2.5D context, no labelled volume in the training data, a
            volume with fewer slices than ``crop_size``, anisotropic voxels.
    """
    extra = [p for p in planes if p != "xy"]
    record: dict[str, Any] = {"planes": list(planes)}
    if not extra:
        return [], record
    check_context(planes, context)
    groups = _groups(loaded)
    if not groups:
        raise TomosegError(
            f"planes={','.join(planes)}: the training data holds no labelled volume (an image "
            "volume with its label volume, or a dataset of consecutive sections)"
        )
    out: list[Sample] = []
    record.update(volumes={}, samples={p: 0 for p in planes})
    record["samples"]["xy"] = len(loaded.train)
    for name, members in groups.items():
        voxel, unit, where = _voxel(name)
        check_isotropic(planes, voxel, unit, where)
        image = np.stack([s.image for s, _ in members])
        mask = np.stack(
            [
                training_mask(s, loaded.ignore_label)
                if trains
                else np.full(s.mask.shape, IGNORE_INDEX, np.int16)
                for s, trains in members
            ]
        )
        if crop_size and image.shape[0] < crop_size:
            raise TomosegError(
                f"planes={','.join(planes)}: {where} has {plural(image.shape[0], 'slice')}, "
                "fewer than "
                f"crop_size={crop_size} (the xz and yz planes are that short)"
            )
        record["volumes"][name] = list(image.shape)
        stem = "volume" if name == _SPLIT else members[0][0].id.rsplit("_", 1)[0]
        for plane in extra:
            axis = 1 if plane == "xz" else 2
            for j in range(image.shape[axis]):
                take = (slice(None),) * axis + (j,)
                out.append(Sample(f"{stem}_{plane}{j:04d}", image[take].copy(), mask[take].copy()))
            record["samples"][plane] += image.shape[axis]
    return out, record
