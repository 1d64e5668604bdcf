"""``tomoseg train``: the run folder, the Lightning Trainer, the entry point."""

from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch

from tomoseg._version import __version__
from tomoseg.config.schema import TrainConfig, config_to_yaml
from tomoseg.data.context import in_channels
from tomoseg.data.datamodule import SegDataModule
from tomoseg.data.sources import DataSource
from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.io.jobs import check_same_job
from tomoseg.io.locks import FolderLock
from tomoseg.io.writers import remove_stale_temporaries, write_text
from tomoseg.models.registry import get_architecture, network_hparams
from tomoseg.runtime.device import resolve_device, resolve_precision
from tomoseg.runtime.run_record import (
    RUN_FILE,
    read_run_record,
    update_run_record,
    write_run_record,
)
from tomoseg.training.checkpoint_io import RunCheckpointIO
from tomoseg.training.module import SegModule, compile_wanted, ema_decay_for
from tomoseg.training.parent import (
    check_fits,
    inherited,
    load_parent,
    parent_record,
    parent_source,
    start_from,
)
from tomoseg.training.recording import (
    EpochProgress,
    RunCSVLogger,
    RunRecorder,
    RunStatus,
    WeightsExport,
    checkpoint_callbacks,
)
from tomoseg.utils.format import plural
from tomoseg.utils.progress import (
    Cancelled,
    CancelToken,
    JobProgress,
    ProgressCallback,
    job_progress,
)

RUN_RESULTS = ("config.yaml", RUN_FILE, "metrics.csv", "last.safetensors")
#: settings a resumed run may change: how long and where, not what is trained (a run may
#: continue on other machines)
RESUMABLE_CHANGES = (
    "epochs",
    "max_minutes",
    "workers",
    "device",
    "devices",
    "num_nodes",
    "strategy",
)

# ----------------------------------------------------------------------------- entry point


def multi_process(cfg: TrainConfig) -> bool:
    """Whether the run trains on several processes (devices or nodes)."""
    return cfg.num_nodes > 1 or (cfg.devices not in (1, "1"))


def _check_run_folder(run: Path, cfg: TrainConfig, resume: bool, overwrite: bool) -> Path | None:
    """Refuse to clobber a run; on resume, check the config and return the checkpoint (a run
    whose epochs a time budget planned keeps them: see :func:`_planned_epochs`)."""
    held = [n for n in RUN_RESULTS if (run / n).exists()]
    ckpt = run / "checkpoints" / "last.ckpt"
    if resume:
        if not (run / "config.yaml").is_file():
            raise TomosegError(f"resume=True: {run} holds no run to resume (no config.yaml)")
        new = cfg.model_dump(mode="json")
        check_same_job(  # the one "same job" check (train, sweep, segment-stack)
            run,
            "config.yaml",
            {k: v for k, v in new.items() if k not in RESUMABLE_CHANGES},
            what="a run",
            remedy="resume only with the run's own config, or start over with overwrite=True",
            defaults=TrainConfig().model_dump(mode="json"),
        )
        return ckpt if ckpt.is_file() else None
    if held and not overwrite:
        raise TomosegError(
            f"run folder {run} already holds a run ({held[0]}); use resume=True to continue it or overwrite=True to replace it"
        )
    if overwrite and ckpt.parent.is_dir():
        for f in ckpt.parent.glob("*.ckpt"):
            f.unlink()
    return None


# ----------------------------------------------------------------------------- processes


def available_devices(device: torch.device) -> int:
    """Processes this machine can give a run: visible GPUs, or CPU cores."""
    return torch.cuda.device_count() if device.type == "cuda" else (os.cpu_count() or 1)


def check_devices(cfg: TrainConfig, device: torch.device) -> None:
    """Refuse more devices than this machine has, in one line."""
    have = available_devices(device)
    if isinstance(cfg.devices, int) and cfg.devices > have:
        what = plural(have, "GPU") if device.type == "cuda" else plural(have, "CPU core")
        raise TomosegError(
            f"devices={cfg.devices} is more than this machine has ({what}); "
            f"use devices={have} or fewer"
        )


