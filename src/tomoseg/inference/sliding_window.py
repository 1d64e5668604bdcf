"""Class logits of full-size slices by overlapping tiles (MONAI's sliding_window_inference)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.inferers import sliding_window_inference

from tomoseg.errors import TomosegError
from tomoseg.runtime.device import auto_tiles
from tomoseg.utils.memory import available_memory


@torch.no_grad()
def infer_logits(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile_size: int = 0,
    overlap: float = 0.25,
    tile_batch: int = 0,
    tiling: bool = True,
    autocast_bf16: bool = False,
    roi: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Class logits of full-size images by overlapping tiles blended with a Gaussian window.

    Args:
        model: network (or compiled engine, :mod:`tomoseg.inference.runtimes`) mapping
            (B, 1, h, w) to (B, K, h, w) for any h, w.
        image: (B, 1, H, W) normalised float tensor on the model's device.
        tile_size: tile side; a slice smaller than it on an axis uses its own size there.
        overlap: fraction of overlap between neighbouring tiles.
        tile_batch: tiles per forward pass (memory ~ tile_batch x tile_size^2).
        tiling: False runs the whole slice at once (memory grows with the slice).
        autocast_bf16: run the network under bf16 autocast.
        roi: the tile's (height, width) when ``image`` is a band of a taller slice (the
            slice's tile, :mod:`tomoseg.inference.bands`); default: ``tile_size`` cut to the
            image.

    Returns:
        (B, K, H, W) float32 logits (blended).
    """
    dev_type = image.device.type
    tile_size, tile_batch = auto_tiles(tile_size, tile_batch, image.device)
    with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=autocast_bf16):
        if not tiling:
            return model(image).float()
        if roi is None:
            roi = (min(tile_size, image.shape[-2]), min(tile_size, image.shape[-1]))
        out = sliding_window_inference(
            image, roi, tile_batch, lambda x: model(x).float(), overlap=overlap, mode="gaussian"
        )
    return torch.as_tensor(out).float()


def class_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(1)`` for (B, K, H, W) logits, as K - 1 elementwise comparisons: the same
    ids (ties go to the lower class, as argmax does), about 10x faster than ``argmax`` over the
    small class axis on a CPU (0.3 s for a 2300x1920 slice there)."""
    if logits.shape[1] == 1:
        return torch.zeros(logits[:, 0].shape, dtype=torch.long, device=logits.device)
    best, ids = (
        logits[:, 0],
        torch.zeros(logits[:, 0].shape, dtype=torch.long, device=logits.device),
    )
    for k in range(1, logits.shape[1]):
        better = logits[:, k] > best
        ids.masked_fill_(better, k)
        best = torch.where(better, logits[:, k], best)
    return ids


def check_untiled_memory(
    shape: tuple[int, int], width: int, n_classes: int, available: int | None = None
) -> None:
    """Refuse whole-slice inference that would not fit in memory.

    The estimate counts about 12 float32 feature maps of the first level's width kept alive at
    full resolution (activations, skip connections, the padded input), plus the K logits.

    Raises:
        TomosegError: the estimate exceeds 80 % of the available memory.
    """
    need = shape[0] * shape[1] * 4 * (12 * width + 2 * n_classes)
    avail = available_memory() if available is None else available
    if need > 0.8 * avail:
        raise TomosegError(
            f"a {shape[1]}x{shape[0]} image is too large to segment without tiling "
            f"(~{need / 2**30:.1f} GiB needed, {avail / 2**30:.1f} GiB available); segment it in tiles (tiling=True)"
        )
