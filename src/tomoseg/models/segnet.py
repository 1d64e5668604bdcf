"""Segmentation networks: SegNet (written here) and U-Net (from MONAI), padded to any input size."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tomoseg.errors import TomosegError
from tomoseg.models.layers import ConvBNReLU, PadToStride

# VGG16 layout: convolutions per block and channel multipliers of the base width.
SEGNET_BLOCKS = (2, 2, 3, 3, 3)
SEGNET_MULTIPLIERS = (1, 2, 4, 8, 8)
SEGNET_STRIDE = 2 ** len(SEGNET_BLOCKS)

# Indices of the 13 convolutions in torchvision's ``vgg16_bn().features``; each BatchNorm is at +1.
VGG16_BN_CONV_INDICES = (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _traced_unpool(x: torch.Tensor, idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Max-unpooling as a scatter into zeros shaped ``like`` (the feature map that was pooled):
    the same values as ``nn.MaxUnpool2d`` (2x2 windows, stride 2: every index once), in a form
    that traces with free sizes and exports to ONNX (``F.max_unpool2d`` checks traced sizes as
    Python booleans in PyTorch 2.13, and ONNX's exporter has no ``max_unpool2d``)."""
    out = torch.zeros_like(like).flatten(2)
    return out.scatter(2, idx.flatten(2), x.flatten(2)).view_as(like)


class SegNet(nn.Module):
    """SegNet (Badrinarayanan, Kendall & Cipolla, TPAMI 2017) for 2D images.

    Written by hand because no maintained library ships SegNet (MONAI, torchvision and
    segmentation-models-pytorch do not).

    Encoder: the 13 convolutions of VGG16-BN in 5 blocks of [2, 2, 3, 3, 3] conv+BN+ReLU with
    ``[w, 2w, 4w, 8w, 8w]`` channels, each block followed by a 2x2 max-pooling that keeps its
    indices. Decoder: the mirror image; each block starts with a 2x2 max-unpooling driven by the
    indices (and the size) of the matching encoder feature map, then the mirrored convolutions.
    A 1x1 convolution maps the last ``w`` channels to ``num_classes`` logits.

    Layer names: ``encoder[b][i]`` is the i-th :class:`ConvBNReLU` of encoder block b (so
    ``encoder.0.0.conv.weight`` is VGG's ``features.0.weight``); likewise ``decoder[b][i]``,
    where decoder block 0 is the deepest; ``head`` is the 1x1 classifier.

    Args:
        in_channels: channels of the input image (1 for grayscale).
        num_classes: number of output classes K.
        width: channels of the first block (64 = the paper / VGG16).

    Input height and width must be multiples of 32 for an exact mirror; use
    :func:`build_model` (which pads) for arbitrary sizes.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 64) -> None:
        super().__init__()
        chans = [width * m for m in SEGNET_MULTIPLIERS]
        self.encoder = nn.ModuleList()
        c_in = in_channels
        for n_convs, c in zip(SEGNET_BLOCKS, chans, strict=True):
            layers = []
            for _ in range(n_convs):
                layers.append(ConvBNReLU(c_in, c))
                c_in = c
            self.encoder.append(nn.Sequential(*layers))
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        # Decoder block j mirrors encoder block (4 - j): same number of convs, the last one of
        # the block reducing the channels to those of the next (shallower) block.
        self.decoder = nn.ModuleList()
        for b in reversed(range(len(SEGNET_BLOCKS))):
            c = chans[b]
            c_out = chans[b - 1] if b > 0 else chans[0]
            layers = [ConvBNReLU(c, c) for _ in range(SEGNET_BLOCKS[b] - 1)]
            layers.append(ConvBNReLU(c, c_out))
            self.decoder.append(nn.Sequential(*layers))
        self.head = nn.Conv2d(chans[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits (B, K, H, W) for an input (B, C, H, W)."""
        indices: list[torch.Tensor] = []
        sizes: list[torch.Size] = []
        shapes: list[torch.Tensor] = []  # the pooled feature maps, kept while traced only
        tracing = torch.jit.is_tracing()  # TorchScript / ONNX export (tomoseg export)
        for block in self.encoder:
            x = block(x)
            sizes.append(x.shape[-2:])
            if tracing:
                shapes.append(x)
            x, idx = self.pool(x)
            indices.append(idx)
        for block, idx, size in zip(self.decoder, reversed(indices), reversed(sizes), strict=True):
            x = _traced_unpool(x, idx, shapes.pop()) if tracing else self.unpool(x, idx, size)
            x = block(x)
        return self.head(x)

    def encoder_layers(self) -> list[ConvBNReLU]:
        """The 13 encoder conv+BN+ReLU units in forward order."""
        return [unit for block in self.encoder for unit in block]


# ----------------------------------------------------------------------------- encoder weights


