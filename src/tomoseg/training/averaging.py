"""Weight averaging with a warm-up: an exponential moving average of the weights whose decay
grows with the number of updates, so that the average follows the raw weights early in training.

With a fixed decay d the average starts at the first step's weights and forgets them only
slowly (0.99: half-life 69 steps); while the raw weights still change fast, the averaged network
(weights and BatchNorm statistics averaged over very different networks) can be far worse than
the raw one: on unseen EM data a run with d = 0.99 validated at IoU 0.000 for its epochs 2 to 10
while its training IoU rose to 0.84. The warm-up uses, at the n-th update,

    d_n = min(d, (1 + n) / (10 + n))

(the ``num_updates`` rule of TensorFlow's ``tf.train.ExponentialMovingAverage``, also the
default of diffusers' ``EMAModel``; timm's ``ModelEmaV3`` offers a warm-up of the same purpose),
so d_1 = 0.18, d_10 = 0.58, d_100 = 0.92, and d is reached after (10 d - 1) / (1 - d) updates
(890 for 0.99). The average is Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging`
(``torch.optim.swa_utils.AveragedModel``, BatchNorm buffers averaged too) with this update rule;
validation, checkpoints and exported weights use the average, as with Lightning's own
``EMAWeightAveraging``.

While the average warms up, validation also scores the raw weights (``val_raw_*`` columns of
``metrics.csv``, a second line in ``curves.png``): that is where the two differ most.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch.callbacks import WeightAveraging


def warmup_decay(decay: float, updates: int | float) -> float:
    """The decay of the ``updates``-th update of the average (``updates`` >= 1):
    ``min(decay, (1 + updates) / (10 + updates))``."""
    return min(float(decay), (1.0 + updates) / (10.0 + updates))


def warmup_updates(decay: float) -> int:
    """Updates after which :func:`warmup_decay` reaches ``decay`` (890 for 0.99)."""
    return max(0, math.ceil((10.0 * decay - 1.0) / (1.0 - decay) - 1e-9))


def warmup_ema_multi_avg_fn(decay: float):
    """An ``AveragedModel`` ``multi_avg_fn``: EMA of lists of tensors with the warm-up decay
    (``num_averaged``: the updates so far). Integer buffers (BatchNorm's batch counter) take
    the model's value."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        d = warmup_decay(decay, int(num_averaged))
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update


class WarmupEMA(WeightAveraging):
    """Lightning's ``WeightAveraging`` with the warm-up EMA of this module.

    Args:
        decay: the decay d in (0, 1) reached after :func:`warmup_updates` updates.
        warmup: False gives a fixed decay (``EMAWeightAveraging``'s rule; for comparison).

    The module (:class:`~tomoseg.training.module.SegModule`) learns the decay in effect
    (``averaging_decay``) and, during validations that start before the warm-up ends, the
    network holding the raw weights (``raw_net``), which it scores beside the average.
    """

    def __init__(self, decay: float, warmup: bool = True) -> None:
        if warmup:
            fn = warmup_ema_multi_avg_fn(decay)
        else:
            from torch.optim.swa_utils import get_ema_multi_avg_fn

            fn = get_ema_multi_avg_fn(decay)
        super().__init__(use_buffers=True, multi_avg_fn=fn)
        self.decay, self.warmup = float(decay), bool(warmup)

    def updates(self) -> int:
        """Updates of the average so far."""
        return 0 if self._average_model is None else int(self._average_model.n_averaged)

    def current_decay(self) -> float:
        """The decay of the latest update (NaN before the second one)."""
        n = self.updates() - 1  # the first update copies the weights
        if n < 1:
            return float("nan")
        return warmup_decay(self.decay, n) if self.warmup else self.decay

    def warming_up(self) -> bool:
        """Whether the average's decay is still below ``decay``."""
        return self.warmup and self.updates() - 1 < warmup_updates(self.decay)

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        pl_module.averaging_decay = self.current_decay()

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        super().on_validation_epoch_start(trainer, pl_module)  # the module holds the average now
        if self._average_model is not None and self.warming_up():
            raw = self._average_model.module.net  # the raw weights, swapped out
            raw.eval()
            pl_module.__dict__["raw_net"] = raw

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        raw = pl_module.__dict__.get("raw_net")  # the module drops it at its epoch end
        if raw is not None:
            raw.train()
        super().on_validation_epoch_end(trainer, pl_module)