def world_size(cfg: TrainConfig, device: torch.device) -> int:
    """Processes of the run: devices per node (``auto``: every GPU, 1 on CPU) x nodes."""
    per_node = cfg.devices if isinstance(cfg.devices, int) else 1
    if cfg.devices == "auto" and device.type == "cuda":
        per_node = max(torch.cuda.device_count(), 1)
    return per_node * cfg.num_nodes


def launched_externally() -> bool:
    """Whether a launcher started this process as one of several (``srun`` under Slurm,
    ``torchrun``, or Lightning's own launcher re-running the command for ranks > 0)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return (
        "LOCAL_RANK" in os.environ or TorchElasticEnvironment.detect() or SLURMEnvironment.detect()
    )


def slurm_restarts() -> int:
    """``SLURM_RESTART_COUNT``: how often Slurm requeued this job (0 outside Slurm)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


def is_rank_zero() -> bool:
    """Whether this process is the run's global rank 0 (always, outside a multi-process run)."""
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _strategy(cfg: TrainConfig, device: torch.device, spawn: bool) -> str:
    """Lightning's strategy name for the run (see :func:`train`'s ``spawn``)."""
    world = world_size(cfg, device)
    if world == 1 or launched_externally():
        return cfg.strategy
    if cfg.num_nodes > 1:
        raise TomosegError(
            f"num_nodes={cfg.num_nodes} needs a launcher that starts the processes on every "
            "node (srun under Slurm, or torchrun); see tomoseg cluster-script"
        )
    return "ddp_spawn" if spawn else cfg.strategy


def _start_over(ckpt: Path) -> str:
    return f"start over with overwrite=True (this discards the run in {ckpt.parent.parent})"


def check_resume_checkpoint(ckpt: Path, module: L.LightningModule) -> int:
    """Refuse a checkpoint that cannot be resumed from, in one line naming it.

    Loads it without executing code (``weights_only``) and checks that it is a Lightning
    training checkpoint of this run's network (keys and shapes).

    Returns:
        The epochs it finished.

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
    history = ck.get("tomoseg_history")
    return len(history) if isinstance(history, list) else int(ck["epoch"]) + 1


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
    # the monitored value is logged after the metric states were reduced: equal on every rank
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
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


def make_trainer(
    device: torch.device,
    precision: str,
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    **kwargs: Any,
) -> L.Trainer:
    """A Lightning Trainer on ``devices`` devices per node (one by default) of ``num_nodes``
    nodes, plus ``kwargs`` (which may set ``logger``, ``enable_checkpointing`` and the rest;
    without them logging and checkpointing are off)."""
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
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=precision,
        **opts,
    )


class Interrupted(Cancelled):
    """Training stopped by a signal (SIGTERM: what ``kill`` and Slurm's time limit send); the
    run is left as after a cancel (resumable). ``signum`` is the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def fit(
    trainer: L.Trainer, module: SegModule, dm: SegDataModule, ckpt: Path | None, job: JobProgress
) -> None:
    """``trainer.fit`` of a run (from ``ckpt`` when resuming, loaded as weights only), with
    Lightning's ways of ending the process turned into exceptions: SIGTERM, which Lightning
    turns into ``SystemExit(None)`` (status 0, no word), raises :class:`Interrupted`; a
    ``KeyboardInterrupt``, which Lightning turns into ``sys.exit(1)``, is raised again.

    Raises:
        Interrupted: SIGTERM during training.
        KeyboardInterrupt: as it came.
    """
    import signal

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    except SIGTERMException:
        total = "" if job.total is None else f"/{job.total}"
        raise Interrupted(
            f"train interrupted by SIGTERM after {len(module.history)}{total} "
            f"{'epoch' if (job.total or len(module.history)) == 1 else 'epochs'}; "
            "train with resume=True continues it",
            signal.SIGTERM,
        ) from None
    except SystemExit as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise


def _epochs_done(run: Path) -> int:
    """The finished epochs ``run.json`` records (0 where it records none)."""
    record = read_run_record(run, missing_ok=True) or {}
    try:
        return int(record.get("epochs_done", 0))
    except (TypeError, ValueError):
        return 0


def resume_inputs(
    run: Path,
    data: Path | str | DataSource | None = None,
    cfg: TrainConfig | None = None,
    resume: bool = True,
) -> tuple[Path | str | DataSource, TrainConfig]:
    """The data and configuration of the run in ``run`` for ``train(resume=True)``: ``data``
    and ``cfg`` where given, else the data recorded in its ``run.json`` (a dataset folder, or
    images and masks folders with the run's class names) and its ``config.yaml``.

    Raises:
        TomosegError: ``data`` or ``cfg`` missing without ``resume``; no run to resume.
    """
    from tomoseg.config.schema import load_config

    if not resume:
        missing = "data" if data is None else "cfg"
        raise TomosegError(f"{missing}: give it (only a resumed run reads it from its folder)")
    if cfg is None:
        if not (run / "config.yaml").is_file():
            raise TomosegError(f"resume=True: {run} holds no run to resume (no config.yaml)")
        cfg = load_config(run / "config.yaml")
    if data is None:
        record = read_run_record(run)
        assert record is not None
        data = DataSource.from_record(record.get("data"), record.get("classes"), where=run)
    return data, cfg


#: temporary names of earlier tomoseg versions: ``.NAME.XXXXXXXX.tmp.SUFFIX``
_FORMER_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^.]*)?$")


