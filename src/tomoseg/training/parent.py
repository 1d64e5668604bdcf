"""A fine-tune's parent run (``TrainConfig.init``): loading it, checking that the new run fits it,
and what ``run.json`` records of it.

The child keeps what makes the parent's weights meaningful: the network (architecture, width,
depth, 2.5D context), the classes and class of interest, the intensity normalisation and the
class weights (so a few corrected slices that lack some class still train, and the decision
bias stays the parent's). It never writes into the parent's folder.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from tomoseg.config.schema import TrainConfig
from tomoseg.data.context import in_channels
from tomoseg.data.datamodule import PreparedData
from tomoseg.data.sources import DataSource
from tomoseg.errors import TomosegError
from tomoseg.models.registry import network_hparams
from tomoseg.runtime.checkpoint import LoadedRun, load_run
from tomoseg.training.pretrained import (
    PretrainedWeights,
    check_pretrained_fits,
    is_pretraining,
    load_pretrained,
    start_from_pretrained,
)
from tomoseg.utils.format import plural

#: what ``init`` names: a trained run, or a pretraining (``tomoseg pretrain``) without classes
Parent = LoadedRun | PretrainedWeights


def load_parent(cfg: TrainConfig, run: Path) -> Parent:
    """The run named by ``cfg.init``, loaded on the CPU, after checking that ``run`` (the new
    run's folder) is not its folder; a pretraining folder is loaded as
    :class:`~tomoseg.training.pretrained.PretrainedWeights`.

    Raises:
        TomosegError: not a run (one line naming ``init``), or the new run would overwrite it.
    """
    assert cfg.init is not None
    init = Path(cfg.init)
    if Path(run).resolve() == (init.parent if init.suffix else init).resolve():
        raise TomosegError(
            f"out={str(run)!r} is the run given as init: a fine-tune writes a new run folder "
            "and never overwrites its parent"
        )
    if is_pretraining(init):
        return load_pretrained(init)
    try:
        return load_run(init)
    except TomosegError as exc:
        raise TomosegError(f"init={str(init)!r}: {exc}") from None


def parent_source(source: DataSource, parent: Parent) -> DataSource:
    """``source`` with the parent's class names where it names none (images and masks
    folders without ``classes``): the ids of its masks are the parent's classes. A
    pretraining has no classes: ``source`` as it is."""
    if isinstance(parent, LoadedRun) and source.root is None and source.classes is None:
        return replace(source, classes=tuple(parent.classes))
    return source


def _network(hp: dict[str, Any]) -> str:
    return (
        f"{hp.get('name')} width {hp.get('width')} depth {hp.get('depth')}, "
        f"{plural(hp.get('in_channels'), 'input channel')}, "
        f"{plural(hp.get('num_classes'), 'class', 'classes')}"
    )


def check_fits(parent: Parent, cfg: TrainConfig, prep: PreparedData) -> None:
    """Refuse a fine-tune whose network, classes or class of interest differ from the parent's
    (a pretraining: whose architecture, width, depth or input channels differ; its classes are
    the data's).

    Raises:
        TomosegError: one line naming ``init``, what the parent has and what the new run has.
    """
    init = str(cfg.init)
    classes = list(prep.spec.classes)
    mine = network_hparams(cfg.model, in_channels(cfg.context), len(classes), cfg.width, cfg.depth)
    if isinstance(parent, PretrainedWeights):
        check_pretrained_fits(parent, mine, init)
        return
    if classes != list(parent.classes):
        raise TomosegError(
            f"init={init!r}: the run's classes {list(parent.classes)} differ from the data's "
            f"{classes}: a fine-tune keeps its parent's classes"
        )
    if prep.spec.class_of_interest != parent.class_of_interest:
        raise TomosegError(
            f"init={init!r}: the run's class of interest {parent.class_of_interest!r} differs "
            f"from the data's {prep.spec.class_of_interest!r}"
        )
    theirs = dict(parent.meta["model"])
    if {k: mine.get(k) for k in theirs} != theirs:
        raise TomosegError(
            f"init={init!r}: the run's network ({_network(theirs)}) differs from this one's "
            f"({_network(mine)}): leave model, width, depth and context as the parent's"
        )


def inherited(parent: Parent) -> dict[str, Any]:
    """What the new run's data takes from its parent (:class:`SegDataModule` keywords): the
    normalisation, and a trained run's class weights."""
    import numpy as np

    if isinstance(parent, PretrainedWeights):
        return {"norm": parent.normalization}
    return {
        "norm": parent.normalization,
        "weights": np.asarray(parent.meta["class_weights"], np.float32),
    }


def start_from(net: torch.nn.Module, parent: Parent) -> None:
    """Copy the parent's weights into the new run's network (a pretraining's: all but the
    output head)."""
    if isinstance(parent, PretrainedWeights):
        start_from_pretrained(net, parent)
    else:
        net.load_state_dict(parent.model.state_dict())


def parent_record(parent: Parent) -> dict[str, Any]:
    """What ``run.json`` records as ``parent``: the run folder, the weights started from and
    their epoch (a pretraining: ``pretrained: true``)."""
    if isinstance(parent, PretrainedWeights):
        return {
            "run": str(parent.folder.resolve()),
            "weights": parent.weights_file.name,
            "epoch": parent.meta.get("epochs_done"),
            "pretrained": True,
        }
    return {
        "run": str(parent.folder.resolve()),
        "weights": parent.weights_file.name if parent.weights_file is not None else None,
        "epoch": parent.meta.get("epoch"),
    }
