"""Per-epoch records of a run, on Lightning's parts: a logger for metrics.csv, ModelCheckpoint
for the resumable ``.ckpt`` files, a callback exporting ``best``/``last.safetensors``, curves.png
(drawn by :func:`tomoseg.reporting.figures.plot_curves`)."""

from __future__ import annotations

import csv
import io as _io
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from tomoseg.io.writers import atomic_write, write_text
from tomoseg.reporting.figures import plot_curves
from tomoseg.runtime.checkpoint import weights_file_metadata, weights_metadata
from tomoseg.runtime.run_record import update_run_record
from tomoseg.training.checkpoint_io import RunModelCheckpoint
from tomoseg.training.module import SegModule
from tomoseg.utils.format import cell, fmt
from tomoseg.utils.progress import Cancelled, JobProgress

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
        w.writerow({k: cell(v) for k, v in r.items()})
    return buf.getvalue()


class RunCSVLogger(Logger):
    """Lightning logger writing one row per epoch to ``<run>/metrics.csv``, atomically.

    :class:`RunRecorder` logs each epoch's row (``epoch`` is 1-based); rows logged again for an
    epoch replace it and the rows after it (a resumed run recomputes its unfinished epoch).
    Columns: the union of the rows' keys in first-seen order (see :func:`history_csv`).
    """

    def __init__(self, run: Path) -> None:
        super().__init__()
        self.run = Path(run)
        self.rows: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return "tomoseg"

    @property
    def version(self) -> None:
        return None  # one run per folder (and no "v_num" in the progress bar)

    @property
    def root_dir(self) -> str:
        return str(self.run)

    @property
    def log_dir(self) -> str:
        return str(self.run)

    def start_from(self, history: list[dict[str, Any]]) -> None:
        """Continue after the rows of a restored run (resume)."""
        self.rows = [dict(r) for r in history]

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters are in ``config.yaml`` and ``run.json``: nothing to do."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Add (or replace) the row of ``metrics["epoch"]`` and rewrite ``metrics.csv``."""
        row = dict(metrics)
        epoch = int(row.get("epoch", step if step is not None else len(self.rows) + 1))
        row["epoch"] = epoch
        self.rows = [r for r in self.rows if int(r["epoch"]) < epoch] + [row]
        write_text(self.run / "metrics.csv", history_csv(self.rows))


class RunRecorder(L.Callback):
    """After every epoch: the epoch's row (metrics and timings) into the module's history and
    the logger (``metrics.csv``) and ``curves.png`` (a drawing failure only warns). Weights and
    checkpoints are :class:`WeightsExport`'s and ``ModelCheckpoint``'s; the report of the epoch
    is :class:`EpochProgress`'s."""

    def __init__(self, run: Path):
        self.run = run
        self.t0 = 0.0
        self.t_val: float | None = None
        self.plot_warned = False

    def on_train_start(self, trainer, pl: SegModule) -> None:
        for lg in trainer.loggers:
            if isinstance(lg, RunCSVLogger):
                lg.start_from(pl.history)  # the rows of a resumed run's finished epochs

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
        row["crops_per_second"] = pl.train_crops / max(row["train_seconds"], 1e-9)
        pl.history.append(row)
        for lg in trainer.loggers:
            lg.log_metrics(row, step=row["epoch"])
        if trainer.is_global_zero:
            self._plot(pl)

    def _plot(self, pl: SegModule) -> None:
        """curves.png is optional: a failure to draw it warns once and never stops training."""
        try:
            plot_curves(pl.history, self.run / "curves.png", pl.classes[pl.coi])
        except Exception as exc:  # noqa: BLE001 - any plotting failure must not cost the run
            if not self.plot_warned:
                self.plot_warned = True
                msg = (
                    f"warning: curves.png not drawn ({type(exc).__name__}: {exc}); training goes on"
                )
                warnings.warn(msg, RuntimeWarning, stacklevel=1)


