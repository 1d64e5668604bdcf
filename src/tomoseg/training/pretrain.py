"""Self-supervised pretraining on unlabelled slices (``tomoseg pretrain``): masked image
modelling on the very network a run trains, so that ``train(init=PRE)`` starts from it.

Objective: masked image modelling for CNNs. Each training crop (drawn like training's, with its
flips and 90-degree turns) is cut into square patches of the network's total stride (16 px for
the default U-Net), a random 60 % of the patches (``mask_ratio``) is replaced by the mean
normalised intensity of the pretraining pixels, and the whole encoder-decoder is trained to
restore the original pixels: the loss is the mean squared error over the masked pixels only.
Sources: SparK (Tian et al., "Designing BERT for convolutional networks", ICLR 2023: masking
at the encoder's downsampling ratio, a 60 % ratio, an L2 loss on the masked region) and nnssl's
CNN masked autoencoder (Wald et al., "Revisiting MAE pre-training for 3D medical image
segmentation", CVPR 2025), which showed that a dense CNN with masked regions simply set to a
constant, no sparse convolutions, pretrains a U-Net well for segmentation. Why masking rather
than denoising: a denoising target can be met with local filtering learnt in the first layers,
whereas restoring a missing 16 px patch needs the context the deeper encoder levels see, which
is what a segmentation of objects larger than a patch needs; MAE-style objectives are also the
ones nnssl found best for CNN segmentation networks.

What is kept for ``train(init=PRE)``: every weight except the output head (the layers whose
shapes depend on the number of outputs, found by building the network twice on PyTorch's
``meta`` device: no network name is compared), which the fine-tune initialises afresh for its
classes; the normalisation fitted here (the encoder's features are tuned to it).

The output folder is a "run" without classes: ``config.yaml`` (only the network: model, width,
depth, context; the base configuration of ``train(init=PRE)``), ``run.json`` (``pretrained:
true``, the network, normalisation, intensity range, the pretraining settings, the source, the
finished epochs and ``complete``), ``metrics.csv`` (masked L2 per epoch), ``last.safetensors``
(weights and that record) and ``checkpoints/last.ckpt`` (written atomically every epoch, for
``resume``; a ``kill -9`` loses at most the unfinished epoch). Commands that segment refuse it
(it has no classes).

Not done here: ``torch.compile`` of the steps (train's ``compile`` option): pretraining runs
eager.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tomoseg._version import __version__
from tomoseg.config.pretrain import PretrainConfig, pretrain_config
from tomoseg.data.context import context_reader, in_channels
from tomoseg.data.crops import CropBox, extract_crop, sample_crops
from tomoseg.data.datamodule import EpochSampler, sample_seed
from tomoseg.data.intensity import IntensityRange, intensity_range
from tomoseg.data.normalization import Normalization, fit_normalization, normalize
from tomoseg.errors import TomosegError
from tomoseg.io.jobs import check_same_job
from tomoseg.io.labels import warn_label_like
from tomoseg.io.sources import SliceSource, open_source
from tomoseg.io.writers import atomic_write, write_text
from tomoseg.models.registry import build_model, get_architecture, network_hparams
from tomoseg.runtime.checkpoint import weights_metadata
from tomoseg.runtime.device import resolve_device, resolve_precision
from tomoseg.runtime.run_record import (
    RUN_FILE,
    read_run_record,
    update_run_record,
    write_run_record,
)
from tomoseg.training.checkpoint_io import RunCheckpointIO, RunModelCheckpoint
from tomoseg.training.recording import EpochProgress, RunCSVLogger, RunStatus
from tomoseg.utils.files import check_memory
from tomoseg.utils.format import plural
from tomoseg.utils.progress import Cancelled, CancelToken, ProgressCallback, job_progress

#: a pretraining source must hold at least this many crops' worth of pixels
MIN_CROPS = 16
#: what ``run.json`` and the weights' metadata say of a pretraining folder
OBJECTIVE = "masked image modelling (SparK / nnssl CNN MAE): L2 on masked patches"
#: the files whose presence means "this folder holds a run or a pretraining"
RESULTS = ("config.yaml", RUN_FILE, "metrics.csv", "last.safetensors")
#: what an overwrite removes of an earlier run or pretraining in the folder
_REPLACED = (*RESULTS, "best.safetensors", "decision.json", "curves.png", "checkpoints")
#: the settings a resumed pretraining may change (how long and where, not what is learnt)
RESUMABLE_CHANGES = ("epochs", "workers", "device", "devices", "num_nodes", "strategy")


def network_of(cfg: PretrainConfig) -> dict[str, Any]:
    """The network a pretraining trains (:func:`~tomoseg.models.registry.build_model`'s
    keyword arguments): the run's network with one output per input channel (at least 2, the
    registry's minimum; the extra output is unused)."""
    c = in_channels(cfg.context)
    return network_hparams(cfg.model, c, max(2, c), cfg.width, cfg.depth)


