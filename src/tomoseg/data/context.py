"""2.5D context: a slice together with the ``k`` slices above and below it as input channels.

For images that are consecutive sections of one volume (serial-section EM, tomography slices)
the network can see its neighbours: slice ``z`` becomes a (2k + 1, H, W) array whose channel
``j`` is slice ``z - k + j``, with the stack's first and last slices repeated past its ends
("edges replicated"); channel ``k`` is the slice itself. A dataset declares its images
consecutive with ``"consecutive": true`` in ``dataset.json`` (each split, in natural order of
file stem, is one run of consecutive sections); a stack (folder of slices, multi-page TIFF,
Zarr) always is. Source of the idea: 2.5D inputs for serial-section segmentation, e.g.
Ciresan et al. (NIPS 2012) and the "2.5D" nnU-Net/MONAI recipes of adjacent slices as channels.

Written by hand: no library offers this indexing for lazily read stacks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from tomoseg.errors import TomosegError
from tomoseg.utils.format import plural


def in_channels(context: int) -> int:
    """Input channels of a network that sees ``context`` slices above and below: 2k + 1."""
    return 2 * int(context) + 1


def neighbours(n: int, z: int, k: int) -> list[int]:
    """Indices of slice ``z``'s context in a stack of ``n`` slices, edges replicated.

    Returns:
        ``[clip(z - k), ..., z, ..., clip(z + k)]``, 2k + 1 indices in ``0..n-1``.

    Raises:
        TomosegError: ``z`` outside ``0..n-1`` or ``k`` negative.
    """
    if not 0 <= z < n:
        raise TomosegError(f"slice {z} is not in a stack of {plural(n, 'slice')}")
    if k < 0:
        raise TomosegError(f"context must be >= 0, got {k}")
    return [min(max(j, 0), n - 1) for j in range(z - k, z + k + 1)]


def context_stack(slices: Sequence[np.ndarray], z: int, k: int) -> np.ndarray:
    """Slice ``z`` of a sequence of 2D slices with its ``k`` neighbours on each side.

    Args:
        slices: the stack as a sequence of (H, W) arrays (a list, or a (Z, H, W) array).
        z: the slice.
        k: slices above and below.

    Returns:
        (2k + 1, H, W) array of the slices' dtype; channel ``k`` is slice ``z``.

    Raises:
        TomosegError: ``z`` out of range, or neighbours of another shape than slice ``z``.
    """
    picked = [slices[j] for j in neighbours(len(slices), z, k)]
    return _stacked(picked, z)


def _stacked(picked: list[np.ndarray], z: int) -> np.ndarray:
    shape = picked[len(picked) // 2].shape
    for a in picked:
        if a.shape != shape:
            raise TomosegError(
                f"consecutive sections must share one shape: slice {z} is {shape} but a "
                f"neighbour is {a.shape}"
            )
    return np.stack(picked)


def with_context(slices: Sequence[np.ndarray], k: int) -> list[np.ndarray]:
    """Every slice of a sequence with its context (:func:`context_stack`); ``k = 0`` returns
    the slices themselves (2D)."""
    if k == 0:
        return list(slices)
    return [context_stack(slices, z, k) for z in range(len(slices))]


def context_reader(
    read: Callable[[int], np.ndarray], n: int, k: int, cache: int | None = None
) -> Callable[[int], np.ndarray]:
    """Wrap a reader of slice ``i`` (a stack's, a split's files) so that it returns slice ``i``
    with its context, reading each slice once while slices are asked for in order.

    Args:
        read: ``read(i) -> (H, W)`` for ``i`` in ``0..n-1``.
        n: slices in the stack.
        k: slices above and below (0: ``read`` itself is returned).
        cache: raw slices kept (default 2k + 2, enough for a forward sweep).

    Returns:
        ``read_context(i) -> (2k + 1, H, W)``, channel ``k`` being slice ``i``.
    """
    if k == 0:
        return read
    keep = cache or in_channels(k) + 1
    held: OrderedDict[int, np.ndarray] = OrderedDict()

    def one(j: int) -> np.ndarray:
        if j in held:
            held.move_to_end(j)
            return held[j]
        a = read(j)
        held[j] = a
        while len(held) > keep:
            held.popitem(last=False)
        return a

    def read_context(i: int) -> np.ndarray:
        idx = neighbours(n, i, k)
        by_index = {j: one(j) for j in dict.fromkeys([i, *idx])}  # the slice itself first
        return _stacked([by_index[j] for j in idx], i)

    return read_context


def centre(image: np.ndarray) -> np.ndarray:
    """The slice itself of a (2k + 1, H, W) context stack; a (H, W) image as it is."""
    return image[image.shape[0] // 2] if image.ndim == 3 else image


def check_consecutive(consecutive: bool, context: int, where: str) -> None:
    """Refuse a context on images not declared consecutive.

    Raises:
        TomosegError: ``context > 0`` and ``consecutive`` is False (one line naming ``where``).
    """
    if context and not consecutive:
        raise TomosegError(
            f"context={context} needs consecutive sections, but {where} does not declare its "
            'images consecutive: add "consecutive": true to its dataset.json if each split is '
            "one run of consecutive slices (in natural order of file name), or train with "
            "context=0"
        )
