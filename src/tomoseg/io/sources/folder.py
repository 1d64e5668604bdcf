"""A folder of 2D slice files (PNG, TIFF, JPEG), in natural order of their names."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tomoseg.errors import TomosegError
from tomoseg.io.images import list_images, read_image
from tomoseg.io.sources.base import ReadOptions, StackSource, plan_axes


@dataclass
class FolderSource(StackSource):
    """Slice ``i`` is the file ``files[i]`` (id: its stem), read whole."""

    kind: ClassVar[str] = "folder"

    @contextmanager
    def reader(self) -> Iterator[Callable[[int], np.ndarray]]:
        def read(i: int) -> np.ndarray:
            return read_image(self.files[i])

        yield read

    def in_order(self, ids: list[str]) -> FolderSource:
        """This folder with its slices in the order ``ids`` (the same files, e.g. the order a
        ``segment_stack`` input had); unchanged when ``ids`` names other files."""
        by_id = dict(zip(self.ids, self.files, strict=True))
        if ids and set(ids) == set(by_id):
            self.ids, self.files = list(ids), [by_id[i] for i in ids]
        return self


class FolderFormat:
    kind = "folder"
    description = "a folder of slices"
    containers = False

    def claims(self, input: Any) -> bool:
        return isinstance(input, (str, os.PathLike)) and Path(input).is_dir()

    def open(self, input: Any, options: ReadOptions) -> FolderSource:
        p = Path(input)
        files = list_images(p)  # natural order; raises on an empty folder
        ids = list(files)
        if not options.allow_gaps:
            check_gaps(ids, p)
        first = read_image(files[ids[0]])
        plan_axes("ZYX", (len(ids), *first.shape), options.channel, options.time, f"folder {p}")
        return FolderSource(
            p, ids, first.shape, str(first.dtype), files=list(files.values()),
            axes="ZYX", axes_shape=(len(ids), *first.shape),
        )  # fmt: skip


def check_gaps(ids: list[str], folder: Path) -> None:
    """Refuse numbered slice names with a hole (``z0004``, ``z0006``: ``z0005`` is missing).

    Raises:
        TomosegError: naming the first missing slice and ``allow_gaps``.
    """
    parts = [re.fullmatch(r"(.*?)(\d+)(\D*)", i) for i in ids]
    if len(ids) < 2 or not all(parts):
        return
    if len({(m.group(1), m.group(3)) for m in parts}) != 1:  # type: ignore[union-attr]
        return
    nums = [int(m.group(2)) for m in parts]  # type: ignore[union-attr]
    for a, b, ida in zip(nums, nums[1:], ids, strict=False):
        if b != a + 1:
            m = parts[0]
            width = len(m.group(2)) if m.group(2).startswith("0") else 0  # type: ignore[union-attr]
            missing = f"{m.group(1)}{a + 1:0{width}d}{m.group(3)}"  # type: ignore[union-attr]
            raise TomosegError(
                f"slice {missing} is missing from {folder} (the slice after {ida}); "
                "restore it, or pass allow_gaps=True if the slices are not consecutive"
            )
