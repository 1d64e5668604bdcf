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

from tomoseg.config.schema import TrainConfig
from tomoseg.data.context import in_channels
from tomoseg.data.datamodule import PreparedData
from tomoseg.data.sources import DataSource
from tomoseg.errors import TomosegError
from tomoseg.models.registry import network_hparams
from tomoseg.runtime.checkpoint import LoadedRun, load_run


def load_parent(cfg: TrainConfig, run: Path) -> LoadedRun:
    """The run named by ``cfg.init``, loaded on the CPU, after checking that ``run`` (the new
    run's folder) is not its folder.

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
    try:
        return load_run(init)
    except TomosegError as exc:
        raise TomosegError(f"init={str(init)!r}: {exc}") from None


def parent_source(source: DataSource, parent: LoadedRun) -> DataSource:
    """``source`` with the parent's class names where it names none (images and masks
    folders without ``classes``): the ids of its masks are the parent's classes."""
    if source.root is None and source.classes is None:
        return replace(source, classes=tuple(parent.classes))
    return source


def _network(hp: dict[str, Any]) -> str:
    return (
        f"{hp.get('name')} width {hp.get('width')} depth {hp.get('depth')}, "
        f"{hp.get('in_channels')} input channels, {hp.get('num_classes')} classes"
    )


def check_fits(parent: LoadedRun, cfg: TrainConfig, prep: PreparedData) -> None:
    """Refuse a fine-tune whose network, classes or class of interest differ from the parent's.

    Raises:
        TomosegError: one line naming ``init``, what the parent has and what the new run has.
    """
    init = str(cfg.init)
    classes = list(prep.spec.classes)
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
    mine = network_hparams(cfg.model, in_channels(cfg.context), len(classes), cfg.width, cfg.depth)
    theirs = dict(parent.meta["model"])
    if {k: mine.get(k) for k in theirs} != theirs:
        raise TomosegError(
            f"init={init!r}: the run's network ({_network(theirs)}) differs from this one's "
            f"({_network(mine)}): leave model, width, depth and context as the parent's"
        )


def parent_record(parent: LoadedRun) -> dict[str, Any]:
    """What ``run.json`` records as ``parent``: the run folder, the weights started from and
    their epoch."""
    return {
        "run": str(parent.folder.resolve()),
        "weights": parent.weights_file.name if parent.weights_file is not None else None,
        "epoch": parent.meta.get("epoch"),
    }
