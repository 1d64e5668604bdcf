"""Training on N random SxS crops with inverse-frequency class weights, on Lightning.

* :class:`SegDataModule` reads the dataset, fits the intensity normalisation on the training
  images, counts classes over the whole training set, draws the crops once (seeded) and serves
  them with a fresh augmentation for every sample in every epoch. Validation images are served
  whole (full size).
* :class:`SegModule` holds the network and the loss; validation segments each full-size image
  by overlapping tiles (:func:`tomoseg.infer.infer_logits`) and scores it with
  :mod:`tomoseg.metrics`.
* :class:`RunRecorder` writes, after every epoch, ``metrics.csv``, ``curves.png``,
  ``last.safetensors`` / ``best.safetensors`` (weights + metadata, no pickle) and the resumable
  ``checkpoints/last.ckpt``, each atomically.

Randomness is a pure function of the config's seed: crop positions, the per-epoch sample order
(:class:`EpochSampler`) and each sample's augmentation (seeded by seed, epoch and index). So an
interrupted run resumed from its last checkpoint ends, on CPU, exactly like an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import io as _io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from tomoseg import __version__
from tomoseg.augment import augment, build_augmentation
from tomoseg.config import TrainConfig, config_to_yaml
from tomoseg.crops import CropBox, extract_crop, sample_crops
from tomoseg.data import Sample, class_counts, load_split
from tomoseg.errors import TomosegError
from tomoseg.infer import (
    RUN_FILE,
    decision_bias,
    infer_logits,
    resolve_device,
    resolve_precision,
    weights_metadata,
)
from tomoseg.io import (
    DatasetSpec,
    Normalization,
    atomic_write,
    fit_normalization,
    load_dataset,
    normalize,
    write_json,
    write_text,
)
from tomoseg.metrics import ScoreSummary, accuracy_from_cm, iou_from_cm, score_image
from tomoseg.models import build_model, load_encoder_weights

RUN_RESULTS = ("config.yaml", RUN_FILE, "metrics.csv", "last.safetensors")

# ----------------------------------------------------------------------------- class weights


def class_weights(
    counts: np.ndarray, mode: str = "inverse", names: list[str] | None = None
) -> np.ndarray:
    """Loss weights from per-class pixel counts over the whole training set.

    Args:
        counts: (K,) pixel counts.
        mode: ``inverse``: w_k = 1 / f_k (f_k = class frequency), the seed's method;
            ``median``: w_k = median(f) / f_k (median-frequency balancing); ``none``: all 1.
            ``inverse`` and ``median`` are scaled so that the weights average to 1 (this leaves
            the optimum unchanged and keeps the loss scale near the unweighted one).
        names: class names for the error message.

    Returns:
        (K,) float64 weights.

    Raises:
        TomosegError: a class with no pixel (its weight would be infinite).
    """
    counts = np.asarray(counts, np.float64)
    if mode == "none":
        return np.ones_like(counts)
    if (counts == 0).any():
        k = int(np.flatnonzero(counts == 0)[0])
        name = names[k] if names else str(k)
        raise TomosegError(
            f"class '{name}' has no pixel in the training set, so its inverse-frequency weight "
            "would be infinite (add examples, or use --class-weights none)"
        )
    freq = counts / counts.sum()
    w = (np.median(freq) / freq) if mode == "median" else 1.0 / freq
    return w / w.mean()


# ----------------------------------------------------------------------------- data


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample's augmentation: a pure function of (seed, epoch, index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class EpochSampler(Sampler[int]):
    """Shuffles the N crops anew each epoch (seeded by seed and epoch) and tags each index with
    the epoch (yields ``epoch * N + i``), so workers can seed augmentation without shared state.
    Lightning calls :meth:`set_epoch` before every epoch."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order is produced next."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        return iter((self.epoch * self.n + order).tolist())


class CropDataset(Dataset):
    """Crops cut on the fly from normalised full images, augmented per (epoch, index)."""

    def __init__(
        self,
        images: list[np.ndarray],
        masks: list[np.ndarray],
        boxes: list[CropBox],
        cfg: TrainConfig,
    ):
        self.images, self.masks, self.boxes, self.seed = images, masks, boxes, cfg.seed
        self.transform = build_augmentation(
            cfg.rotation, cfg.flip_prob, cfg.rotate_prob, cfg.intensity_jitter
        )

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, tagged: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(int(tagged), len(self.boxes))
        box = self.boxes[i]
        img = extract_crop(self.images[box.image], box)
        mask = extract_crop(self.masks[box.image], box)
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(img))[None],
            "mask": torch.from_numpy(mask.astype(np.int64))[None],
        }
        out = augment(sample, self.transform, sample_seed(self.seed, epoch, i))
        return out["image"].contiguous(), out["mask"][0].contiguous()