def remove_interrupted_writes(run: Path) -> list[Path]:
    """Remove what interrupted writes left in a run folder (call it holding its lock): the
    temporary files of ended processes (:func:`~tomoseg.io.writers.remove_stale_temporaries`)
    and those of the former naming (``.last.safetensors.XXXXXXXX.tmp.safetensors``), which
    name no process.

    Returns:
        The former-named files removed.
    """
    remove_stale_temporaries(run)
    gone = []
    for folder in (run, run / "checkpoints"):
        for f in folder.glob(".*.tmp*") if folder.is_dir() else ():
            if f.is_file() and _FORMER_TEMPORARY.match(f.name):
                f.unlink(missing_ok=True)
                gone.append(f)
    return gone


@contextlib.contextmanager
def run_folder_lock(run: Path, rank0: bool):
    """Hold the run folder's :class:`~tomoseg.io.locks.FolderLock` (rank 0: the one writer);
    a folder this call created and left empty (refused data) is removed again."""
    if not rank0:
        yield
        return
    created = not run.exists()
    try:
        with FolderLock(run, "run folder"):
            yield
    finally:
        if created:
            with contextlib.suppress(OSError):
                run.rmdir()  # only when empty


def train(
    data: Path | str | DataSource | None,
    run: Path,
    cfg: TrainConfig | None,
    resume: bool = False,
    overwrite: bool = False,
    spawn: bool = False,
    *,
    progress: ProgressCallback | JobProgress | bool | None = None,
    cancel: CancelToken | None = None,
) -> Path:
    """``tomoseg train``: train a network and leave a complete run folder.

    The run folder gets ``config.yaml``, ``run.json`` (model, classes, normalisation, class
    counts and weights over annotated pixels, ignore label, where validation came from),
    ``metrics.csv`` (Lightning logger :class:`RunCSVLogger`), ``curves.png``,
    ``best.safetensors``/``last.safetensors`` and ``checkpoints/`` (Lightning's
    ``ModelCheckpoint``: ``last.ckpt`` for ``--resume``, ``best-epoch=E.ckpt``). Every command
    loads the weights named by ``cfg.weights`` (``last``, the end of the schedule, by default)
    unless told otherwise, and the decision is tuned on them.

    Several processes (``cfg.devices`` x ``cfg.num_nodes`` > 1, Lightning's DDP): every process
    calls this function (started by ``srun``, ``torchrun``, or by Lightning re-running the
    command); each reads the data and trains on its share of every epoch's crops and of the
    validation images, whose metrics are reduced over all processes. Global rank 0 alone checks
    and writes the run folder. A job that Slurm requeued (``SLURM_RESTART_COUNT`` > 0) whose run
    folder already holds its run resumes it (``resume`` implied, ``overwrite`` ignored).

    The run folder is locked while this function writes it (:class:`~tomoseg.io.locks.FolderLock`:
    a second writer is refused naming the first), and temporary files an interrupted write left
    in it are removed first. ``run.json`` records ``complete: false`` and the finished epochs
    (``epochs_done``) while training, and ``complete: true`` once the run is finished (tuned
    included); every command that loads a run refuses an incomplete one unless told.
    Checkpoints are written atomically and loaded as weights only
    (:mod:`tomoseg.training.checkpoint_io`), their paths relative to the run folder.

    Args:
        data: dataset folder (``train``; ``val`` optional: without it ``cfg.val_fraction`` is
            held out), or a :class:`~tomoseg.data.sources.DataSource` (images + masks folders);
            None with ``resume``: the data recorded in the run's ``run.json``.
        run: run folder.
        cfg: validated configuration; None with ``resume``: the run's own ``config.yaml``.
        resume: continue an interrupted run from ``checkpoints/last.ckpt``.
        overwrite: replace an existing run.
        spawn: several processes on this machine without a launcher are started with
            Lightning's ``ddp_spawn`` (the Python API: re-running the caller's script, as the
            default ``ddp`` launcher does, would rerun whatever else the script does) rather
            than by re-running the command line (the CLI).
        progress: receives the run's :class:`~tomoseg.utils.progress.ProgressEvent` s (job
            ``train``, unit ``epoch``): one ``advance`` per finished epoch with the epoch's
            ``metrics.csv`` row as ``metrics`` and a one-line summary as ``message``; ``total``
            is the planned epochs, ``done`` counts the epochs a resumed run finished before;
            ``message`` events for the class weights, a time budget's plan and the tuned
            decision (also logged to the ``tomoseg`` logger). Rank 0 reports; none under
            ``spawn``. A bool (the former progress-bar switch) means no callback.
        cancel: a token (:class:`threading.Event`) checked after every training batch: once
            set, training stops at the next batch, leaving ``checkpoints/last.ckpt`` of the
            last finished epoch (the unfinished one is dropped), and
            :class:`~tomoseg.utils.progress.Cancelled` is raised; ``resume=True`` continues the
            run to the same result as an uninterrupted one. Not seen by processes ``spawn``
            starts.

    Returns:
        The run folder.

    Raises:
        TomosegError: bad data or options, more devices than there are, a run folder in the
            way, a checkpoint that cannot be resumed from.
        Cancelled: ``cancel`` was set (a :class:`~tomoseg.errors.TomosegError`).
        Interrupted: SIGTERM stopped the training (a :class:`Cancelled`; without it, Lightning
            would end the process with status 0 and no word).
    """
    from tomoseg.inference.tta import parse_tta

    run = Path(run)
    if data is None or cfg is None:
        data, cfg = resume_inputs(run, data, cfg, resume)
    if isinstance(progress, bool):  # the former progress-bar switch: no callback
        progress = None
    job = job_progress("train", "epoch", cfg.epochs, progress, cancel)
    job.check()  # cancelled before it started: nothing is written
    get_architecture(cfg.model)  # an unknown network fails before anything is written
    # a fine-tune: its parent is loaded (and never the run folder) before anything is touched
    parent = load_parent(cfg, run) if cfg.init is not None else None
    quiet_lightning()
    parse_tta(cfg.tta)  # an unknown transform fails before anything is read
    device = resolve_device(cfg.device)
    check_devices(cfg, device)
    strategy = _strategy(cfg, device, spawn)
    precision = resolve_precision(cfg.precision, device)
    hardware = {"devices": cfg.devices, "num_nodes": cfg.num_nodes, "strategy": strategy}
    # this process's rank, before anything is written (a Trainer is cheap to make)
    rank0 = make_trainer(device, precision, deterministic=None, **hardware).is_global_zero
    with run_folder_lock(run, rank0):
        if rank0:  # what a kill -9 or a full disk left half-written (nobody else writes now)
            remove_interrupted_writes(run)
        requeued = slurm_restarts() > 0 and not resume and (run / "config.yaml").is_file()
        if requeued:
            resume, overwrite = True, False
            if rank0:
                job.message(f"Slurm requeued this job: resuming the run in {run}")
        if overwrite:  # Lightning would resume from its requeue checkpoints (each rank looks)
            for f in run.glob("hpc_ckpt_*.ckpt"):
                f.unlink(missing_ok=True)
        if rank0:
            ckpt = _check_run_folder(run, cfg, resume, overwrite)
        else:  # rank 0 checks the run folder; the others only need the checkpoint
            last_ckpt = run / "checkpoints" / "last.ckpt"
            ckpt = last_ckpt if resume and last_ckpt.is_file() else None
        source = data if isinstance(data, DataSource) else DataSource.of(data)
        from_parent: dict[str, Any] = {}
        if parent is not None:
            source = parent_source(source, parent)
            from_parent = inherited(parent)  # normalisation (and a trained run's class weights)
        dm = SegDataModule(source, cfg, **from_parent)
        dm.setup("fit")  # what run.json records is known before fitting
        prep = dm.prepared
        assert prep is not None
        if parent is not None:
            check_fits(parent, cfg, prep)
        classes, coi = prep.spec.classes, prep.spec.class_of_interest
        meta = {
            "tomoseg_version": __version__,
            # 2k + 1 input channels with 2.5D context; a fixed-depth network's depth (registry)
            "model": network_hparams(
                cfg.model,
                in_channels(cfg.context),
                len(classes),
                cfg.width,
                cfg.depth,
                cfg.deep_supervision,
            ),
            "classes": classes,
            "class_of_interest": coi,
            "normalization": prep.norm.model_dump(),
            # the training images' dtypes and range: inference checks every image against it
            "intensity": prep.intensity.model_dump(),
            "class_counts": prep.counts.tolist(),
            "class_weights": prep.weights.tolist(),
            "config": cfg.model_dump(mode="json"),
            "data": source.describe(),
            "ignore_label": prep.ignore_label,
            "annotated_fraction": prep.annotated,
            "validation": prep.validation,
            "planes": prep.planes,
            "precision": precision,
            "complete": False,  # until the run is finished (is_complete, check_complete)
            "epochs_done": _epochs_done(run) if resume else 0,
        }
        if parent is not None:
            meta["parent"] = parent_record(parent)
        if cfg.time_budget is not None:
            if multi_process(cfg):
                raise TomosegError(
                    "time_budget plans the epochs from one process's throughput: with several "
                    "devices or nodes give epochs instead"
                )
            cfg, meta["time_budget"] = _budget_plan(run, cfg, dm, resume, device, precision)
            if rank0:
                job.message(_budget_text(cfg, meta["time_budget"]))
            meta["config"] = cfg.model_dump(mode="json")
        # torch.compile for the training steps (training/module.py: compile_wanted, train_forward)
        steps = cfg.epochs * math.ceil(cfg.crops / cfg.batch_size)
        compiled = cfg.crop_size > 0 and compile_wanted(cfg.compile, steps)
        meta["compiled"] = compiled
        ema_decay = ema_decay_for(cfg.ema_decay, steps)  # "auto" resolved by the run's length
        meta["ema_decay"] = ema_decay
        if rank0:
            run.mkdir(parents=True, exist_ok=True)
            write_text(run / "config.yaml", config_to_yaml(cfg))
            write_run_record(run, meta)
        if rank0:
            how = (
                "inferred from the masks' ids" if source.root is None and not source.classes else ""
            )
            job.message(
                f"classes: {', '.join(classes)} ({how or 'given'}; class of interest {coi})"
            )
            w = ", ".join(f"{n} {v:.3g}" for n, v in zip(classes, prep.weights, strict=True))
            job.message(f"class weights ({cfg.class_weights}): {w}")
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        module = SegModule(cfg.model_dump(mode="json"), classes, coi, prep.weights.tolist())
        module.bf16 = precision == "bf16-mixed"
        module.compile_steps = compiled
        # start from the parent's weights (a checkpoint resumed replaces them)
        if parent is not None:
            start_from(module.net, parent)
        if ckpt is not None:
            done = check_resume_checkpoint(ckpt, module)
            if rank0 and done != meta["epochs_done"]:
                meta["epochs_done"] = done
                update_run_record(run, epochs_done=done)
        best, last = checkpoint_callbacks(run, f"val_iou_{coi}")
        averaging: list[L.Callback] = []
        if ema_decay is not None:
            from tomoseg.training.averaging import WarmupEMA

            # Lightning's WeightAveraging with a warm-up of the decay (the average follows the
            # raw weights early); BatchNorm's running statistics are averaged with the weights,
            # so the averaged network is consistent without a re-estimation pass.
            averaging.append(WarmupEMA(ema_decay))
        with restored_determinism():
            trainer = make_trainer(
                device,
                precision,
                **hardware,
                # each process draws its own crops and validation images (EpochSampler, RankSplit)
                use_distributed_sampler=False,
                default_root_dir=run,  # Lightning's Slurm requeue checkpoint goes into the run
                max_epochs=cfg.epochs,
                max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
                enable_progress_bar=False,  # the caller renders the progress events
                num_sanity_val_steps=0,
                check_val_every_n_epoch=cfg.val_every,
                logger=RunCSVLogger(run),
                enable_checkpointing=True,
                plugins=[RunCheckpointIO()],  # atomic writes, weights-only loads
                callbacks=[
                    RunRecorder(run),
                    *averaging,
                    best,
                    last,
                    WeightsExport(run, meta, best),
                    RunStatus(run),  # epochs_done, once the epoch's files are written
                    EpochProgress(job),  # after the checkpoints: an epoch is reported once written
                ],
            )
            fit(trainer, module, dm, ckpt, job)
        if rank0:
            _report_convergence(run, coi, job)
        if rank0 and cfg.tune_decision and (run / f"{cfg.weights}.safetensors").is_file():
            job.check()  # training is complete; a resumed run only tunes
            _tune(run, source, cfg, device, job)  # rank 0 alone: it writes decision.json
        if rank0:
            update_run_record(run, complete=True)
            job.end(f"run written to {run}")
        return run


