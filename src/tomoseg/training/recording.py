"""Per-epoch records of a run: metrics.csv, curves.png, weights, the resumable checkpoint."""

from __future__ import annotations

import csv
import io as _io
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from tomoseg.io.writers import atomic_write, write_text
from tomoseg.runtime.checkpoint import weights_metadata
from tomoseg.training.module import SegModule

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
