"""Segmenting arrays with a loaded run: the one inference path of every command and the API."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tomoseg.data.normalization import normalize
from tomoseg.inference.sliding_window import check_untiled_memory, infer_logits
from tomoseg.runtime.checkpoint import LoadedRun
from tomoseg.runtime.device import resolve_precision
from tomoseg.runtime.logit_adjustment import decision_bias


def segment_batch(
    run: LoadedRun,
    images: Sequence[np.ndarray],
    tile_size: int | None = None,
    tile_batch: int | None = None,
    overlap: float | None = None,
    tiling: bool = True,
    bf16: bool | None = None,
    probabilities: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment raw 2D images of one shape in one pass (tiles of all of them share batches).

    ``bf16=None`` follows the run's precision setting on this device (``auto``: bf16 autocast
    where the CPU or GPU computes bf16 natively). The decision applies the run's class-weight
    correction (:func:`decision_bias`).

    Returns:
        ``(labels (B, H, W) uint8, probabilities (B, K, H, W) float32)``; the probabilities are
        None (neither computed nor copied off the device) when ``probabilities`` is False.
    """
    cfg = run.config
    dev = next(run.model.parameters()).device
    if bf16 is None:
        bf16 = resolve_precision(cfg.get("precision", "32"), dev) == "bf16-mixed"
    if not tiling and dev.type == "cpu":
        h, w = images[0].shape
        check_untiled_memory(
            (h * len(images), w), run.meta["model"]["width"] or 16, len(run.classes)
        )
    x = torch.from_numpy(np.stack([normalize(im, run.normalization) for im in images]))[:, None]
    logits = infer_logits(
        run.model,
        x.to(dev),
        tile_size or cfg.get("tile_size", 0),
        cfg.get("tile_overlap", 0.25) if overlap is None else overlap,
        tile_batch or cfg.get("tile_batch", 0),
        tiling=tiling,
        autocast_bf16=bf16,
    )
    bias = decision_bias(run.meta.get("class_weights"), cfg.get("decision", "weighted"))
    if bias is not None:
        logits = logits + bias.to(logits.device)[None, :, None, None]
    labels = logits.argmax(1).to(torch.uint8).cpu().numpy()  # softmax keeps the argmax
    return labels, torch.softmax(logits, 1).cpu().numpy() if probabilities else None


def segment(run: LoadedRun, image: np.ndarray, **kwargs) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment one raw 2D image (see :func:`segment_batch` for the options).

    Returns:
        ``(labels (H, W) uint8, probabilities (K, H, W) float32 or None)``.
    """
    labels, prob = segment_batch(run, [image], **kwargs)
    return labels[0], None if prob is None else prob[0]