# ----------------------------------------------------------------------------- data


@dataclass
class UnlabelledSlices:
    """The slices a pretraining learns from.

    Attributes:
        images: normalised float32 slices, (H, W), or (2k + 1, H, W) with 2.5D context.
        indices: the stack's slices they are (0-based).
        norm: the percentile normalisation fitted on them.
        intensity: their dtypes and intensity range.
        fill: the value of masked pixels (the mean normalised intensity).
        describe: the source's record (``run.json``'s ``data``).
    """

    images: list[np.ndarray]
    indices: list[int]
    norm: Normalization
    intensity: IntensityRange
    fill: float
    describe: dict[str, Any]


def check_enough_pixels(src: SliceSource, cfg: PretrainConfig) -> None:
    """Refuse a source too small to pretrain on: slices smaller than a crop, or fewer pixels in
    all than :data:`MIN_CROPS` crops.

    Raises:
        TomosegError: one line saying how many pixels it holds and how many it needs.
    """
    h, w = src.shape
    s = cfg.crop_size
    if h < s or w < s:
        raise TomosegError(
            f"images: the slices of {src.where} are {h}x{w} px, smaller than a crop of "
            f"crop_size={s}: give a smaller crop size"
        )
    have = src.n * h * w
    need = MIN_CROPS * s * s
    if have < need:
        raise TomosegError(
            f"images: {src.where} holds {have} pixels ({plural(src.n, 'slice')} of {h}x{w}); "
            f"pretraining with crop_size={s} needs at least {need} ({MIN_CROPS} crops of "
            f"{s}x{s} px): give more slices or a smaller crop size"
        )


def check_mask_patch(cfg: PretrainConfig, patch: int) -> None:
    """Refuse a masked patch (``patch`` px: ``mask_patch``, or the network's stride where it
    is 0) not smaller than the crops: each crop would be one patch, masked whole, with nothing
    left to restore it from.

    Raises:
        TomosegError: one line naming both sizes.
    """
    if patch >= cfg.crop_size:
        given = (
            f"mask_patch={cfg.mask_patch}"
            if cfg.mask_patch
            else f"mask_patch=0 (the network's stride, {patch} px)"
        )
        raise TomosegError(
            f"{given} is not smaller than crop_size={cfg.crop_size}: each crop would be one "
            "masked patch with nothing left to restore it from; give a smaller mask patch or "
            "a larger crop size"
        )


