"""Orthogonal planes of a (Z, Y, X) volume: which planes a job uses and whether the voxels
allow them.

A 2D network trained on ``xy`` slices sees no z context; segmenting (and training on) the
``xz`` and ``yz`` planes of the same volume as well and averaging the class probabilities gives
each voxel three views (the "2.5D orthogonal" scheme of volume-segmantics and CTSegNet). The
extra planes only make sense when a voxel is (nearly) a cube: a plane through anisotropic voxels
shows objects stretched by the ratio of the voxel sides, which the network never saw in ``xy``.

* plane names: ``xy`` (a z-slice, (Y, X)), ``xz`` (a y-row through every slice, (Z, X)) and
  ``yz`` (an x-column through every slice, (Z, Y));
* :data:`MAX_ANISOTROPY`: the largest ratio of the voxel sides accepted with ``xz`` / ``yz``
  (1.2: a 20 % stretch, within the range of the soma shapes a network learns anyway);
* a volume whose voxel size is unknown (no metadata, none given) is treated as isotropic, with
  one warning saying so (:func:`check_isotropic`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.utils.format import plural

#: the planes, in the order their passes run
PLANES = ("xy", "xz", "yz")

#: the largest ratio of the longest to the shortest voxel side accepted with xz / yz planes
MAX_ANISOTROPY = 1.2

#: the axis of a (Z, Y, X) volume each plane is normal to (the axis its slices step along)
NORMAL_AXIS = {"xy": 0, "xz": 1, "yz": 2}


def parse_planes(value: Any, name: str = "planes") -> tuple[str, ...]:
    """``"xy,xz,yz"`` (or a sequence of names) as a tuple of plane names in :data:`PLANES`
    order, each once; ``xy`` must be among them (the planes are averaged with it).

    Raises:
        TomosegError: an unknown or repeated name, an empty list, or no ``xy``; naming
            ``name``.
    """
    raw = value.split(",") if isinstance(value, str) else list(value or ())
    names = [str(p).strip().lower() for p in raw if str(p).strip()]
    bad = [p for p in names if p not in PLANES]
    if bad or not names or len(set(names)) != len(names) or "xy" not in names:
        shown = value if isinstance(value, str) else ",".join(map(str, raw))
        raise TomosegError(
            f"{name}={shown!r}: must be xy, or xy with xz and/or yz, each once (e.g. xy,xz,yz)"
        )
    return tuple(p for p in PLANES if p in names)


def anisotropy(voxel_size: Sequence[float]) -> float:
    """The ratio of the longest to the shortest side of a (z, y, x) voxel (1 for a cube)."""
    sides = [float(v) for v in voxel_size]
    return max(sides) / min(sides)


def check_isotropic(
    planes: Sequence[str],
    voxel_size: Sequence[float] | None,
    unit: str | None,
    where: str,
    name: str = "planes",
) -> None:
    """Refuse ``xz`` / ``yz`` planes on a volume whose voxels are further from a cube than
    :data:`MAX_ANISOTROPY`; warn (once per call) when its voxel size is unknown and treat it as
    isotropic. ``xy`` alone needs no check.

    Args:
        planes: the planes of the job (:func:`parse_planes`).
        voxel_size: (z, y, x) voxel size from the input's metadata or the user, or None.
        unit: its unit (for the message).
        where: the volume as messages name it.

    Raises:
        TomosegError: anisotropic voxels, naming the voxel size, the ratio and the limit.
    """
    if tuple(planes) == ("xy",):
        return
    if voxel_size is None:
        warnings.warn(
            f"{where}: no voxel size is recorded, so {name} {','.join(planes)} treats the "
            "voxels as cubes; if they are not, record the size in the file (ImageJ spacing, "
            "OME-Zarr scale, MRC header) or use planes=xy",
            TomosegWarning,
            stacklevel=3,
        )
        return
    ratio = anisotropy(voxel_size)
    if ratio > MAX_ANISOTROPY:
        size = " x ".join(f"{float(v):g}" for v in voxel_size) + (f" {unit}" if unit else "")
        raise TomosegError(
            f"{name}={','.join(planes)}: {where} has voxels of {size} (z, y, x), a ratio of {ratio:.2f} between their sides, above the {MAX_ANISOTROPY} that "
            "planes other than xy accept; use planes=xy (or resample the volume to cubic "
            "voxels first)"
        )


def check_context(planes: Sequence[str], context: int, name: str = "planes") -> None:
    """Refuse planes other than ``xy`` for a run with 2.5D context (its neighbours lie along
    z only).

    Raises:
        TomosegError: ``context > 0`` with such planes.
    """
    if tuple(planes) != ("xy",) and context:
        raise TomosegError(
            f"{name}={','.join(planes)}: the run sees {plural(context, 'neighbouring slice')} along z "
            "(2.5D context), which the other planes do not have; use planes=xy"
        )