class EpochProgress(Checkpoint):
    """Reports every finished epoch to the run's :class:`~tomoseg.utils.progress.JobProgress`
    and stops training when its cancel token is set.

    * At the start of fitting: the planned epochs (``max_epochs``) as the total, the epochs a
      resumed run finished before as done.
    * At the end of every epoch, once ``ModelCheckpoint`` saved ``last.ckpt`` and
      :class:`WeightsExport` exported the weights (a ``Checkpoint`` runs after them; list it
      last): one ``advance`` with the epoch's row as metrics and a one-line summary as message.
      A token set by then stops training here, the epoch safely written.
    * After every training batch: a set token raises :class:`~tomoseg.utils.progress.Cancelled`,
      which ends ``Trainer.fit`` at once; the unfinished epoch leaves no row and no checkpoint,
      so a resumed run continues from the last finished epoch exactly as after a kill.

    Several processes: rank 0 reports; every rank checks the token, and any rank's set token
    stops all of them (one reduction per batch, only when a token is given). The reporter is
    not sent to processes ``ddp_spawn`` starts (a callback or an event does not cross them).
    """

    def __init__(self, job: JobProgress):
        self.job = job

    def __getstate__(self) -> dict[str, Any]:
        return {"job": None}  # a spawned process gets no reporter (see the class docstring)

    def _cancelled(self, trainer) -> bool:
        if self.job is None or self.job.cancel is None:
            return False
        stop = self.job.cancelled
        if trainer.world_size > 1:
            stop = bool(trainer.strategy.reduce_boolean_decision(stop, all=False))
        return stop

    def on_train_start(self, trainer, pl: SegModule) -> None:
        if self.job is None:
            return
        self.job.set_total(int(trainer.max_epochs or 0), done=len(pl.history))
        if trainer.is_global_zero:
            try:
                self.job.start()
            except Cancelled:
                if trainer.world_size == 1:
                    raise
        if trainer.world_size > 1 and self._cancelled(trainer):
            raise Cancelled("train cancelled")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.job is None or self.job.cancel is None:
            return
        if trainer.world_size == 1:
            self.job.check()  # raises Cancelled once the token is set
        elif self._cancelled(trainer):
            raise Cancelled("train cancelled")

    def on_train_epoch_end(self, trainer, pl: SegModule) -> None:
        if self.job is None or not pl.history:
            return
        if trainer.is_global_zero:
            row = pl.history[-1]
            try:
                self.job.advance(1, _row_text(row, pl.classes[pl.coi]), **row)
            except Cancelled:
                if trainer.world_size == 1:
                    raise
        if trainer.world_size > 1 and self._cancelled(trainer):
            raise Cancelled("train cancelled")


def checkpoint_callbacks(run: Path, monitor: str) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """Lightning's ``ModelCheckpoint`` pair of a run, both saved at the end of each training
    epoch: ``checkpoints/best-epoch=E.ckpt`` (highest ``monitor``, the validation IoU of the
    class of interest; one kept) and ``checkpoints/last.ckpt`` (every epoch, for ``--resume``;
    saved after the best one, so it records the best one's state). Their state names the
    checkpoints relative to the folder
    (:class:`~tomoseg.training.checkpoint_io.RunModelCheckpoint`).

    Returns:
        ``(best, last)``.
    """
    common = {
        "dirpath": Path(run) / "checkpoints",
        "save_top_k": 1,
        "save_on_train_epoch_end": True,
        "enable_version_counter": False,
        "auto_insert_metric_name": True,
    }
    best = RunModelCheckpoint(filename="best-{epoch}", monitor=monitor, mode="max", **common)
    last = RunModelCheckpoint(filename="last", monitor=None, **common)
    return best, last


