"""Learning-rate range test (Lightning's Tuner.lr_find)."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from tomoseg.config.schema import TrainConfig
from tomoseg.data.datamodule import SegDataModule
from tomoseg.data.sources import DataSource
from tomoseg.errors import TomosegError
from tomoseg.io.writers import atomic_write, write_text
from tomoseg.runtime.device import resolve_device, resolve_precision
from tomoseg.training.module import SegModule
from tomoseg.training.trainer import make_trainer, quiet_lightning, restored_determinism


def lr_range_test(
    data: Path | DataSource,
    out: Path,
    cfg: TrainConfig,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    steps: int = 60,
) -> float:
    """Learning-rate range test (Lightning's ``Tuner.lr_find``): the loss of a short run whose
    learning rate grows exponentially from ``min_lr`` to ``max_lr``.

    ``data``: a dataset folder, or a :class:`~tomoseg.data.sources.DataSource` (images with
    their masks). Writes ``lr_find.csv`` and ``lr_find.png`` (with the suggested rate marked) into ``out``.

    Returns:
        The suggested learning rate (steepest descent of the smoothed loss).
    """
    from lightning.pytorch.tuner import Tuner

    if not 0 < min_lr < max_lr:
        raise TomosegError(f"min_lr={min_lr}, max_lr={max_lr}: need 0 < min_lr < max_lr")
    if steps < 5:
        raise TomosegError(f"steps={steps}: must be at least 5")
    quiet_lightning()
    device = resolve_device(cfg.device)
    dm = SegDataModule(data, cfg, need_val=False)
    dm.setup("fit")
    assert dm.prepared is not None
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