def _report_convergence(run: Path, coi: str, job: JobProgress) -> None:
    """Check that the validation IoU of ``coi`` reached a plateau (``convergence.py``): one
    line where it did, a :class:`TomosegWarning` where it still rose; recorded in ``run.json``
    as ``convergence``."""
    from tomoseg.training.convergence import convergence

    check = convergence(run / "metrics.csv", coi)
    if check is None:
        return
    update_run_record(run, convergence=check.record())
    if check.converged:
        job.message(check.text())
    else:
        import warnings

        warnings.warn(check.text(), TomosegWarning, stacklevel=2)


def _tune(
    run: Path, source: DataSource, cfg: TrainConfig, device: torch.device, job: JobProgress
) -> None:
    """Tune the decision and clean-up on the run's validation images with the weights it
    delivers (``cfg.weights``; ``decision.json``, recorded in ``run.json``)."""
    from tomoseg.inference.tuning import tune_run

    decision, report = tune_run(
        run,
        source,
        split="val",
        tta=cfg.tta,
        device=device.type,
        weights=cfg.weights,
        overwrite=True,  # the run's own decision, on its own data
        allow_incomplete=True,  # the run is complete once tuned
        lock=False,  # train holds the run folder's lock
    )
    b, a = report["before"], report["after"]
    job.message(
        f"decision tuned on {plural(report['images'], 'validation image')}: offset "
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
) -> tuple[TrainConfig, dict]:
    """The epochs of a time-budgeted run: planned from a throughput probe, or on resume the
    plan recorded in ``run.json`` (so the schedule, and the weights, are those of the
    uninterrupted run)."""
    from tomoseg.inference.tta import parse_tta
    from tomoseg.training.averaging import warmup_updates
    from tomoseg.training.budget import Probe, budget_record, plan_epochs, probe_throughput

    record = read_run_record(run, missing_ok=True) if resume else None
    if record is not None:
        old = record.get("time_budget")
        if old and old.get("plan", {}).get("epochs"):
            return cfg.model_copy(update={"epochs": int(old["plan"]["epochs"])}), old
    prep = dm.prepared
    assert prep is not None

    def scratch(compiled: bool) -> SegModule:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        module = SegModule(
            cfg.model_dump(mode="json"),
            prep.spec.classes,
            prep.spec.class_of_interest,
            prep.weights.tolist(),
        )
        module.bf16, module.compile_steps = precision == "bf16-mixed", compiled
        return module

    bf16 = precision == "bf16-mixed"
    probe = probe_throughput(scratch(False), dm, device, bf16)
    passes = (len(parse_tta(cfg.tta)) + 1.0) if cfg.tune_decision else 0.0
    kw = {"val_every": cfg.val_every, "tuning_passes": passes}

    def planned(probe: Probe) -> dict:
        plan = plan_epochs(cfg.time_budget or 0.0, probe, **kw)
        # while a weight average warms up, validation also scores the raw weights
        # (averaging.py): a run long enough to average plans for those passes
        decay = ema_decay_for(cfg.ema_decay, plan["epochs"] * probe.steps_per_epoch)
        if decay is None:
            return plan
        doubled = math.ceil(warmup_updates(decay) / probe.steps_per_epoch)
        return plan_epochs(cfg.time_budget or 0.0, probe, double_validation_epochs=doubled, **kw)

    plan = planned(probe)
    if compile_wanted(cfg.compile, plan["epochs"] * probe.steps_per_epoch):
        # the compiled steps' throughput (and the compile time) from a second, shorter probe
        module = scratch(True)
        fast = probe_throughput(module, dm, device, bf16, validate=False)
        if module.compile_steps:
            probe = replace(
                fast,
                validation_seconds=probe.validation_seconds,
                validation_images=probe.validation_images,
                seconds=probe.seconds + fast.seconds,
            )
            plan = planned(probe)
        else:  # compiling failed (warned): plan and train eager
            cfg = cfg.model_copy(update={"compile": "off"})
    return cfg.model_copy(update={"epochs": plan["epochs"]}), budget_record(probe, plan)


def _budget_text(cfg: TrainConfig, record: dict) -> str:
    """One line on a time budget's plan (from its ``run.json`` record)."""
    probe, plan = record.get("probe", {}), record.get("plan", {})
    try:
        return (
            f"time budget {cfg.time_budget:g} min: {probe['seconds_per_step']:.3f} s per step, "
            f"{plural(probe['steps_per_epoch'], 'step')} per epoch, validation "
            f"{probe['validation_seconds']:.1f} s -> {plural(plan['epochs'], 'epoch')} "
            f"(~{plan['planned_minutes']:.1f} min planned)"
        )
    except (KeyError, TypeError, ValueError):
        return f"time budget {cfg.time_budget:g} min: {plural(cfg.epochs, 'epoch')} planned"