class WeightsExport(Checkpoint):
    """Exports ``last.safetensors`` every epoch, and ``best.safetensors`` whenever
    ``ModelCheckpoint`` saved a new best (weights only, no pickle, with the run's metadata).

    A :class:`~lightning.pytorch.callbacks.Checkpoint`, so Lightning runs it after
    ``ModelCheckpoint`` (list it after). When a kill falls between a checkpoint and its export,
    the resumed run re-exports what is missing before training on.
    """

    def __init__(self, run: Path, meta: dict, ckpt: ModelCheckpoint):
        self.run, self.meta, self.ckpt = Path(run), meta, ckpt
        self.best_before = ""

    def on_fit_start(self, trainer, pl: SegModule) -> None:
        if not trainer.is_global_zero or not pl.history:
            return
        row = pl.history[-1]  # restored from last.ckpt: its weights are the module's now
        if _stored(self.run / "last.safetensors").get("epoch") != row["epoch"]:
            self._export(net_state(trainer, pl), "last", row)
        best = self.ckpt.best_model_path
        if best and Path(best).is_file():
            if _stored(self.run / "best.safetensors").get("checkpoint") != Path(best).name:
                ck = torch.load(best, map_location="cpu", weights_only=True)
                state = {k[4:]: v for k, v in ck["state_dict"].items() if k.startswith("net.")}
                self._export(state, "best", ck["tomoseg_history"][-1], Path(best).name)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.best_before = self.ckpt.best_model_path

    def on_train_epoch_end(self, trainer, pl: SegModule) -> None:
        if not trainer.is_global_zero or not pl.history:
            return
        row = pl.history[-1]
        best = self.ckpt.best_model_path
        state = net_state(trainer, pl)
        if best and best != self.best_before:
            self._export(state, "best", row, Path(best).name)
        self._export(state, "last", row)

    def _export(self, state: dict, which: str, row: dict, checkpoint: str | None = None) -> None:
        from safetensors.torch import save_file

        meta = dict(self.meta, epoch=row["epoch"], which=which, metrics=row)
        if checkpoint:
            meta["checkpoint"] = checkpoint
        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        atomic_write(
            self.run / f"{which}.safetensors",
            lambda t: save_file(state, str(t), metadata=weights_metadata(meta)),
        )


class RunStatus(Checkpoint):
    """Records in ``run.json`` how many epochs are finished (``epochs_done``), once the epoch's
    checkpoint and weights are written (a ``Checkpoint``: Lightning runs it after
    ``ModelCheckpoint``; list it after :class:`WeightsExport`). Rank 0 writes."""

    def __init__(self, run: Path):
        self.run = Path(run)

    def on_train_epoch_end(self, trainer, pl: SegModule) -> None:
        if trainer.is_global_zero and pl.history:
            update_run_record(self.run, epochs_done=int(pl.history[-1]["epoch"]))


def net_state(trainer, pl: SegModule) -> dict:
    """The network's weights to export: the averaged ones when the run averages its weights
    (``ema_decay``: Lightning's ``WeightAveraging``, whose average validation and the ``.ckpt``
    files' ``state_dict`` hold too), else the module's."""
    from lightning.pytorch.callbacks import WeightAveraging

    for cb in trainer.callbacks:
        avg = getattr(cb, "_average_model", None) if isinstance(cb, WeightAveraging) else None
        if avg is not None:
            return avg.module.net.state_dict()
    return pl.net.state_dict()


def _stored(path: Path) -> dict:
    """The tomoseg metadata of a safetensors file ({} if absent or unreadable)."""
    try:
        meta = weights_file_metadata(path)
    except Exception:  # noqa: BLE001 - missing or broken: re-export
        return {}
    return meta if isinstance(meta, dict) else {}


def _row_text(row: dict, coi: str) -> str:
    def f(key: str) -> str:
        return fmt(row.get(key), pct=False, digits=3)

    return (
        f"epoch {row['epoch']}: loss {f('train_loss')}/{f('val_loss')} "
        f"acc {f('train_accuracy')}/{f('val_accuracy')} IoU {coi} {f(f'train_iou_{coi}')}/{f(f'val_iou_{coi}')} "
        f"BF1 {f(f'val_bf1_{coi}')} ({row['seconds']:.1f} s, {row['crops_per_second']:.1f} crops/s)"
    )
