"""tomoseg: segment very large grayscale scientific images with CNNs.

The Python API (see ``docs/api.md``)::

    import tomoseg

    run = tomoseg.train("data/xct", "runs/xct", epochs=8)
    labels = tomoseg.Predictor.from_run(run.path).predict(image)
    tomoseg.score(truth, labels)
    tomoseg.measure_objects(volume, class_id=1, spacing=(2.0, 0.65, 0.65))
    tomoseg.measure_paths(volume, class_id=2, spacing=(2.0, 0.65, 0.65))

Names are imported lazily (PEP 562, as scikit-image does), so ``import tomoseg`` and
``tomoseg.score`` never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tomoseg._version import __version__
from tomoseg.errors import TomosegError, TomosegWarning

_LAZY = {
    "Run": "tomoseg.api",
    "train": "tomoseg.api",
    "fine_tune": "tomoseg.api",
    "export": "tomoseg.api",
    "pretrain": "tomoseg.api",
    "segment_stack": "tomoseg.api",
    "score": "tomoseg.api",
    "score_folders": "tomoseg.api",
    "measure_objects": "tomoseg.evaluation.objects",
    "measure_paths": "tomoseg.evaluation.paths",
    "Predictor": "tomoseg.inference.predictor",
    "InferenceSettings": "tomoseg.inference.predictor",
    "Cancelled": "tomoseg.utils.progress",
    "ProgressEvent": "tomoseg.utils.progress",
    "TrainConfig": "tomoseg.config.schema",
    "context_stack": "tomoseg.data.context",
}

__all__ = [
    "Cancelled",
    "InferenceSettings",
    "Predictor",
    "ProgressEvent",
    "Run",
    "TomosegError",
    "TomosegWarning",
    "TrainConfig",
    "__version__",
    "context_stack",
    "export",
    "fine_tune",
    "measure_objects",
    "measure_paths",
    "pretrain",
    "score",
    "score_folders",
    "segment_stack",
    "train",
]

if TYPE_CHECKING:
    from tomoseg.api import (
        Run,
        export,
        fine_tune,
        pretrain,
        score,
        score_folders,
        segment_stack,
        train,
    )
    from tomoseg.config.schema import TrainConfig
    from tomoseg.data.context import context_stack
    from tomoseg.evaluation.objects import measure_objects
    from tomoseg.evaluation.paths import measure_paths
    from tomoseg.inference.predictor import InferenceSettings, Predictor
    from tomoseg.utils.progress import Cancelled, ProgressEvent


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tomoseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