class FullImageDataset(Dataset):
    """Whole normalised images with their masks, for validation."""

    def __init__(self, samples: list[Sample], norm: Normalization):
        self.samples, self.norm = samples, norm

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        return (
            torch.from_numpy(normalize(s.image, self.norm))[None],
            torch.from_numpy(s.mask.astype(np.int64)),
            i,
        )


def _collate_one(batch):
    return batch[0]


@dataclass
class PreparedData:
    """What the data module computed from the training set (saved with the run)."""

    spec: DatasetSpec
    norm: Normalization
    counts: np.ndarray
    weights: np.ndarray
    boxes: list[CropBox]


class SegDataModule(L.LightningDataModule):
    """Training crops and full-size validation images of a dataset folder."""

    def __init__(self, data: Path, cfg: TrainConfig, need_val: bool = True):
        super().__init__()
        self.root, self.cfg, self.need_val = Path(data), cfg, need_val
        self.spec = load_dataset(self.root)
        train = load_split(self.root, "train", self.spec)
        self.val = load_split(self.root, "val", self.spec) if need_val else []
        k = len(self.spec.classes)
        counts = class_counts([s.mask for s in train], k)
        weights = class_weights(counts, cfg.class_weights, self.spec.classes)
        norm = fit_normalization([s.image for s in train], seed=cfg.seed)
        shapes = [s.image.shape for s in train]
        size = cfg.crop_size or max(max(s) for s in shapes)
        masks = [s.mask for s in train]
        boxes = sample_crops(
            shapes, size, cfg.crops, cfg.seed, cfg.focus_fraction, masks, self.spec.coi_index
        )
        self.prepared = PreparedData(self.spec, norm, counts, weights, boxes)
        self.train_images = [normalize(s.image, norm) for s in train]
        self.train_masks = masks

    def train_dataloader(self) -> DataLoader:
        ds = CropDataset(self.train_images, self.train_masks, self.prepared.boxes, self.cfg)
        shapes = {(b.h, b.w) for b in self.prepared.boxes}
        (h, w), *others = shapes
        # whole images of several sizes, or non-square crops that a 90-degree turn reshapes
        square = not others and (h == w or self.cfg.rotation == "none")
        bs = self.cfg.batch_size if square else 1
        return DataLoader(
            ds,
            batch_size=bs,
            sampler=EpochSampler(len(ds), self.cfg.seed),
            num_workers=self.cfg.workers,
            persistent_workers=self.cfg.workers > 0,
            drop_last=False,
        )

    def val_dataloader(self) -> DataLoader:
        ds = FullImageDataset(self.val, self.prepared.norm)
        return DataLoader(ds, batch_size=1, collate_fn=_collate_one, num_workers=0)


# ----------------------------------------------------------------------------- model


