"""The LightningModule: network, class-weighted loss, per-epoch metrics."""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from tomoseg.config.schema import TrainConfig
from tomoseg.data.context import in_channels
from tomoseg.data.sources import IGNORE_INDEX
from tomoseg.errors import TomosegWarning
from tomoseg.inference.sliding_window import infer_logits
from tomoseg.metrics.segmentation import accuracy_from_cm, iou_from_cm, score_image
from tomoseg.models.registry import build_model, network_hparams
from tomoseg.models.segnet import load_encoder_weights
from tomoseg.runtime.logit_adjustment import decision_bias
from tomoseg.training.epoch_metrics import TrainScores, ValidationScores
from tomoseg.utils.format import first_line

#: training steps from which ``compile: auto`` compiles the network. Measured on this project's
#: 2-core CPU (default U-Net, batch 16 of 256 px, bf16): compiling takes ~42 s and a step drops
#: from 0.80 to 0.62 s, so it pays after ~225 steps (docs/speed.md, section 3).
COMPILE_MIN_STEPS = 300


#: ``ema_decay: auto``: the decay, and the optimizer steps from which it is used. Measured on
#: em-vnc-mito (3 seeds, 20-minute CPU budget, 1800-1950 steps: test IoU +0.013 to +0.019 on
#: average, validation swing 0.001-0.002; docs/training.md section 8); a run much shorter than
#: the average's window (half-life 69 steps at 0.99) would deliver weights of its first steps.
EMA_AUTO_DECAY = 0.99
EMA_MIN_STEPS = 500


def ema_decay_for(setting: float | str | None, steps: int) -> float | None:
    """The EMA decay a run uses (None: no weight averaging).

    Args:
        setting: ``TrainConfig.ema_decay``: a decay in (0, 1), ``auto`` (:data:`EMA_AUTO_DECAY`
            from :data:`EMA_MIN_STEPS` optimizer steps, else off) or None (off).
        steps: the run's training steps (epochs x steps per epoch).
    """
    if setting == "auto":
        return EMA_AUTO_DECAY if steps >= EMA_MIN_STEPS else None
    return None if setting is None else float(setting)


def compile_wanted(setting: str, steps: int) -> bool:
    """Whether the training steps run a ``torch.compile``-d network.

    Args:
        setting: ``TrainConfig.compile``: ``on``, ``off`` or ``auto`` (on from
            :data:`COMPILE_MIN_STEPS` optimizer steps, where compiling pays for itself).
        steps: the run's training steps (epochs x steps per epoch).
    """
    return setting == "on" or (setting == "auto" and steps >= COMPILE_MIN_STEPS)


# ----------------------------------------------------------------------------- model


class _TargetAsFloat(nn.Module):
    """A loss of (logits, int64 ids (B, H, W)) called with float ids (B, 1, H, W), as MONAI's
    ``DeepSupervisionLoss`` passes its down-sampled targets."""

    def __init__(self, loss) -> None:
        super().__init__()
        self.fn = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(logits, target[:, 0].round().long())