def _unwrap_segnet(model: nn.Module) -> SegNet:
    net = model.net if isinstance(model, PadToStride) else model
    if isinstance(net, SegNet):
        return net
    arch = getattr(model, "arch", type(net).__name__)
    raise TomosegError(f"encoder initialisation is supported for segnet only, not {arch}")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors from a safetensors file or a ``torch.save`` file (``weights_only=True``)."""
    if not path.is_file():
        raise TomosegError(f"encoder weights file not found: {path}")
    errors: list[str] = []
    loaders = ["safetensors", "torch"]
    if path.suffix.lower() != ".safetensors":
        loaders.reverse()
    for loader in loaders:
        try:
            if loader == "safetensors":
                from safetensors.torch import load_file

                obj: Any = load_file(str(path), device="cpu")
            else:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            break
        except Exception as exc:  # any parse failure is a problem with the user's file
            errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    else:
        raise TomosegError(f"cannot read encoder weights {path} ({errors[0]})")
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # a Lightning-style checkpoint
    if not isinstance(obj, Mapping):
        raise TomosegError(f"encoder weights {path} do not hold a state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _vgg_sources(state: Mapping[str, torch.Tensor]) -> list[dict[str, str]] | None:
    """Per encoder unit, map ``conv.weight`` etc. to the VGG16-BN key; None if not VGG layout."""
    if "features.0.weight" not in state:
        return None
    units = []
    for idx in VGG16_BN_CONV_INDICES:
        unit = {"conv.weight": f"features.{idx}.weight", "conv.bias": f"features.{idx}.bias"}
        unit.update({f"bn.{t}": f"features.{idx + 1}.{t}" for t in _BN_TENSORS})
        units.append(unit)
    return units


def _own_sources(state: Mapping[str, torch.Tensor], net: SegNet) -> list[dict[str, str]]:
    """Per encoder unit, map its tensor names to keys of one of our own (possibly prefixed) dicts."""
    first = "encoder.0.0.conv.weight"
    # Accept "encoder..." as well as wrapped names such as "net.encoder..." / "model.net.encoder...".
    prefixes = [k[: -len(first)] for k in state if k == first or k.endswith("." + first)]
    if not prefixes:
        raise TomosegError(
            "encoder weights hold neither a VGG16-BN state dict (features.0.weight, ...) "
            "nor a SegNet one (encoder.0.0.conv.weight, ...)"
        )
    prefix = min(prefixes, key=len)
    units = []
    for b, i in _unit_positions(net):
        unit = {f"conv.{t}": f"{prefix}encoder.{b}.{i}.conv.{t}" for t in ("weight", "bias")}
        unit.update({f"bn.{t}": f"{prefix}encoder.{b}.{i}.bn.{t}" for t in _BN_TENSORS})
        units.append(unit)
    return units


def load_encoder_weights(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Initialise the SegNet encoder from a local VGG16-BN (or SegNet) state dict.

    Args:
        model: a SegNet, or the :class:`PadToStride` wrapper of one (from :func:`build_model`).
        path: a ``.safetensors`` file or a ``torch.save`` file (read with ``weights_only=True``)
            holding either torchvision's ``vgg16_bn`` state dict (``features.0.weight``, ...;
            the classifier is ignored) or a state dict of this SegNet (``encoder.0.0.conv.weight``,
            optionally with a prefix such as ``net.``). For the first convolution, RGB weights
            (3 input channels) are summed over the colour axis when the model takes 1 channel.

    Returns:
        The number of tensors copied into the model (up to 13 x 7).

    Raises:
        TomosegError: not a SegNet, unreadable file, missing keys or mismatching shapes.
    """
    net = _unwrap_segnet(model)
    p = Path(path)
    state = _read_state_dict(p)
    sources = _vgg_sources(state)
    hint = " (VGG16-BN weights need width=64)" if sources is not None else ""
    if sources is None:
        sources = _own_sources(state, net)
    params = dict(net.named_parameters())
    params.update(dict(net.named_buffers()))
    loaded = 0
    with torch.no_grad():
        for u, (unit_src, (b, i)) in enumerate(zip(sources, _unit_positions(net), strict=True)):
            for tensor_name, key in unit_src.items():
                target_name = f"encoder.{b}.{i}.{tensor_name}"
                if key not in state:
                    if tensor_name.endswith("num_batches_tracked"):
                        continue  # optional in older state dicts
                    raise TomosegError(f"encoder weights {p} lack '{key}' (for {target_name})")
                src = state[key]
                dst = params[target_name]
                if u == 0 and tensor_name == "conv.weight" and src.ndim == 4:
                    if src.shape[1] == 3 and dst.shape[1] == 1:
                        src = src.sum(dim=1, keepdim=True)
                if tuple(src.shape) != tuple(dst.shape):
                    raise TomosegError(
                        f"encoder layer {target_name} has shape {tuple(dst.shape)} but '{key}' in "
                        f"{p} has {tuple(src.shape)}{hint}"
                    )
                dst.copy_(src.to(dtype=dst.dtype))
                loaded += 1
    return loaded


def _unit_positions(net: SegNet) -> list[tuple[int, int]]:
    return [(b, i) for b, block in enumerate(net.encoder) for i in range(len(block))]


def build_segnet(
    in_channels: int, num_classes: int, width: int, depth: int
) -> tuple[nn.Module, int]:
    """A SegNet and its total stride (32); SegNet's depth is fixed at 5 (VGG16's five blocks)."""
    if depth != len(SEGNET_BLOCKS):
        raise TomosegError(f"segnet has a fixed depth of {len(SEGNET_BLOCKS)}, got depth={depth}")
    return SegNet(in_channels=in_channels, num_classes=num_classes, width=width), SEGNET_STRIDE