class SegModule(L.LightningModule):
    """Network + weighted loss + per-epoch metrics (train: pooled over crops; val: per image)."""

    def __init__(
        self, config: dict, classes: list[str], class_of_interest: str, weights: list[float]
    ):
        super().__init__()
        self.save_hyperparameters()  # primitives only, so checkpoints load with weights_only=True
        self.cfg = TrainConfig.model_validate(config)
        self.classes, self.coi = list(classes), classes.index(class_of_interest)
        k = len(classes)
        self.net = build_model(
            self.cfg.model, 1, k, self.cfg.width, self.cfg.depth if self.cfg.model == "unet" else 5
        )
        if self.cfg.encoder_weights is not None:
            load_encoder_weights(self.net, self.cfg.encoder_weights)
        if self.cfg.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.register_buffer("class_w", torch.tensor(weights, dtype=torch.float32))
        bias = decision_bias(weights, self.cfg.decision)
        self.register_buffer("logit_bias", torch.zeros(k) if bias is None else bias)
        if self.cfg.loss == "dice_ce":
            from monai.losses import DiceCELoss

            self.loss_fn: nn.Module = DiceCELoss(
                to_onehot_y=True, softmax=True, weight=self.class_w
            )
        else:
            self.loss_fn = nn.CrossEntropyLoss(weight=self.class_w)
        self.train_cm = torch.zeros(k, k, dtype=torch.long)
        self.train_loss_sum, self.train_n = 0.0, 0
        self.val_scores: list = []
        self.val_loss_sum = 0.0
        self.history: list[dict[str, Any]] = []
        self.epoch_lr = float("nan")
        self.bf16 = False  # set by train() from the resolved precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted loss of logits (B, K, H, W) against class ids (B, H, W)."""
        if self.cfg.loss == "dice_ce":
            return self.loss_fn(logits.float(), target[:, None])
        return self.loss_fn(logits.float(), target)

    def on_train_epoch_start(self) -> None:
        self.epoch_lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.val_scores = []  # filled only in epochs that validate
        self.train_cm.zero_()
        self.train_loss_sum, self.train_n = 0.0, 0

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self(x)
        loss = self.loss(logits, y)
        with torch.no_grad():
            k = len(self.classes)
            pred = (logits.detach() + self.logit_bias[None, :, None, None]).argmax(1)
            self.train_cm += torch.bincount(
                (y * k + pred).flatten().cpu(), minlength=k * k
            ).reshape(k, k)
            self.train_loss_sum += float(loss.detach()) * x.shape[0]
            self.train_n += x.shape[0]
        self.log(
            "loss",
            loss.detach(),
            prog_bar=True,
            on_step=True,
            on_epoch=False,
            batch_size=x.shape[0],
        )
        return loss

    def on_validation_epoch_start(self) -> None:
        self.val_scores, self.val_loss_sum = [], 0.0

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y, i = batch
        x, y = x[None].to(self.device), y.to(self.device)
        c = self.cfg
        logits = infer_logits(
            self.net,
            x,
            c.tile_size,
            c.tile_overlap,
            c.tile_batch,
            autocast_bf16=self.bf16,
        )
        self.val_loss_sum += float(self.loss(logits, y[None]))
        logits = logits + self.logit_bias[None, :, None, None]  # the decision, not the loss
        pred = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
        truth = y.cpu().numpy().astype(np.uint8)
        self.val_scores.append(
            score_image(truth, pred, len(self.classes), c.tolerance, str(i), [self.coi])
        )

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
        cm = self.train_cm.numpy()
        row: dict[str, Any] = {
            "epoch": self.current_epoch + 1,
            "lr": self.epoch_lr,
            "train_loss": self.train_loss_sum / max(self.train_n, 1),
            "train_accuracy": accuracy_from_cm(cm),
        }
        for name, v in zip(self.classes, iou_from_cm(cm), strict=True):
            row[f"train_iou_{name}"] = float(v)
        if self.val_scores:  # averaged over images, as tomoseg evaluate does
            coi = self.classes[self.coi]
            val = ScoreSummary(self.classes, coi, self.cfg.tolerance, self.val_scores)
            row["val_loss"] = self.val_loss_sum / len(self.val_scores)
            row["val_accuracy"] = val.mean_accuracy
            for name, v in zip(self.classes, val.mean_iou, strict=True):
                row[f"val_iou_{name}"] = float(v)
            row[f"val_bf1_{coi}"] = float(val.mean_bf1[self.coi])
        return row

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tomoseg_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("tomoseg_history", []))


# ----------------------------------------------------------------------------- recording


def history_csv(history: list[dict[str, Any]]) -> str:
    """CSV text of the per-epoch rows (columns: union of keys, in first-seen order)."""
    cols: list[str] = []
    for r in history:
        cols += [k for k in r if k not in cols]
    buf = _io.StringIO()
    w = csv.DictWriter(buf, cols, lineterminator="\n")
    w.writeheader()
    for r in history:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return buf.getvalue()


