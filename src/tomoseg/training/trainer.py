"""``tomoseg train``: the run folder, the Lightning Trainer, the entry point."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

from tomoseg import __version__
from tomoseg.config.schema import TrainConfig, config_to_yaml
from tomoseg.data.datamodule import SegDataModule
from tomoseg.data.sources import DataSource
from tomoseg.errors import TomosegError
from tomoseg.io.writers import write_json, write_text
from tomoseg.runtime.checkpoint import RUN_FILE
from tomoseg.runtime.device import resolve_device, resolve_precision
from tomoseg.training.module import DICE_IGNORE_MESSAGE, SegModule
from tomoseg.training.recording import (
    RunCSVLogger,
    RunRecorder,
    WeightsExport,
    checkpoint_callbacks,
)

RUN_RESULTS = ("config.yaml", RUN_FILE, "metrics.csv", "last.safetensors")

# ----------------------------------------------------------------------------- entry point


def _check_run_folder(run: Path, cfg: TrainConfig, resume: bool, overwrite: bool) -> Path | None:
    """Refuse to clobber a run; on resume, check the config and return the checkpoint (a run
    whose epochs a time budget planned keeps them: see :func:`_planned_epochs`)."""
    import yaml

    held = [n for n in RUN_RESULTS if (run / n).exists()]
    ckpt = run / "checkpoints" / "last.ckpt"
    if resume:
        if not (run / "config.yaml").is_file():
            raise TomosegError(f"--resume: {run} holds no run to resume (no config.yaml)")
        old = yaml.safe_load((run / "config.yaml").read_text()) or {}
        new = cfg.model_dump(mode="json")
        fields = TrainConfig.model_fields
        diff = [
            k
            for k in new
            if k not in ("epochs", "max_minutes", "workers", "device")
            and old.get(k) != new[k]
            # a setting added after the run was made, left at its default, changes nothing
            and not (k not in old and fields[k].default == cfg.model_dump()[k])
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
    if overwrite and ckpt.parent.is_dir():
        for f in ckpt.parent.glob("*.ckpt"):
            f.unlink()
    return None


def _start_over(ckpt: Path) -> str:
    return f"start over with --overwrite (this discards the run in {ckpt.parent.parent})"


def check_resume_checkpoint(ckpt: Path, module: L.LightningModule) -> None:
    """Refuse a checkpoint that cannot be resumed from, in one line naming it.

    Loads it without executing code (``weights_only``) and checks that it is a Lightning
    training checkpoint of this run's network (keys and shapes).

    Raises:
        TomosegError: truncated, damaged or tampered file, or weights of another network.
    """
    try:
        ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure: the file is bad
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise TomosegError(
            f"cannot resume: {ckpt} is truncated or damaged ({reason}); {_start_over(ckpt)}"
        ) from None
    need = ("state_dict", "epoch", "loops", "optimizer_states")
    if not isinstance(ck, dict) or any(k not in ck for k in need):
        raise TomosegError(
            f"cannot resume: {ckpt} is not a tomoseg training checkpoint; {_start_over(ckpt)}"
        )
    mine = module.state_dict()
    theirs = ck["state_dict"]
    bad = [
        k
        for k in mine
        if k not in theirs
        or not isinstance(theirs[k], torch.Tensor)
        or theirs[k].shape != mine[k].shape
    ]
    if bad or set(theirs) - set(mine):
        what = bad[0] if bad else sorted(set(theirs) - set(mine))[0]
        raise TomosegError(
            f"cannot resume: {ckpt} does not hold this run's network ({what}); {_start_over(ckpt)}"
        )


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
    warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
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
    """A Lightning Trainer on one device, plus ``kwargs`` (which may set ``logger``,
    ``enable_checkpointing`` and the rest; without them logging and checkpointing are off)."""
    opts: dict[str, Any] = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        # "warn": SegNet's max-unpooling has no certified-deterministic kernel (it is in
        # practice on CPU: each output gets at most one input), so warn instead of failing.
        "deterministic": "warn" if device.type == "cpu" else False,
    }
    opts.update(kwargs)
    return L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        **opts,
    )


def train(
    data: Path | str | DataSource,
    run: Path,
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    console=None,
    progress: bool = True,
) -> Path:
    """``tomoseg train``: train a network and leave a complete run folder.

    The run folder gets ``config.yaml``, ``run.json`` (model, classes, normalisation, class
    counts and weights over annotated pixels, ignore label, where validation came from),
    ``metrics.csv`` (Lightning logger :class:`RunCSVLogger`), ``curves.png``,
    ``best.safetensors``/``last.safetensors`` and ``checkpoints/`` (Lightning's
    ``ModelCheckpoint``: ``last.ckpt`` for ``--resume``, ``best-epoch=E.ckpt``).

    Args:
        data: dataset folder (``train``; ``val`` optional: without it ``cfg.val_fraction`` is
            held out), or a :class:`~tomoseg.data.sources.DataSource` (images + masks folders).
        run: run folder.
        cfg: validated configuration.
        resume: continue an interrupted run from ``checkpoints/last.ckpt``.
        overwrite: replace an existing run.
        console: rich console for per-epoch lines (None = silent).
        progress: show Lightning's progress bar.

    Returns:
        The run folder.

    Raises:
        TomosegError: bad data or options, a run folder in the way, a checkpoint that cannot be
            resumed from.
    """
    from tomoseg.inference.tta import parse_tta

    run = Path(run)
    quiet_lightning()
    parse_tta(cfg.tta)  # an unknown transform fails before anything is read
    device = resolve_device(cfg.device)
    ckpt = _check_run_folder(run, cfg, resume, overwrite)
    source = data if isinstance(data, DataSource) else DataSource.of(data)
    dm = SegDataModule(source, cfg)
    dm.setup("fit")  # what run.json records is known before fitting
    prep = dm.prepared
    assert prep is not None
    if cfg.loss == "dice_ce" and prep.has_ignored:
        raise TomosegError(DICE_IGNORE_MESSAGE)
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
        "data": source.describe(),
        "ignore_label": prep.ignore_label,
        "annotated_fraction": prep.annotated,
        "validation": prep.validation,
    }
    precision = resolve_precision(cfg.precision, device)
    meta["precision"] = precision
    if cfg.time_budget is not None:
        cfg, meta["time_budget"] = _budget_plan(run, cfg, dm, resume, device, precision, console)
        meta["config"] = cfg.model_dump(mode="json")
        write_text(run / "config.yaml", config_to_yaml(cfg))
    write_json(run / RUN_FILE, meta)
    if console is not None:
        w = ", ".join(f"{n} {v:.3g}" for n, v in zip(classes, prep.weights, strict=True))
        console.print(f"class weights ({cfg.class_weights}): {w}")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = SegModule(cfg.model_dump(mode="json"), classes, coi, prep.weights.tolist())
    module.bf16 = precision == "bf16-mixed"
    if ckpt is not None:
        check_resume_checkpoint(ckpt, module)
    best, last = checkpoint_callbacks(run, f"val_iou_{coi}")
    averaging: list[L.Callback] = []
    if cfg.ema_decay is not None:
        from lightning.pytorch.callbacks import EMAWeightAveraging

        # BatchNorm's running statistics are averaged with the weights (use_buffers=True), so
        # the averaged network is consistent without a re-estimation pass.
        averaging.append(EMAWeightAveraging(decay=cfg.ema_decay, use_buffers=True))
    with restored_determinism():
        trainer = make_trainer(
            device,
            precision,
            max_epochs=cfg.epochs,
            max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
            enable_progress_bar=progress,
            num_sanity_val_steps=0,
            check_val_every_n_epoch=cfg.val_every,
            logger=RunCSVLogger(run),
            enable_checkpointing=True,
            callbacks=[
                RunRecorder(run, console),
                *averaging,
                best,
                last,
                WeightsExport(run, meta, best),
            ],
        )
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True if ckpt else None)
    if cfg.tune_decision and (run / "best.safetensors").is_file():
        _tune(run, source, cfg, device, console)
    return run


def _tune(run: Path, source: DataSource, cfg: TrainConfig, device: torch.device, console) -> None:
    """Tune the decision and clean-up on the run's validation images with its best weights
    (``decision.json``, recorded in ``run.json``)."""
    from tomoseg.inference.tuning import tune_run

    decision, report = tune_run(run, source, split="val", tta=cfg.tta, device=device.type)
    if console is not None:
        b, a = report["before"], report["after"]
        console.print(
            f"decision tuned on {report['images']} validation images: offset "
            f"{decision.offset:+g}, min object {decision.min_size} px, max hole "
            f"{decision.max_hole} px (IoU {b['iou']:.3f} -> {a['iou']:.3f}, "
            f"BF1 {b['bf1']:.3f} -> {a['bf1']:.3f})"
        )


def _budget_plan(
    run: Path,
    cfg: TrainConfig,
    dm: SegDataModule,
    resume: bool,
    device: torch.device,
    precision: str,
    console,
) -> tuple[TrainConfig, dict]:
    """The epochs of a time-budgeted run: planned from a throughput probe, or on resume the
    plan recorded in ``run.json`` (so the schedule, and the weights, are those of the
    uninterrupted run)."""
    import json

    from tomoseg.inference.tta import parse_tta
    from tomoseg.training.budget import budget_record, plan_epochs, probe_throughput

    if resume and (run / RUN_FILE).is_file():
        old = json.loads((run / RUN_FILE).read_text()).get("time_budget")
        if old and old.get("plan", {}).get("epochs"):
            return cfg.model_copy(update={"epochs": int(old["plan"]["epochs"])}), old
    prep = dm.prepared
    assert prep is not None
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    scratch = SegModule(
        cfg.model_dump(mode="json"),
        prep.spec.classes,
        prep.spec.class_of_interest,
        prep.weights.tolist(),
    )
    scratch.bf16 = precision == "bf16-mixed"
    probe = probe_throughput(scratch, dm, device, scratch.bf16)
    del scratch
    passes = (len(parse_tta(cfg.tta)) + 1.0) if cfg.tune_decision else 0.0
    plan = plan_epochs(cfg.time_budget or 0.0, probe, val_every=cfg.val_every, tuning_passes=passes)
    if console is not None:
        console.print(
            f"time budget {cfg.time_budget:g} min: {probe.seconds_per_step:.3f} s per step, "
            f"{probe.steps_per_epoch} steps per epoch, validation {probe.validation_seconds:.1f} s "
            f"-> {plan['epochs']} epochs (~{plan['planned_minutes']:.1f} min planned)"
        )
    return cfg.model_copy(update={"epochs": plan["epochs"]}), budget_record(probe, plan)
