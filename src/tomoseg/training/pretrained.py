"""A pretraining folder (``tomoseg pretrain``, :mod:`tomoseg.training.pretrain`) as the
starting point of a run (``TrainConfig.init``): recognising it, loading its weights, checking
that the run's network is the pretrained one, and copying all but the output head.

The head (the layers whose shapes depend on the number of outputs) is found by building the
network twice on PyTorch's ``meta`` device, so no network name is compared; the run keeps its
freshly initialised head for its own classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tomoseg.data.normalization import Normalization
from tomoseg.errors import TomosegError
from tomoseg.models.registry import build_model
from tomoseg.runtime.run_record import RUN_FILE, read_run_record
from tomoseg.utils.format import plural


def head_keys(hparams: dict[str, Any]) -> set[str]:
    """The state-dict keys of a network's output head: those whose shapes change with the
    number of outputs (the network is built twice on the ``meta`` device, nothing allocated)."""
    with torch.device("meta"):
        a = build_model(**{**hparams, "num_classes": 2}).state_dict()
        b = build_model(**{**hparams, "num_classes": 3}).state_dict()
    return {k for k, v in a.items() if k not in b or b[k].shape != v.shape}


@dataclass(frozen=True)
class PretrainedWeights:
    """A pretraining folder loaded as a fine-tune's starting point (``TrainConfig.init``).

    Attributes:
        folder: the pretraining folder.
        state: its network's weights (CPU tensors).
        network: its ``run.json`` ``model`` (``build_model`` keyword arguments).
        normalization: the intensity normalisation fitted on its slices.
        meta: its ``run.json``.
        weights_file: ``last.safetensors``.
    """

    folder: Path
    state: dict[str, torch.Tensor]
    network: dict[str, Any]
    normalization: Normalization
    meta: dict[str, Any]
    weights_file: Path


def is_pretraining(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a pretraining (its ``run.json`` says ``pretrained: true``)."""
    try:
        record = read_run_record(Path(folder), missing_ok=True)
    except TomosegError:
        return False
    return bool(record and record.get("pretrained"))


def load_pretrained(folder: str | os.PathLike[str]) -> PretrainedWeights:
    """Load a finished pretraining folder's weights.

    Raises:
        TomosegError: an unfinished pretraining, missing or damaged weights, weights that do
            not fit the recorded network (each naming ``init``).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from tomoseg.runtime.run_record import NetworkRecord, NormalizationRecord
    from tomoseg.utils.files import validated

    folder = Path(folder)
    init = str(folder)
    record = read_run_record(folder)
    assert record is not None
    if not record.get("complete"):
        done = record.get("epochs_done", 0)
        total = (record.get("config") or {}).get("epochs", "?")
        raise TomosegError(
            f"init={init!r}: the pretraining is incomplete ({done} of "
            f"{plural(total, 'epoch')}); finish "
            "it first (pretrain with resume=True)"
        )
    network = validated(NetworkRecord, record.get("model"), f"{folder}/{RUN_FILE} (model)")
    norm = validated(
        NormalizationRecord, record.get("normalization"), f"{folder}/{RUN_FILE} (normalization)"
    )
    wfile = folder / "last.safetensors"
    try:
        state = load_file(str(wfile))
    except (SafetensorError, OSError, ValueError) as exc:
        raise TomosegError(
            f"init={init!r}: cannot read {wfile}: {str(exc).splitlines()[0]}"
        ) from None
    hp = network.model_dump()
    with torch.device("meta"):
        want = build_model(**hp).state_dict()
    bad = [k for k, v in want.items() if k not in state or state[k].shape != v.shape]
    if bad or set(state) - set(want):
        what = bad[0] if bad else sorted(set(state) - set(want))[0]
        raise TomosegError(f"init={init!r}: {wfile} does not fit its recorded network ({what})")
    return PretrainedWeights(
        folder,
        state,
        hp,
        Normalization(**norm.model_dump()),
        record,
        wfile,
    )


def start_from_pretrained(net: torch.nn.Module, pre: PretrainedWeights) -> list[str]:
    """Copy a pretraining's weights into ``net`` (a network of the same architecture, width,
    depth and input channels, any number of classes), all but the output head (which keeps
    ``net``'s fresh initialisation).

    Returns:
        The head's keys (left as they were).
    """
    head = sorted(head_keys(pre.network))
    mine = net.state_dict()
    kept = {k: v for k, v in pre.state.items() if k not in head and k in mine}
    net.load_state_dict({**mine, **kept})
    return head


def check_pretrained_fits(pre: PretrainedWeights, hparams: dict[str, Any], init: str) -> None:
    """Refuse a network of another architecture, width, depth or channel count than the
    pretraining's (the number of classes may differ: the head is new).

    Raises:
        TomosegError: one line naming ``init``, the pretraining's network and this run's.
    """
    keys = ("name", "width", "depth", "in_channels")
    if any(pre.network.get(k) != hparams.get(k) for k in keys):

        def text(h: dict) -> str:
            return (
                f"{h.get('name')} width {h.get('width')} depth {h.get('depth')}, "
                f"{plural(h.get('in_channels'), 'input channel')}"
            )

        raise TomosegError(
            f"init={init!r}: the pretrained network ({text(pre.network)}) differs from this "
            f"run's ({text(hparams)}): leave model, width, depth and context as the "
            "pretraining's"
        )
