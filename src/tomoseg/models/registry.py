"""The network registry: one entry per architecture, one factory."""

from __future__ import annotations

from typing import Any

from monai.networks.layers import Norm
from monai.networks.nets import UNet
from torch import nn

from tomoseg.errors import TomosegError
from tomoseg.models.layers import PadToStride
from tomoseg.models.segnet import SEGNET_BLOCKS, SEGNET_STRIDE, SegNet

ARCHITECTURES = ("segnet", "unet")
DEFAULT_WIDTH = {"segnet": 64, "unet": 32}

# ----------------------------------------------------------------------------- factory


def _check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TomosegError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def build_model(
    name: str,
    in_channels: int = 1,
    num_classes: int = 2,
    width: int | None = None,
    depth: int = 5,
) -> PadToStride:
    """Build a segmentation network that accepts any input size.

    Args:
        name: ``"segnet"`` or ``"unet"`` (case-insensitive).
        in_channels: input channels (1 for grayscale).
        num_classes: output classes K (>= 2); the network returns K logits per pixel.
        width: channels of the first level; None = 64 for SegNet (the paper), 32 for U-Net.
        depth: U-Net levels (channels ``w, 2w, ..., 2**(depth-1) w``, stride ``2**(depth-1)``).
            SegNet has a fixed depth of 5 (stride 32); another value is refused.

    Returns:
        A :class:`PadToStride` module with attributes ``arch``, ``stride`` and ``hparams_dict``.

    Raises:
        TomosegError: unknown name or invalid sizes.
    """
    arch = str(name).strip().lower()
    if arch not in ARCHITECTURES:
        raise TomosegError(f"unknown model '{name}' (choose segnet or unet)")
    _check_positive_int(in_channels, "in_channels")
    _check_positive_int(num_classes, "num_classes", 2)
    w = DEFAULT_WIDTH[arch] if width is None else _check_positive_int(width, "width")
    _check_positive_int(depth, "depth", 2)
    if arch == "segnet":
        if depth != len(SEGNET_BLOCKS):
            raise TomosegError(
                f"segnet has a fixed depth of {len(SEGNET_BLOCKS)}, got depth={depth}"
            )
        net: nn.Module = SegNet(in_channels=in_channels, num_classes=num_classes, width=w)
        stride = SEGNET_STRIDE
    else:
        net = UNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            channels=tuple(w * 2**i for i in range(depth)),
            strides=(2,) * (depth - 1),
            num_res_units=2,
            norm=Norm.BATCH,
        )
        stride = 2 ** (depth - 1)
    hparams = {
        "name": arch,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "width": w,
        "depth": depth,
    }
    return PadToStride(net, stride=stride, arch=arch, hparams=hparams)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (trainable or not) of a module."""
    return sum(p.numel() for p in model.parameters())