def plot_curves(history: list[dict[str, Any]], path: Path, coi: str) -> None:
    """Draw loss, accuracy, IoU of the class of interest and BF1 against epoch (train and val)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    panels = [
        ("loss", "train_loss", "val_loss"),
        ("global accuracy", "train_accuracy", "val_accuracy"),
        (f"IoU {coi}", f"train_iou_{coi}", f"val_iou_{coi}"),
        (f"BF1 {coi} (val, full images)", None, f"val_bf1_{coi}"),
        ("seconds per epoch", "seconds", None),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (title, tr, va) in zip(axes, panels, strict=True):
        for key, label in ((tr, "train"), (va, "val")):
            if key and any(key in r for r in history):
                ax.plot(ep, [r.get(key, np.nan) for r in history], marker="o", ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda t: fig.savefig(t, dpi=90, format="png"))
    plt.close(fig)


class RunRecorder(L.Callback):
    """After every epoch: metrics.csv, curves.png, last/best weights and the resumable checkpoint."""

    def __init__(self, run: Path, meta: dict, console=None):
        self.run, self.meta, self.console = run, meta, console
        self.t0 = 0.0
        self.t_val: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.t0 = time.perf_counter()
        self.t_val = None

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.training or self.t_val is None:
            self.t_val = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl: SegModule) -> None:
        row = pl.epoch_row()
        now = time.perf_counter()
        row["seconds"] = now - self.t0
        row["train_seconds"] = (self.t_val or now) - self.t0
        row["crops_per_second"] = pl.train_n / max(row["train_seconds"], 1e-9)
        pl.history.append(row)
        if trainer.is_global_zero:
            self._export(pl, "last", row)
            key = f"val_iou_{pl.classes[pl.coi]}"
            best = max(
                (r.get(key, -1.0) for r in pl.history[:-1] if not math.isnan(r.get(key, -1.0))),
                default=-1.0,
            )
            val = row.get(key, float("nan"))
            if not (self.run / "best.safetensors").exists() or (not math.isnan(val) and val > best):
                self._export(pl, "best", row)
            write_text(self.run / "metrics.csv", history_csv(pl.history))
            plot_curves(pl.history, self.run / "curves.png", pl.classes[pl.coi])
            if self.console is not None:
                self.console.print(_row_text(row, pl.classes[pl.coi]))
        ckpt = self.run / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(exist_ok=True)
        tmp = ckpt.with_name(".last.ckpt.tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, ckpt)

    def _export(self, pl: SegModule, which: str, row: dict) -> None:
        from safetensors.torch import save_file

        meta = dict(self.meta, epoch=row["epoch"], which=which, metrics=row)
        state = {k: v.detach().cpu().contiguous() for k, v in pl.net.state_dict().items()}
        atomic_write(
            self.run / f"{which}.safetensors",
            lambda t: save_file(state, str(t), metadata=weights_metadata(meta)),
        )


def _row_text(row: dict, coi: str) -> str:
    def f(key: str) -> str:
        v = row.get(key)
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    return (
        f"epoch {row['epoch']}: loss {f('train_loss')}/{f('val_loss')} "
        f"acc {f('train_accuracy')}/{f('val_accuracy')} IoU {coi} {f(f'train_iou_{coi}')}/{f(f'val_iou_{coi}')} "
        f"BF1 {f(f'val_bf1_{coi}')} ({row['seconds']:.1f} s, {row['crops_per_second']:.1f} crops/s)"
    )


# ----------------------------------------------------------------------------- entry point


def _check_run_folder(run: Path, cfg: TrainConfig, resume: bool, overwrite: bool) -> Path | None:
    """Refuse to clobber a run; on resume, check the config and return the checkpoint."""
    import yaml

    held = [n for n in RUN_RESULTS if (run / n).exists()]
    ckpt = run / "checkpoints" / "last.ckpt"
    if resume:
        if not (run / "config.yaml").is_file():
            raise TomosegError(f"--resume: {run} holds no run to resume (no config.yaml)")
        old = yaml.safe_load((run / "config.yaml").read_text()) or {}
        new = cfg.model_dump(mode="json")
        diff = [
            k
            for k in new
            if k not in ("epochs", "max_minutes", "workers", "device") and old.get(k) != new[k]
        ]
        if diff:
            k = diff[0]
            raise TomosegError(
                f"--resume with a changed config: {k} was {old.get(k)!r}, now {new[k]!r}"
            )
        return ckpt if ckpt.is_file() else None
    if held and not overwrite:
        raise TomosegError(
            f"run folder {run} already holds a run ({held[0]}); use --resume to continue it or --overwrite to replace it"
        )
    if overwrite and ckpt.exists():
        ckpt.unlink()
    return None


def quiet_lightning() -> None:
    """Silence Lightning's start-up chatter (GPU/TPU lines, tips); warnings and errors remain."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*weights_only.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
    os.environ.setdefault("LITLOGGER_TIP", "0")


@contextlib.contextmanager
def restored_determinism():
    """Lightning's ``deterministic`` flag sets torch's process-wide deterministic mode and leaves
    it set; restore the caller's setting afterwards so training has no lasting side effect."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def make_trainer(device: torch.device, precision: str, **kwargs: Any) -> L.Trainer:
    """A Lightning Trainer on one device with tomoseg's own logging and checkpointing (so
    Lightning's are off), plus ``kwargs``."""
    return L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        # "warn": SegNet's max-unpooling has no certified-deterministic kernel (it is in
        # practice on CPU: each output gets at most one input), so warn instead of failing.
        deterministic="warn" if device.type == "cpu" else False,
        **kwargs,
    )


