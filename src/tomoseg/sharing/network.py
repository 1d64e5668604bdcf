"""The network a tomoseg export holds: the run's network with its calibrated decision bias.

This file is copied as it is into every bioimage.io package as the architecture of its
``pytorch_state_dict`` weights (``tomoseg_network.py``, callable ``TomosegNetwork``), so it
imports nothing of tomoseg but :func:`tomoseg.models.registry.build_model` (a consumer that
loads the state dict needs ``pip install tomoseg``; the TorchScript and ONNX weights need
nothing of it).
"""

from __future__ import annotations

import torch
from torch import nn


class TomosegNetwork(nn.Module):
    """A tomoseg network mapping a normalised (B, C, H, W) float32 image to (B, K, H, W) class
    scores: the network's logits plus a fixed per-class bias (tomoseg's calibrated decision,
    ``-log w_k`` of a class-weighted loss; zeros when it has none), so that their softmax is
    the class probabilities tomoseg computes (before a tuned decision, which packages do not
    carry in their weights).

    Args:
        name, in_channels, num_classes, width, depth: the run's network
            (``tomoseg.models.registry.build_model``'s arguments).
        bias: K per-class offsets added to the logits.
        pad: pad any H, W to the network's stride and crop back (True: as tomoseg runs it;
            False: H, W must be multiples of the stride, as the exported TorchScript / ONNX
            graphs are traced).
    """

    def __init__(
        self,
        name: str,
        in_channels: int,
        num_classes: int,
        width: int,
        depth: int,
        bias: list[float] | None = None,
        pad: bool = True,
    ) -> None:
        super().__init__()
        from tomoseg.models.registry import build_model

        self.model = build_model(name, in_channels, num_classes, width, depth)
        offsets = torch.zeros(num_classes) if bias is None else torch.tensor(bias)
        self.register_buffer("bias", offsets.float().reshape(1, num_classes, 1, 1))
        self.pad = bool(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised float32 -> (B, K, H, W) class scores."""
        y = self.model(x) if self.pad else self.model.net(x)
        return y + self.bias
