"""What a crop sweep trains and scores its cases on: a dataset folder (its ``train``, ``val`` and
``test`` splits), or folders of images with their masks (as ``tomoseg train --images --masks``)
plus test images with their masks.

Each case trains exactly as ``train`` does on the same data (with images/masks: validation is
the config's ``val_fraction`` of the training images, held out with the case's seed) and is
scored as ``evaluate`` scores (a dataset's ``test`` split; all the test images/masks). Images
and masks have no test split, so a sweep on them needs its test images: without them it is
refused, never scored on validation (the decision each case tunes on validation would make
that score optimistic).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tomoseg.data.sources import DataSource
from tomoseg.errors import TomosegError
from tomoseg.utils.files import loads_json

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class SweepData:
    """The training data of every case and the data each case is scored on.

    Attributes:
        train: a dataset folder, or images with masks (:class:`~tomoseg.data.sources.DataSource`).
        test: the test images and masks for an images/masks ``train`` (read with its classes,
            name endings and ``instances``); None for a dataset folder (its ``test`` split).
    """

    train: DataSource
    test: DataSource | None = None

    @classmethod
    def of(
        cls,
        data: PathLike | DataSource | SweepData,
        test_images: PathLike | None = None,
        test_masks: PathLike | None = None,
    ) -> SweepData:
        """Check and build the sweep's data: a dataset folder, or an images/masks source with
        its test images and masks (a :class:`SweepData` is returned as it is).

        Raises:
            TomosegError: test images without an images/masks source, or an images/masks
                source without test images and masks (naming ``test_images``).
        """
        if isinstance(data, SweepData):
            return data
        source = DataSource.of(data)
        tests = (test_images, test_masks)
        if source.root is not None:
            if any(t is not None for t in tests):
                raise TomosegError(
                    "test_images=DIR and test_masks=DIR go with images=DIR and masks=DIR; "
                    f"the dataset {source.root} has its test split"
                )
            return cls(source)
        if test_images is None or test_masks is None:
            raise TomosegError(
                "a sweep scores every case on test images, which images=DIR and masks=DIR do "
                "not hold: give test_images=DIR and test_masks=DIR (labelled images kept out "
                "of training)"
            )
        test = dataclasses.replace(source, images=Path(test_images), masks=Path(test_masks))
        return cls(source, test)

    def resolved(self) -> SweepData:
        """The same data with absolute paths (a case may run in another folder or on a Ray
        worker)."""

        def absolute(src: DataSource | None) -> DataSource | None:
            if src is None:
                return None
            paths = {k: getattr(src, k) for k in ("root", "images", "masks")}
            return dataclasses.replace(
                src, **{k: None if v is None else Path(v).resolve() for k, v in paths.items()}
            )

        return SweepData(absolute(self.train), absolute(self.test))  # type: ignore[arg-type]

    def scored(self) -> tuple[DataSource, str]:
        """The source and split each case is scored on (``evaluate_run``'s ``data``, ``split``)."""
        return (self.train, "test") if self.test is None else (self.test, "test")

    def identity(self) -> str | dict[str, Any]:
        """What makes two sweeps the same data: the dataset folder (as earlier sweeps recorded
        it), or the training and test sources."""
        if self.test is None:
            return str(Path(self.train.root).resolve())  # type: ignore[arg-type]
        return {"train": self.train.describe(), "test": self.test.describe()}

    @property
    def label(self) -> str:
        """The training data as the report names it (a folder)."""
        where = self.train.root if self.train.root is not None else self.train.images
        return str(Path(where).resolve())  # type: ignore[arg-type]

    def to_json(self) -> str:
        """The data as one JSON text (the case processes' ``--source``)."""
        classes = list(self.train.classes) if self.train.classes else None
        test = None if self.test is None else self.test.describe()
        return json.dumps({"train": self.train.describe(), "test": test, "classes": classes})

    @classmethod
    def from_json(cls, text: str) -> SweepData:
        """The data of :meth:`to_json`.

        Raises:
            TomosegError: not such a text.
        """
        rec = loads_json(text, "the sweep's data")
        if not isinstance(rec, dict) or "train" not in rec:
            raise TomosegError(f"not a sweep's data: {text[:80]!r}")
        train = DataSource.from_record(rec["train"], rec.get("classes"), "the sweep's data")
        if rec.get("test") is None:
            return cls(train)
        test = DataSource.from_record(rec["test"], rec.get("classes"), "the sweep's test data")
        return cls(train, test)
