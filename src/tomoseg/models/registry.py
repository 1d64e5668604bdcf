"""The network registry: one entry per architecture, one factory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tomoseg.errors import TomosegError
from tomoseg.io.datasets import MAX_CLASSES
from tomoseg.models.layers import PadToStride
from tomoseg.models.resenc import build_resenc_unet
from tomoseg.models.segnet import build_segnet
from tomoseg.models.unet import build_unet
from tomoseg.utils.files import check_memory


@dataclass(frozen=True)
class Architecture:
    """A registered network: how to build it and its defaults.

    Attributes:
        name: registry key (``--model``).
        build: ``build(in_channels, num_classes, width, depth) -> (module, stride)``; the module
            maps (B, C, H, W) to (B, K, H, W) logits for H, W multiples of ``stride``.
        default_width: channels of the first level when none is given.
        default_depth: levels when the config does not choose (a fixed-depth network refuses
            another value in ``build``).
        source: the paper or library it comes from.
        fixed_depth: whether ``default_depth`` is the only depth the network has (SegNet's five
            VGG blocks): a run's configured ``depth`` is then not used (:meth:`depth_for`).
        doi: the DOI of the paper (an exported model package cites it).
        deep_supervision: whether ``build`` takes ``deep_supervision=True``: auxiliary logits
            at 1/2, 1/4, ... of the input, returned after the logits as a list in training
            mode only.
    """

    name: str
    build: Callable[[int, int, int, int], tuple[nn.Module, int]]
    default_width: int
    default_depth: int
    source: str
    fixed_depth: bool = False
    doi: str = ""
    deep_supervision: bool = False

    def depth_for(self, depth: int | None) -> int:
        """The depth a network of this architecture is built with when a run's config asks for
        ``depth`` (None: the default): the fixed depth of a fixed-depth network, else ``depth``."""
        return self.default_depth if self.fixed_depth or depth is None else depth


#: The registry. A new network is one file in this package plus one line here; it then has to
#: pass the contract in tests/models/test_model_contract.py (any input size, padding back to size,
#: channels-last, bf16 autocast, K outputs).
REGISTRY: dict[str, Architecture] = {
    "segnet": Architecture(
        "segnet",
        build_segnet,
        64,
        5,
        "Badrinarayanan et al., TPAMI 2017",
        fixed_depth=True,
        doi="10.1109/TPAMI.2016.2644615",
    ),  # fmt: skip
    "unet": Architecture(
        "unet",
        build_unet,
        32,
        5,
        "Ronneberger et al., MICCAI 2015; MONAI",
        doi="10.1007/978-3-319-24574-4_28",
    ),  # fmt: skip
    "unet-resenc": Architecture(
        "unet-resenc",
        build_resenc_unet,
        32,
        5,
        "nnU-Net ResEnc, Isensee et al., MICCAI 2024 (arXiv:2404.09556); MONAI's nnU-Net blocks",
        deep_supervision=True,
    ),
}
ARCHITECTURES = tuple(REGISTRY)

#: The largest networks tomoseg builds (a run's metadata is checked against them before any
#: weights are allocated). Width: channels of the first level, 8x SegNet's 64 (the paper's
#: networks use 32-64). Depth: levels, as ``TrainConfig.depth`` allows. Input channels: a 2.5D
#: context of up to 8 slices each side is 17, with room to spare. Classes:
#: :data:`tomoseg.io.datasets.MAX_CLASSES` (label images are uint8).
MAX_WIDTH = 512
MAX_DEPTH = 7
MAX_IN_CHANNELS = 64

# ----------------------------------------------------------------------------- factory


def _check_positive_int(value: Any, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TomosegError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise TomosegError(f"{name} must be at most {maximum}, got {value!r}")
    return value


def parameter_count(
    spec: Architecture,
    in_channels: int,
    num_classes: int,
    width: int,
    depth: int,
    deep_supervision: bool = False,
) -> int:
    """The number of parameters of a network, counted on PyTorch's ``meta`` device (built
    without allocating its weights)."""
    with torch.device("meta"):
        net, _ = _build(spec, in_channels, num_classes, width, depth, deep_supervision)
    return sum(p.numel() for p in net.parameters())


def get_architecture(name: str) -> Architecture:
    """The registered architecture called ``name`` (case-insensitive).

    Raises:
        TomosegError: no such network (the message lists the registered ones).
    """
    arch = str(name).strip().lower()
    if arch not in REGISTRY:
        raise TomosegError(f"unknown model '{name}' (choose {', '.join(ARCHITECTURES)})")
    return REGISTRY[arch]


def _build(
    spec: Architecture, in_channels: int, num_classes: int, width: int, depth: int, ds: bool
) -> tuple[nn.Module, int]:
    if not ds:
        return spec.build(in_channels, num_classes, width, depth)
    return spec.build(in_channels, num_classes, width, depth, deep_supervision=True)  # type: ignore[call-arg]


def _check_deep_supervision(spec: Architecture, deep_supervision: bool) -> None:
    if deep_supervision and not spec.deep_supervision:
        able = [a.name for a in REGISTRY.values() if a.deep_supervision]
        raise TomosegError(
            f"deep_supervision=True needs a network with auxiliary outputs ({', '.join(able)}); "
            f"model='{spec.name}' has none"
        )


def network_hparams(
    name: str,
    in_channels: int,
    num_classes: int,
    width: int | None,
    depth: int | None,
    deep_supervision: bool = False,
) -> dict[str, Any]:
    """The hyperparameters of the network a run of model ``name`` trains: the keyword arguments
    of :func:`build_model` that rebuild it (what ``run.json`` and the weights record as
    ``model``). ``depth`` is the run's configured depth, replaced by the architecture's fixed
    depth where it has one; ``width`` None stays None (the architecture's default).

    ``deep_supervision`` is recorded only where it is set (the auxiliary heads are part of the
    weights).

    Raises:
        TomosegError: unknown network, or deep supervision for a network without it.
    """
    arch = get_architecture(name)
    _check_deep_supervision(arch, deep_supervision)
    hp: dict[str, Any] = {
        "name": name,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "width": width,
        "depth": arch.depth_for(depth),
    }
    if deep_supervision:
        hp["deep_supervision"] = True
    return hp


def build_model(
    name: str,
    in_channels: int = 1,
    num_classes: int = 2,
    width: int | None = None,
    depth: int | None = None,
    deep_supervision: bool = False,
) -> PadToStride:
    """Build a registered segmentation network that accepts any input size.

    Args:
        name: a key of :data:`REGISTRY` (``"segnet"``, ``"unet"``, ``"unet-resenc"``;
            case-insensitive).
        in_channels: input channels (1 for grayscale).
        num_classes: output classes K (>= 2); the network returns K logits per pixel.
        width: channels of the first level; None = the architecture's default (SegNet 64, as in
            the paper; U-Net 32).
        depth: levels (U-Net: channels ``w, 2w, ..., 2**(depth-1) w``, stride ``2**(depth-1)``);
            None = the architecture's default. SegNet has a fixed depth of 5 (stride 32).
        deep_supervision: auxiliary outputs for the training loss (networks whose
            :class:`Architecture` has ``deep_supervision``; in training mode the model then
            returns ``[logits, aux at 1/2, aux at 1/4, ...]``, in evaluation mode the logits).

    Returns:
        A :class:`PadToStride` module with attributes ``arch``, ``stride`` and ``hparams_dict``
        (``build_model(**model.hparams_dict)`` rebuilds it).

    Raises:
        TomosegError: unknown name, invalid sizes or sizes above :data:`MAX_WIDTH`,
            :data:`MAX_DEPTH`, :data:`MAX_IN_CHANNELS`, :data:`MAX_CLASSES`, or a network whose
            float32 weights would not fit in the machine's memory (counted before they are
            allocated).
    """
    spec = get_architecture(name)
    _check_deep_supervision(spec, bool(deep_supervision))
    _check_positive_int(in_channels, "in_channels", 1, MAX_IN_CHANNELS)
    _check_positive_int(num_classes, "num_classes", 2, MAX_CLASSES)
    w = spec.default_width if width is None else _check_positive_int(width, "width", 1, MAX_WIDTH)
    d = spec.default_depth if depth is None else _check_positive_int(depth, "depth", 2, MAX_DEPTH)
    ds = bool(deep_supervision)
    n = parameter_count(spec, in_channels, num_classes, w, d, ds)
    check_memory(4 * n, f"a {spec.name} of width {w} and depth {d} ({n:.3g} parameters)")
    net, stride = _build(spec, in_channels, num_classes, w, d, ds)
    hparams: dict[str, Any] = {
        "name": spec.name,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "width": w,
        "depth": d,
    }
    if ds:
        hparams["deep_supervision"] = True
    return PadToStride(net, stride=stride, arch=spec.name, hparams=hparams)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (trainable or not) of a module."""
    return sum(p.numel() for p in model.parameters())