class SegModule(L.LightningModule):
    """Network + weighted loss + per-epoch metrics (train: pooled over crops; val: per image).

    Targets equal to :data:`~tomoseg.data.sources.IGNORE_INDEX` (unannotated pixels) count for
    nothing: the cross-entropy ignores them, the confusion matrices and BF1 leave them out.
    Epoch metrics are torchmetrics sum states (:mod:`tomoseg.training.epoch_metrics`), so they
    are reduced correctly when batches or validation images are spread over processes.
    """

    def __init__(
        self, config: dict, classes: list[str], class_of_interest: str, weights: list[float]
    ):
        super().__init__()
        self.save_hyperparameters()  # primitives only, so checkpoints load with weights_only=True
        self.cfg = TrainConfig.model_validate(config)
        self.classes, self.coi = list(classes), classes.index(class_of_interest)
        k = len(classes)
        # 1 input channel, or 2k + 1 with 2.5D context; the depth as the registry resolves it
        self.net = build_model(
            **network_hparams(
                self.cfg.model,
                in_channels(self.cfg.context),
                k,
                self.cfg.width,
                self.cfg.depth,
                self.cfg.deep_supervision,
            )
        )
        if self.cfg.encoder_weights is not None:
            load_encoder_weights(self.net, self.cfg.encoder_weights)
        if self.cfg.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.register_buffer("class_w", torch.tensor(weights, dtype=torch.float32))
        bias = decision_bias(weights, self.cfg.decision)
        self.register_buffer("logit_bias", torch.zeros(k) if bias is None else bias)
        self.loss_fn: nn.Module = nn.CrossEntropyLoss(
            weight=self.class_w, ignore_index=IGNORE_INDEX
        )
        self.dice_fn: nn.Module | None = None
        if self.cfg.loss == "dice_ce":
            from monai.losses import DiceLoss

            # nnU-Net's Dice (Isensee et al., Nature Methods 2021): soft Dice of the foreground
            # classes over the whole batch, added to the cross-entropy; MONAI's DiceLoss masks
            # the unannotated pixels out of both sums (ignore_index)
            self.dice_fn = DiceLoss(
                include_background=False,
                to_onehot_y=True,
                softmax=True,
                batch=True,
                ignore_index=IGNORE_INDEX,
            )
        self.train_scores = TrainScores(k)
        self.val_scores = ValidationScores(k)
        # the raw weights' scores while the weight average warms up (training/averaging.py)
        self.raw_scores = ValidationScores(k)
        self.raw_result: dict[str, Any] | None = None
        self.averaging_decay: float | None = None  # set by WarmupEMA after each update
        self.val_result: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.epoch_lr = float("nan")
        self.epoch_crops = 0
        self.bf16 = False  # set by train() from the resolved precision
        self.compile_steps = False  # set by train() from cfg.compile (compile_wanted)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The training steps' forward pass: ``torch.compile`` (Inductor) of the network when
        :attr:`compile_steps` is set and ``x`` is a full batch of training crops, else eager.

        The compiled callable shares the network's parameters; it is made at the first step
        and kept out of the module's state (checkpoints, copies). Other shapes (the last, short
        batch of an epoch; whole-image training) run eager rather than recompile. Any failure
        of compiling or running it gives one warning and eager steps from then on (the failed
        step is recomputed eagerly).
        """
        c = self.cfg
        full = (
            c.crop_size > 0
            and x.shape[0] == c.batch_size
            and x.shape[-2] == c.crop_size
            and x.shape[-1] == c.crop_size
        )
        if self.compile_steps and full:
            compiled = self.__dict__.get("_compiled_net")
            if compiled is None:
                compiled = torch.compile(self.net)
                self.__dict__["_compiled_net"] = compiled  # not a registered submodule
            try:
                return compiled(x)
            except Exception as e:  # compiler missing, unsupported op, ...
                warnings.warn(
                    f"torch.compile failed, training continues without it: {first_line(e)}",
                    TomosegWarning,
                    stacklevel=2,
                )
                self.compile_steps = False
                self.__dict__.pop("_compiled_net", None)
        return self.net(x)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_compiled_net", None)  # copies (EMA's average, pickling) stay eager
        state.pop("raw_net", None)
        return state

    def loss(self, logits: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Loss of logits (B, K, H, W) against class ids (B, H, W): the (class-weighted)
        cross-entropy, plus the batch soft Dice of the foreground classes with ``loss: dice_ce``;
        pixels equal to :data:`IGNORE_INDEX` count in neither.

        Deep supervision (a list ``[logits, aux at 1/2, aux at 1/4, ...]``): the weighted sum of
        the loss of each output against the target down-sampled to its size (nearest
        neighbour), weights 1, 1/2, 1/4, ... normalised to sum 1 (nnU-Net's; MONAI's
        ``DeepSupervisionLoss``)."""
        if isinstance(logits, (list, tuple)):
            from monai.losses import DeepSupervisionLoss

            w = [0.5**i for i in range(len(logits))]
            ds = DeepSupervisionLoss(_TargetAsFloat(self._loss), weights=[v / sum(w) for v in w])
            return ds(list(logits), target[:, None].float())
        return self._loss(logits, target)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        ce = self.loss_fn(logits, target)
        if self.dice_fn is None:
            return ce
        return ce + self.dice_fn(logits, target[:, None])

    def on_train_epoch_start(self) -> None:
        self.epoch_lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.val_result = None  # set only in epochs that validate
        self.raw_result = None
        self.train_scores.reset()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.train_forward(x)
        loss = self.loss(out, y)
        logits = out[0] if isinstance(out, (list, tuple)) else out  # deep supervision: main
        with torch.no_grad():
            pred = (logits.detach() + self.logit_bias[None, :, None, None]).argmax(1)
            self.train_scores.update(y, pred, float(loss.detach()))
        self.log(
            "loss",
            loss.detach(),
            prog_bar=True,
            on_step=True,
            on_epoch=False,
            batch_size=x.shape[0],
            logger=False,
        )
        return loss

    def on_validation_epoch_start(self) -> None:
        self.val_scores.reset()
        self.raw_scores.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        if batch is None:  # a placeholder of a process with one image fewer (DDP)
            return
        x, y, i = batch
        x, y = x[None].to(self.device), y.to(self.device)
        self.val_scores.update(*self._score(self.net, x, y, i))
        raw = self.__dict__.get("raw_net")  # set by WarmupEMA while the average warms up
        if raw is not None:
            self.raw_scores.update(*self._score(raw, x, y, i))

    def _score(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, i: Any):
        """Score one validation image (x (1, C, H, W), y (H, W)) with ``net``:
        (:func:`~tomoseg.metrics.segmentation.score_image`'s result, loss)."""
        c = self.cfg
        logits = infer_logits(
            net,
            x,
            c.tile_size,
            c.tile_overlap,
            c.tile_batch,
            autocast_bf16=self.bf16,
        )
        loss = float(self.loss(logits, y[None]))
        logits = logits + self.logit_bias[None, :, None, None]  # the decision, not the loss
        pred = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
        truth = y.cpu().numpy().astype(np.int16)
        score = score_image(
            truth,
            pred,
            len(self.classes),
            c.tolerance,
            str(i),
            [self.coi],
            ignore_label=IGNORE_INDEX,
        )
        return score, loss

    def on_validation_epoch_end(self) -> None:
        """Reduce the validation states (across processes) and log the monitored value: the
        IoU of the weights the run delivers (the average, where weights are averaged)."""
        res = {k: v.numpy() for k, v in self.val_scores.compute().items()}
        self.val_result = res
        if self.__dict__.pop("raw_net", None) is not None:  # the raw weights were scored too
            self.raw_result = {k: v.numpy() for k, v in self.raw_scores.compute().items()}
        coi = self.classes[self.coi]
        self.log(f"val_iou_{coi}", float(res["iou"][self.coi]), logger=False, prog_bar=False)

    def configure_optimizers(self):
        c = self.cfg
        if c.optimizer == "sgd":
            opt = torch.optim.SGD(
                self.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
            )
        else:
            opt = torch.optim.AdamW(self.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        if c.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=c.epochs, eta_min=c.lr * 0.01
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        return opt

    def epoch_row(self) -> dict[str, Any]:
        """Metrics of the epoch just finished (train pooled over crops; val averaged over images)."""
        tr = {k: v.numpy() for k, v in self.train_scores.compute().items()}
        self.epoch_crops = int(tr["crops"])
        cm = tr["cm"]
        row: dict[str, Any] = {
            "epoch": self.current_epoch + 1,
            "lr": self.epoch_lr,
            "train_loss": float(tr["loss"]),
            "train_accuracy": accuracy_from_cm(cm),
        }
        for name, v in zip(self.classes, iou_from_cm(cm), strict=True):
            row[f"train_iou_{name}"] = float(v)
        val = self.val_result
        if val is not None and int(val["images"]) > 0:  # averaged over images, as evaluate does
            coi = self.classes[self.coi]
            row["val_loss"] = float(val["loss"])
            row["val_accuracy"] = float(val["accuracy"])
            for name, v in zip(self.classes, val["iou"], strict=True):
                row[f"val_iou_{name}"] = float(v)
            row[f"val_bf1_{coi}"] = float(val["bf1"][self.coi])
            row[f"val_pooled_iou_{coi}"] = float(val["pooled_iou"][self.coi])
        raw = self.raw_result
        if val is not None and raw is not None:  # the raw weights, beside their average
            row[f"val_raw_iou_{coi}"] = float(raw["iou"][self.coi])
            row[f"val_raw_bf1_{coi}"] = float(raw["bf1"][self.coi])
        if self.averaging_decay is not None:
            row["ema_decay"] = self.averaging_decay
        return row

    @property
    def train_crops(self) -> int:
        """Crops of the epoch just finished, all processes together (set by :meth:`epoch_row`)."""
        return self.epoch_crops

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tomoseg_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("tomoseg_history", []))
