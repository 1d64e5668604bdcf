"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) from MONAI (``monai.networks.nets.UNet``).

Residual units (two per level, MONAI's ``num_res_units=2``) and BatchNorm; channels
``w, 2w, ..., 2**(depth-1) w``; total stride ``2**(depth-1)``.
"""

from __future__ import annotations

from monai.networks.layers import Norm
from monai.networks.nets import UNet
from torch import nn


def build_unet(in_channels: int, num_classes: int, width: int, depth: int) -> tuple[nn.Module, int]:
    """A MONAI U-Net and its total stride (the input side must be a multiple of it)."""
    net = UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=num_classes,
        channels=tuple(width * 2**i for i in range(depth)),
        strides=(2,) * (depth - 1),
        num_res_units=2,
        norm=Norm.BATCH,
    )
    return net, 2 ** (depth - 1)
