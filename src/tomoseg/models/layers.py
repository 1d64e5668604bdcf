"""Building blocks shared by the networks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tomoseg.errors import TomosegError

# ----------------------------------------------------------------------------- SegNet


class ConvBNReLU(nn.Sequential):
    """3x3 convolution (padding 1) + BatchNorm + ReLU; children are named ``conv``, ``bn``, ``relu``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)


# ----------------------------------------------------------------------------- padding wrapper


def _pad_amount(size: int, stride: int) -> int:
    return (-size) % stride


class PadToStride(nn.Module):
    """Run a network on any H, W by padding up to a multiple of its stride and cropping back.

    Padding is added at the bottom and right (so the pixel grid stays aligned with the pooling
    grid) in ``reflect`` mode, or ``replicate`` when the input is too small to reflect.

    Attributes:
        net: the wrapped network.
        stride: total down-sampling factor of ``net``.
        arch: architecture name (``"segnet"`` or ``"unet"``).
        hparams_dict: keyword arguments of :func:`build_model` that rebuild this model.
    """

    def __init__(self, net: nn.Module, stride: int, arch: str, hparams: Mapping[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.stride = int(stride)
        self.arch = arch
        self.hparams_dict = dict(hparams)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Return logits (B, K, H, W) for an input (B, C, H, W) of any H, W >= 1; a network
        with deep supervision in training mode returns ``[logits, aux at 1/2, aux at 1/4,
        ...]``, each cropped to its share of (H, W) (rounded up)."""
        if x.ndim != 4:
            raise TomosegError(f"expected an input of shape (B, C, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        ph, pw = _pad_amount(h, self.stride), _pad_amount(w, self.stride)
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        out = self.net(x)
        if isinstance(out, (list, tuple)):
            fh, fw = x.shape[-2:]
            return [o[..., : -(-h * o.shape[-2] // fh), : -(-w * o.shape[-1] // fw)] for o in out]
        return out[..., :h, :w]