def train(
    data: Path,
    run: Path,
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    console=None,
    progress: bool = True,
) -> Path:
    """``tomoseg train``: train a network and leave a complete run folder.

    Args:
        data: dataset folder (needs ``train`` and ``val`` splits).
        run: run folder.
        cfg: validated configuration.
        resume: continue an interrupted run from ``checkpoints/last.ckpt``.
        overwrite: replace an existing run.
        console: rich console for per-epoch lines (None = silent).
        progress: show Lightning's progress bar.

    Returns:
        The run folder.
    """
    run = Path(run)
    quiet_lightning()
    device = resolve_device(cfg.device)
    ckpt = _check_run_folder(run, cfg, resume, overwrite)
    dm = SegDataModule(data, cfg)
    prep = dm.prepared
    classes, coi = prep.spec.classes, prep.spec.class_of_interest
    run.mkdir(parents=True, exist_ok=True)
    write_text(run / "config.yaml", config_to_yaml(cfg))
    meta = {
        "tomoseg_version": __version__,
        "model": {
            "name": cfg.model,
            "in_channels": 1,
            "num_classes": len(classes),
            "width": cfg.width,
            "depth": cfg.depth if cfg.model == "unet" else 5,
        },
        "classes": classes,
        "class_of_interest": coi,
        "normalization": prep.norm.model_dump(),
        "class_counts": prep.counts.tolist(),
        "class_weights": prep.weights.tolist(),
        "config": cfg.model_dump(mode="json"),
        "data": str(Path(data).resolve()),
    }
    precision = resolve_precision(cfg.precision, device)
    meta["precision"] = precision
    write_json(run / RUN_FILE, meta)
    if console is not None:
        w = ", ".join(f"{n} {v:.3g}" for n, v in zip(classes, prep.weights, strict=True))
        console.print(f"class weights ({cfg.class_weights}): {w}")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = SegModule(cfg.model_dump(mode="json"), classes, coi, prep.weights.tolist())
    module.bf16 = precision == "bf16-mixed"
    with restored_determinism():
        trainer = make_trainer(
            device,
            precision,
            max_epochs=cfg.epochs,
            max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
            enable_progress_bar=progress,
            num_sanity_val_steps=0,
            check_val_every_n_epoch=cfg.val_every,
            callbacks=[RunRecorder(run, meta, console)],
        )
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True if ckpt else None)
    return run


def lr_range_test(
    data: Path,
    out: Path,
    cfg: TrainConfig,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    steps: int = 60,
) -> float:
    """Learning-rate range test (Lightning's ``Tuner.lr_find``): the loss of a short run whose
    learning rate grows exponentially from ``min_lr`` to ``max_lr``.

    Writes ``lr_find.csv`` and ``lr_find.png`` (with the suggested rate marked) into ``out``.

    Returns:
        The suggested learning rate (steepest descent of the smoothed loss).
    """
    from lightning.pytorch.tuner import Tuner

    if not 0 < min_lr < max_lr:
        raise TomosegError(f"need 0 < --min-lr < --max-lr, got {min_lr}, {max_lr}")
    if steps < 5:
        raise TomosegError(f"--steps must be at least 5, got {steps}")
    quiet_lightning()
    device = resolve_device(cfg.device)
    dm = SegDataModule(data, cfg, need_val=False)
    spec = dm.prepared.spec
    L.seed_everything(cfg.seed, verbose=False)
    module = SegModule(
        cfg.model_dump(mode="json"),
        spec.classes,
        spec.class_of_interest,
        dm.prepared.weights.tolist(),
    )
    with restored_determinism():
        trainer = make_trainer(
            device,
            resolve_precision(cfg.precision, device),
            enable_progress_bar=False,
            limit_val_batches=0,
            default_root_dir=str(out),
        )
        finder = Tuner(trainer).lr_find(
            module,
            datamodule=dm,
            min_lr=min_lr,
            max_lr=max_lr,
            num_training=steps,
            update_attr=False,
        )
    if finder is None:
        raise TomosegError("the learning-rate range test produced no result")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = finder.results
    write_text(
        out / "lr_find.csv",
        "lr,loss\n"
        + "".join(f"{a!r},{b!r}\n" for a, b in zip(res["lr"], res["loss"], strict=True)),
    )
    suggestion = finder.suggestion() or float("nan")
    fig = finder.plot(suggest=True)
    fig.axes[0].set_title(f"learning-rate range test (suggested {suggestion:.2e})")
    atomic_write(out / "lr_find.png", lambda t: fig.savefig(t, dpi=90, format="png"))
    return float(suggestion)
