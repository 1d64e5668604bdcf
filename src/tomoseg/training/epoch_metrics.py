"""Per-epoch metric states as torchmetrics ``Metric`` objects: sums that add up across processes.

When validation images are split over processes (DDP), each process scores its own images; the
states below are plain sums (``dist_reduce_fx="sum"``), so reducing them across processes gives
exactly the single-process values. They hold:

* the pooled confusion matrix (``cm[t, p]``, annotated pixels only), and
* per-image sums and counts of accuracy, per-class IoU and per-class BF1 (NaN values are not
  counted), since reports use the NaN-ignoring mean over images (as ``tomoseg evaluate``), and
  the summed loss.

``compute()`` returns the means; see :mod:`tomoseg.metrics.segmentation` for the definitions.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

from tomoseg.metrics.segmentation import ImageScore, iou_from_cm


def _sum_state(metric: Metric, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    metric.add_state(name, default=torch.zeros(shape, dtype=dtype), dist_reduce_fx="sum")


class ValidationScores(Metric):
    """Validation metrics of full images: per-image means and the pooled confusion matrix.

    Args:
        n_classes: K.

    ``update(score, loss)`` adds one image (an :class:`~tomoseg.metrics.ImageScore` and its mean
    loss); ``compute()`` returns a dict of float64 CPU tensors: ``images`` (count), ``loss``
    (mean over images), ``accuracy`` (mean), ``iou`` (K,) and ``bf1`` (K,) (NaN-ignoring means
    over images), ``pooled_iou`` (K,) and ``cm`` (K, K) int64.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, n_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.k = int(n_classes)
        f64, i64 = torch.float64, torch.int64
        _sum_state(self, "cm", (self.k, self.k), i64)
        _sum_state(self, "images", (), i64)
        _sum_state(self, "loss_sum", (), f64)
        _sum_state(self, "acc_sum", (), f64)
        _sum_state(self, "acc_n", (), i64)
        _sum_state(self, "iou_sum", (self.k,), f64)
        _sum_state(self, "iou_n", (self.k,), i64)
        _sum_state(self, "bf1_sum", (self.k,), f64)
        _sum_state(self, "bf1_n", (self.k,), i64)

    def update(self, score: ImageScore, loss: float) -> None:  # type: ignore[override]
        dev = self.cm.device

        def t(a, dtype=torch.float64):
            return torch.as_tensor(np.asarray(a), dtype=dtype, device=dev)

        self.cm += t(score.cm, torch.int64)
        self.images += 1
        self.loss_sum += float(loss)
        if not np.isnan(score.accuracy):
            self.acc_sum += float(score.accuracy)
            self.acc_n += 1
        for name, v in (("iou", score.iou), ("bf1", score.bf1)):
            ok = ~np.isnan(v)
            getattr(self, f"{name}_sum").add_(t(np.where(ok, v, 0.0)))
            getattr(self, f"{name}_n").add_(t(ok, torch.int64))

    def compute(self) -> dict[str, torch.Tensor]:
        def mean(s: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            s, n = s.double().cpu(), n.cpu()
            return torch.where(n > 0, s / n.clamp(min=1), torch.full_like(s, float("nan")))

        return {
            "images": self.images.cpu(),
            "loss": mean(self.loss_sum, self.images),
            "accuracy": mean(self.acc_sum, self.acc_n),
            "iou": mean(self.iou_sum, self.iou_n),
            "bf1": mean(self.bf1_sum, self.bf1_n),
            "pooled_iou": torch.from_numpy(iou_from_cm(self.cm.cpu().numpy())),
            "cm": self.cm.cpu(),
        }


class TrainScores(Metric):
    """Training metrics pooled over the epoch's crops: confusion matrix (annotated pixels only),
    summed loss (weighted by crops) and the number of crops."""

    full_state_update = False

    def __init__(self, n_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.k = int(n_classes)
        _sum_state(self, "cm", (self.k, self.k), torch.int64)
        _sum_state(self, "loss_sum", (), torch.float64)
        _sum_state(self, "crops", (), torch.int64)

    def update(self, target: torch.Tensor, pred: torch.Tensor, loss: float) -> None:  # type: ignore[override]
        """Add a batch: ``target`` and ``pred`` (B, H, W) int64 (targets outside 0..K-1, the
        ignore index, are left out), ``loss`` the batch's mean loss."""
        k = self.k
        t, p = target.flatten(), pred.flatten()
        keep = (t >= 0) & (t < k)
        idx = (t[keep] * k + p[keep]).to(self.cm.device)
        self.cm += torch.bincount(idx, minlength=k * k).reshape(k, k)
        self.loss_sum += float(loss) * target.shape[0]
        self.crops += target.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.crops.cpu()
        return {
            "crops": n,
            "loss": self.loss_sum.cpu() / n.clamp(min=1),
            "cm": self.cm.cpu(),
        }