def read_unlabelled(src: SliceSource, cfg: PretrainConfig) -> UnlabelledSlices:
    """Read (at most ``cfg.max_slices``, evenly spaced) slices of ``src`` and normalise them.

    Raises:
        TomosegError: too few pixels (:func:`check_enough_pixels`), too little memory, a
            slice that cannot be read.

    Warns:
        TomosegWarning: slices that look like label images
            (:func:`~tomoseg.io.labels.warn_label_like`).
    """
    check_enough_pixels(src, cfg)
    h, w = src.shape
    m = min(src.n, cfg.max_slices)
    idx = sorted({int(round(v)) for v in np.linspace(0, src.n - 1, m)})
    c = in_channels(cfg.context)
    check_memory(4.0 * len(idx) * c * h * w * 1.25, f"{plural(len(idx), 'slice')} of {h}x{w} px")
    raw: list[np.ndarray] = []
    with src.reader() as read:
        read_ctx = context_reader(read, src.n, cfg.context)
        raw = [np.asarray(read_ctx(i)) for i in idx]
    centres = [r[r.shape[0] // 2] if r.ndim == 3 else r for r in raw]
    warn_label_like(
        centres, f"images: the slices of {src.where}",
        "pretraining learns from grayscale intensities (give the raw slices)",
    )  # fmt: skip

    def finite(a: np.ndarray) -> np.ndarray:
        return a[np.isfinite(a)] if np.issubdtype(a.dtype, np.floating) else a

    norm = fit_normalization([finite(a) for a in centres], seed=cfg.seed)
    intensity = intensity_range(centres, norm)
    images = [normalize(r, norm) for r in raw]
    del raw, centres
    fill = float(np.mean([float(im.mean()) for im in images]))
    describe = json.loads(json.dumps(src.describe(), default=str))
    return UnlabelledSlices(images, idx, norm, intensity, fill, describe)


def _patch_mask(rng: np.random.Generator, h: int, w: int, patch: int, ratio: float) -> np.ndarray:
    """A (h, w) bool mask: a random ``ratio`` of the ``patch`` x ``patch`` cells set (at least
    one, at least one left unset where there are two or more)."""
    gh, gw = -(-h // patch), -(-w // patch)
    n = gh * gw
    k = min(max(1, round(ratio * n)), max(n - 1, 1))
    cells = np.zeros(n, bool)
    cells[rng.choice(n, k, replace=False)] = True
    grid = cells.reshape(gh, gw)
    return np.repeat(np.repeat(grid, patch, 0), patch, 1)[:h, :w]


class MaskedCropDataset(Dataset):
    """Crops of the unlabelled slices, flipped and turned like training's (p = 0.5 each), with
    a random share of their patches masked; all a pure function of (seed, epoch, index).

    Items: ``(x, y)``: ``x`` (C, S, S) float32 the masked crop; ``y`` (C + 1, S, S) float32 the
    original crop and, last, the mask (1 = masked).
    """

    def __init__(
        self, images: list[np.ndarray], boxes: list[CropBox], cfg: PretrainConfig, patch: int,
        fill: float,
    ) -> None:  # fmt: skip
        self.images, self.boxes, self.cfg = images, boxes, cfg
        self.patch, self.fill = patch, fill

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, tagged: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(int(tagged), len(self.boxes))
        rng = np.random.default_rng(sample_seed(self.cfg.seed, epoch, i))
        box = self.boxes[i]
        crop = extract_crop(self.images[box.image], box)
        crop = crop[None] if crop.ndim == 2 else crop
        if rng.random() < 0.5:
            crop = crop[..., ::-1]
        if rng.random() < 0.5:
            crop = np.rot90(crop, k=int(rng.integers(1, 4)), axes=(-2, -1))
        crop = np.ascontiguousarray(crop, dtype=np.float32)
        mask = _patch_mask(rng, crop.shape[-2], crop.shape[-1], self.patch, self.cfg.mask_ratio)
        x = np.where(mask[None], np.float32(self.fill), crop)
        y = np.concatenate([crop, mask[None].astype(np.float32)])
        return torch.from_numpy(x), torch.from_numpy(y)


class PretrainDataModule(L.LightningDataModule):
    """The masked crops of every epoch (each process its share under DDP, as training's)."""

    def __init__(self, data: UnlabelledSlices, cfg: PretrainConfig, patch: int) -> None:
        super().__init__()
        self.data, self.cfg, self.patch = data, cfg, patch
        shapes = [im.shape[-2:] for im in data.images]
        self.boxes = sample_crops(shapes, cfg.crop_size, cfg.crops, cfg.seed)

    def train_dataloader(self) -> DataLoader:
        t = self.trainer
        rank, world = (int(t.global_rank), int(t.world_size)) if t is not None else (0, 1)
        ds = MaskedCropDataset(self.data.images, self.boxes, self.cfg, self.patch, self.data.fill)
        return DataLoader(
            ds,
            batch_size=self.cfg.batch_size,
            sampler=EpochSampler(len(ds), self.cfg.seed, rank, world),
            num_workers=self.cfg.workers,
            persistent_workers=self.cfg.workers > 0,
        )


# ----------------------------------------------------------------------------- model


class MaskedImageModule(L.LightningModule):
    """The network and the masked L2 loss (mean squared error over the masked pixels of the
    input channels); the epoch's mean loss is reduced over processes (torchmetrics)."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        from torchmetrics.aggregation import MeanMetric

        self.save_hyperparameters()  # primitives only: checkpoints load with weights_only
        self.cfg = PretrainConfig.model_validate(config)
        self.net = build_model(**network_of(self.cfg))
        if self.cfg.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.mean_loss = MeanMetric()
        self.history: list[dict[str, Any]] = []
        self.epoch_lr = float("nan")
        self.epoch_crops = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The training steps' forward pass (what the time budget's probe times)."""
        return self.net(x)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Masked L2 of outputs (B, K, H, W) against ``y`` (B, C + 1, H, W): the C original
        channels and the mask; K >= C, the first C outputs are the reconstruction."""
        c = y.shape[1] - 1
        target, mask = y[:, :c], y[:, c:]
        err = (out[:, :c].float() - target) ** 2 * mask
        return err.sum() / (mask.sum() * c).clamp_min(1.0)

    def on_train_epoch_start(self) -> None:
        self.epoch_lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.mean_loss.reset()
        self.epoch_crops = 0

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = self.loss(self.train_forward(x), y)
        self.mean_loss.update(loss.detach(), weight=x.shape[0])
        self.epoch_crops += int(x.shape[0])
        return loss

    def configure_optimizers(self):
        c = self.cfg
        opt = torch.optim.AdamW(self.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.epochs, eta_min=c.lr * 0.01)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tomoseg_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("tomoseg_history", []))


class PretrainRecorder(L.Callback):
    """After every epoch: its row (``epoch``, ``lr``, ``train_loss`` = masked L2, timings) into
    the module's history and ``metrics.csv``."""

    def __init__(self) -> None:
        self.t0 = 0.0

    def on_train_start(self, trainer, pl: MaskedImageModule) -> None:
        for lg in trainer.loggers:
            if isinstance(lg, RunCSVLogger):
                lg.start_from(pl.history)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl: MaskedImageModule) -> None:
        seconds = time.perf_counter() - self.t0
        crops = pl.epoch_crops * trainer.world_size
        row = {
            "epoch": pl.current_epoch + 1,
            "lr": pl.epoch_lr,
            "train_loss": float(pl.mean_loss.compute()),
            "seconds": seconds,
            "crops_per_second": crops / max(seconds, 1e-9),
        }
        pl.history.append(row)
        for lg in trainer.loggers:
            lg.log_metrics(row, step=row["epoch"])


class PretrainExport(L.pytorch.callbacks.Checkpoint):
    """Exports ``last.safetensors`` (weights and the pretraining's record) after every epoch,
    once ``checkpoints/last.ckpt`` is written (list it after the ``ModelCheckpoint``); a
    resumed pretraining re-exports what a kill left unexported."""

    def __init__(self, run: Path, meta: dict) -> None:
        self.run, self.meta = Path(run), meta

    def on_fit_start(self, trainer, pl: MaskedImageModule) -> None:
        if trainer.is_global_zero and pl.history:
            self._export(pl, pl.history[-1])

    def on_train_epoch_end(self, trainer, pl: MaskedImageModule) -> None:
        if trainer.is_global_zero and pl.history:
            self._export(pl, pl.history[-1])

    def _export(self, pl: MaskedImageModule, row: dict) -> None:
        from safetensors.torch import save_file

        meta = dict(self.meta, epoch=row["epoch"], which="last", metrics=row)
        state = {k: v.detach().cpu().contiguous() for k, v in pl.net.state_dict().items()}
        atomic_write(
            self.run / "last.safetensors",
            lambda t: save_file(state, str(t), metadata=weights_metadata(meta)),
        )


class PretrainProgress(EpochProgress):
    """:class:`~tomoseg.training.recording.EpochProgress` (totals, cancel after any batch)
    reporting the masked L2 of each epoch."""

    def on_train_epoch_end(self, trainer, pl: MaskedImageModule) -> None:  # type: ignore[override]
        if self.job is None or not pl.history:
            return
        if trainer.is_global_zero:
            r = pl.history[-1]
            text = (
                f"epoch {r['epoch']}: masked L2 {r['train_loss']:.4f} ({r['seconds']:.1f} s, "
                f"{r['crops_per_second']:.1f} crops/s)"
            )
            try:
                self.job.advance(1, text, **r)
            except Cancelled:
                if trainer.world_size == 1:
                    raise
        if trainer.world_size > 1 and self._cancelled(trainer):
            raise Cancelled("pretrain cancelled")


# ----------------------------------------------------------------------------- entry point


def _held(out: Path) -> str | None:
    return next((n for n in RESULTS if (out / n).exists()), None)


def _check_folder(out: Path, cfg: PretrainConfig, resume: bool, overwrite: bool) -> dict | None:
    """Refuse to clobber a folder; on resume, check that it holds this pretraining and return
    its record."""
    if resume:
        record = read_run_record(out, missing_ok=True)
        if record is None or not record.get("pretrained"):
            raise TomosegError(f"resume=True: {out} holds no pretraining to resume")
        new = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in RESUMABLE_CHANGES}
        new.pop("time_budget", None)  # the recorded plan is kept (see _plan)
        check_same_job(
            out, RUN_FILE, new, what="a pretraining", part="config",
            remedy="resume with the same settings, or start over with overwrite=True",
        )  # fmt: skip
        return record
    held = _held(out)
    if held and not overwrite:
        raise TomosegError(
            f"out: {out} already holds a run ({held}); use resume=True to continue a "
            "pretraining or overwrite=True to replace it"
        )
    return None


def _clear(out: Path) -> None:
    """Remove what an earlier run or pretraining left in ``out`` (``overwrite``, once the new
    input has been read: a refused input never costs the earlier results)."""
    for name in _REPLACED:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def _source(images: Any, record: dict | None) -> SliceSource:
    """The stack to learn from: ``images``, or on resume the one the record names.

    Raises:
        TomosegError: none given and none recorded; another stack than the recorded one.
    """
    old = (record or {}).get("data") or {}
    if images is None:
        if not old.get("path"):
            raise TomosegError("images: give the slices to pretrain on")
        images = old["path"]
    src = open_source(images)
    if old:
        new = json.loads(json.dumps(src.describe(), default=str))
        keys = ("kind", "slices", "shape", "dtype")
        diff = next((k for k in keys if old.get(k) != new.get(k)), None)
        if diff is not None:
            raise TomosegError(
                f"images: {src.where} differs from the stack this pretraining learns from "
                f"({diff} {old.get(diff)!r} there, {new.get(diff)!r} now); resume with the "
                "same images, or start over with overwrite=True"
            )
    return src


def _plan(
    cfg: PretrainConfig, record: dict | None, dm: PretrainDataModule, device, precision: str
) -> tuple[PretrainConfig, dict | None]:
    """The epochs of a time-budgeted pretraining: the recorded plan on resume, else planned
    from a throughput probe (:mod:`tomoseg.training.budget`, no validation)."""
    from tomoseg.training.budget import budget_record, plan_epochs, probe_throughput

    old = (record or {}).get("time_budget")
    if old and old.get("plan", {}).get("epochs"):
        return cfg.model_copy(update={"epochs": int(old["plan"]["epochs"])}), old
    if cfg.time_budget is None:
        return cfg, None
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = MaskedImageModule(cfg.model_dump(mode="json"))
    probe = probe_throughput(module, dm, device, precision == "bf16-mixed", validate=False)
    plan = plan_epochs(cfg.time_budget, probe)
    return cfg.model_copy(update={"epochs": plan["epochs"]}), budget_record(probe, plan)


def pretrain(
    images: str | os.PathLike[str] | SliceSource | np.ndarray | None,
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    spawn: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **options: Any,
) -> Path:
    """Pretrain a network on unlabelled slices by masked image modelling (module docstring);
    write a folder that ``train(init=out)`` starts from.

    Args:
        images: any stack :func:`~tomoseg.io.sources.open_source` reads (a folder of slices, a
            multi-page TIFF, Zarr, HDF5, MRC, N5, ``file.h5:/dataset``, a (Z, Y, X) array);
            None with ``resume``: the stack recorded in ``out``.
        out: the output folder (``config.yaml``, ``run.json``, ``metrics.csv``,
            ``last.safetensors``, ``checkpoints/last.ckpt``).
        resume: continue an interrupted pretraining from ``checkpoints/last.ckpt`` (to the
            same weights as an uninterrupted one; a time budget keeps its recorded plan).
        overwrite: replace a run or pretraining in ``out``.
        spawn: several processes on this machine without a launcher are started with
            Lightning's ``ddp_spawn`` (as :func:`~tomoseg.training.trainer.train`).
        progress: receives :class:`~tomoseg.utils.progress.ProgressEvent` s (job
            ``pretrain``, unit ``epoch``), one ``advance`` per finished epoch with its row.
        cancel: a token checked after every batch: the pretraining stops, keeping the finished
            epochs, and :class:`~tomoseg.utils.progress.Cancelled` is raised.
        **options: :class:`PretrainConfig` fields (``model``, ``width``, ``depth``,
            ``context``, ``crop_size``, ``crops``, ``epochs`` or ``time_budget``,
            ``mask_ratio``, ``device``, ``devices``, ...).

    Returns:
        The output folder.

    Raises:
        TomosegError: bad options, an unreadable stack or one with too few pixels (the message
            says how many it needs), an output folder holding results without ``overwrite``, a
            resume of another pretraining or stack, a checkpoint that cannot be resumed from.
        Cancelled: ``cancel`` was set.
    """
    from tomoseg.training.trainer import (
        _strategy,
        check_devices,
        check_resume_checkpoint,
        fit,
        make_trainer,
        multi_process,
        quiet_lightning,
        remove_interrupted_writes,
        restored_determinism,
        run_folder_lock,
    )

    out = Path(out)
    recorded = read_run_record(out, missing_ok=True) if resume else None
    cfg = pretrain_config((recorded or {}).get("config"), **options)
    job = job_progress("pretrain", "epoch", cfg.epochs, progress, cancel)
    job.check()
    get_architecture(cfg.model)
    hp = network_of(cfg)
    patch = cfg.mask_patch or build_model(**hp).stride
    check_mask_patch(cfg, patch)
    if cfg.time_budget is not None and multi_process(cfg):  # type: ignore[arg-type]
        raise TomosegError(
            "time_budget plans the epochs from one process's throughput: with several "
            "devices or nodes give epochs instead"
        )
    quiet_lightning()
    device = resolve_device(cfg.device)
    check_devices(cfg, device)  # type: ignore[arg-type]
    strategy = _strategy(cfg, device, spawn)  # type: ignore[arg-type]
    precision = resolve_precision(cfg.precision, device)
    hardware = {"devices": cfg.devices, "num_nodes": cfg.num_nodes, "strategy": strategy}
    rank0 = make_trainer(device, precision, deterministic=None, **hardware).is_global_zero
    with run_folder_lock(out, rank0):
        if rank0:
            remove_interrupted_writes(out)
            record = _check_folder(out, cfg, resume, overwrite)
        else:
            record = read_run_record(out, missing_ok=True) if resume else None
        src = _source(images, record)
        data = read_unlabelled(src, cfg)
        if rank0 and overwrite and not resume:
            _clear(out)
        dm = PretrainDataModule(data, cfg, patch)
        cfg, budget = _plan(cfg, record, dm, device, precision)
        meta: dict[str, Any] = {
            "tomoseg_version": __version__,
            "pretrained": True,
            "objective": {"name": OBJECTIVE, "mask_patch": patch, "fill": data.fill},
            "model": hp,
            "normalization": data.norm.model_dump(),
            "intensity": data.intensity.model_dump(),
            "config": cfg.model_dump(mode="json"),
            "data": data.describe,
            "slices_used": len(data.indices),
            "precision": precision,
            "complete": False,
            "epochs_done": int((record or {}).get("epochs_done", 0)),
        }
        if budget is not None:
            meta["time_budget"] = budget
            job.message(
                f"time budget {cfg.time_budget:g} min: {plural(cfg.epochs, 'epoch')} planned "
                f"(~{budget['plan']['planned_minutes']:.1f} min)"
            )
        network = {k: getattr(cfg, k) for k in ("model", "width", "depth", "context")}
        ckpt = out / "checkpoints" / "last.ckpt"
        if rank0:
            import yaml

            out.mkdir(parents=True, exist_ok=True)
            write_text(out / "config.yaml", yaml.safe_dump(network, sort_keys=False))
            write_run_record(out, meta)
            job.message(
                f"pretraining {hp['name']} width {hp['width']} depth {hp['depth']} on "
                f"{plural(len(data.indices), 'slice')} of {src.where}: {cfg.mask_ratio:.0%} of "
                f"{patch} px patches masked"
            )
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        module = MaskedImageModule(cfg.model_dump(mode="json"))
        resume_from = ckpt if resume and ckpt.is_file() else None
        if resume_from is not None:
            check_resume_checkpoint(resume_from, module)
        last = RunModelCheckpoint(
            dirpath=out / "checkpoints", filename="last", monitor=None, save_top_k=1,
            save_on_train_epoch_end=True, enable_version_counter=False,
        )  # fmt: skip
        with restored_determinism():
            trainer = make_trainer(
                device, precision, **hardware,
                use_distributed_sampler=False, default_root_dir=out, max_epochs=cfg.epochs,
                enable_progress_bar=False, num_sanity_val_steps=0,
                logger=RunCSVLogger(out), enable_checkpointing=True,
                plugins=[RunCheckpointIO()],
                callbacks=[
                    PretrainRecorder(), last, PretrainExport(out, meta), RunStatus(out),
                    PretrainProgress(job),
                ],
            )  # fmt: skip
            fit(trainer, module, dm, resume_from, job)  # type: ignore[arg-type]
        if rank0:
            update_run_record(out, complete=True)
            job.end(f"pretrained weights written to {out}")
        return out


__all__ = ["MIN_CROPS", "PretrainConfig", "pretrain", "pretrain_config"]
