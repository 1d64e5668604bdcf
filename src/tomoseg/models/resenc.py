"""Residual-encoder U-Net: nnU-Net ResEnc's design (Isensee et al., "nnU-Net Revisited",
MICCAI 2024), built from MONAI's nnU-Net blocks (``monai.networks.blocks.dynunet_block``).

Encoder: ``depth`` stages of residual blocks (``UnetResBlock``: two 3x3 convolutions with a
shortcut, a strided one opening every stage after the first, its shortcut a 2x2 average pool
and a 1x1 convolution as in nnU-Net's ``BasicBlockD``), nnU-Net ResEnc's blocks per stage
:data:`BLOCKS` (1, 3, 4, 6, 6, ...); channels ``w, 2w, ..., 2**(depth-1) w``. Decoder: per
stage a transposed convolution, the skip connection and two plain convolutions
(``UnetUpBlock``); a 1x1 convolution gives the K logits. BatchNorm (as tomoseg's other
networks; nnU-Net uses instance normalisation) and leaky ReLU. Total stride ``2**(depth-1)``.

Deep supervision (``deep_supervision=True``): 1x1 heads on the decoder's lower-resolution outputs
(1/2, 1/4, ... of the input); in training mode the network then returns ``[logits, aux_1/2,
aux_1/4, ...]``, in evaluation mode the logits only, so inference never sees the heads.
"""

from __future__ import annotations

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, UnetUpBlock
from torch import nn

#: residual blocks per encoder stage (nnU-Net ResEnc M/L/XL), truncated to the depth
BLOCKS = (1, 3, 4, 6, 6, 6, 6)
NORM = "BATCH"
ACT = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})


def _res_block(c_in: int, c_out: int, stride: int) -> UnetResBlock:
    """MONAI's residual block; a strided one's shortcut is nnU-Net's (``BasicBlockD``): 2x2
    average pooling, then a 1x1 convolution (MONAI's strided 1x1 convolution in its place also
    crashes PyTorch 2.13's channels-last backward on the CPU)."""
    block = UnetResBlock(2, c_in, c_out, 3, stride, NORM, ACT)
    if stride > 1:
        block.conv3 = nn.Sequential(
            nn.AvgPool2d(stride, stride), nn.Conv2d(c_in, c_out, 1, bias=False)
        )
    return block


class ResEncUNet(nn.Module):
    """nnU-Net ResEnc's U-Net in 2D (see the module docstring).

    Args:
        in_channels: input channels C.
        num_classes: output logits K.
        width: channels of the first stage.
        depth: stages (>= 2).
        deep_supervision: add the auxiliary heads (training returns a list, see the module).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int,
        depth: int,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        ch = [width * 2**i for i in range(depth)]
        stages = []
        for i in range(depth):
            c_in = in_channels if i == 0 else ch[i - 1]
            blocks = [_res_block(c_in, ch[i], 1 if i == 0 else 2)]
            blocks += [UnetResBlock(2, ch[i], ch[i], 3, 1, NORM, ACT) for _ in range(BLOCKS[i] - 1)]
            stages.append(nn.Sequential(*blocks))
        self.encoder = nn.ModuleList(stages)
        # decoder, from the lowest resolution up: stage i + 1 -> i
        self.decoder = nn.ModuleList(
            UnetUpBlock(2, ch[i + 1], ch[i], 3, 1, 2, NORM, ACT) for i in reversed(range(depth - 1))
        )
        self.head = UnetOutBlock(2, ch[0], num_classes)
        self.deep_supervision = bool(deep_supervision)
        # auxiliary heads at 1/2, 1/4, ..., 1/2**(depth-2) of the input
        aux = range(1, depth - 1) if self.deep_supervision else ()
        self.aux_heads = nn.ModuleList(UnetOutBlock(2, ch[i], num_classes) for i in aux)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        outs = []  # decoder outputs, lowest resolution first
        for up in self.decoder:
            x = up(x, skips.pop())
            outs.append(x)
        logits = self.head(x)
        if not (self.training and self.deep_supervision):
            return logits
        # outs[-2] is at 1/2, outs[-3] at 1/4, ...: head i takes the output at 1/2**(i+1)
        return [logits] + [h(outs[-2 - i]) for i, h in enumerate(self.aux_heads)]


def build_resenc_unet(
    in_channels: int, num_classes: int, width: int, depth: int, deep_supervision: bool = False
) -> tuple[nn.Module, int]:
    """A :class:`ResEncUNet` and its total stride (the input side must be a multiple of it)."""
    net = ResEncUNet(in_channels, num_classes, width, depth, deep_supervision)
    return net, 2 ** (depth - 1)
