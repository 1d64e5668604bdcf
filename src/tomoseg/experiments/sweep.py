"""The crop sweep: one network per (crop size, crop count, repeat) case, then a table, heatmaps"""

from __future__ import annotations

import csv
import io as _io
import itertools
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from tomoseg.config.schema import TrainConfig
from tomoseg.data.crops import warn_crop_larger
from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.experiments.case import CANCEL_FILE, CANCELLED_EXIT, case_command
from tomoseg.experiments.cells import (
    SWEEP_FILE,
    SWEPT,
    Case,
    CellStats,
    cell_stats,
    plan_cases,
    size_label,
)
from tomoseg.experiments.estimate import SweepEstimate, estimate_sweep, train_shapes
from tomoseg.experiments.sweep_data import SweepData
from tomoseg.io.datasets import DatasetSpec, load_dataset
from tomoseg.io.jobs import check_same_job
from tomoseg.io.writers import write_json, write_text
from tomoseg.utils.files import load_json, loads_json
from tomoseg.utils.format import cell, first_line, plural
from tomoseg.utils.progress import (
    Cancelled,
    CancelToken,
    JobProgress,
    ProgressCallback,
    job_progress,
)


def base_config_dict(cfg: TrainConfig) -> dict:
    """The part of the config shared by every case (what must not change within a sweep)."""
    return {k: v for k, v in cfg.model_dump(mode="json").items() if k not in SWEPT}


# ----------------------------------------------------------------------------- running a case


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("error:")]
    return (errs or lines or ["crashed without a message"])[-1][:300]


#: a tiny launcher that makes the case's process die with the thread that started it
#: (Linux ``PR_SET_PDEATHSIG``), so killing a sweep's driver (or a Ray worker) leaves no
#: orphaned training behind to race with the rerun; elsewhere the command runs as is
_FATE_SHARE = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit('error: the sweep driver died')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _fate_shared(cmd: list[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return cmd
    import shutil

    exe = shutil.which(cmd[0]) or cmd[0]
    return [sys.executable, "-c", _FATE_SHARE, str(os.getpid()), exe, *cmd[1:]]


#: receives a case's progress lines in the driver: ``(case, {"kind", "done", "total",
#: "message"})`` (from the thread that runs the case)
CaseEvents = Callable[[Case, dict], None]


#: exit statuses of a case process that was stopped rather than failed: cancelled, or ended by
#: SIGTERM / SIGINT / SIGHUP (a scheduler's time limit, a closed terminal) outside training
STOPPED = (CANCELLED_EXIT, -signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP, 143, 130, 129)


def _trained(run: Path) -> bool:
    """Whether a case's run finished training (its ``run.json`` says ``complete``)."""
    from tomoseg.runtime.run_record import is_complete, read_run_record

    try:
        record = read_run_record(run)
    except TomosegError:
        return False
    return is_complete(record)


def run_case(
    case: Case,
    data: Path | SweepData,
    out: Path,
    cfg_file: Path,
    env: dict[str, str],
    on_event: CaseEvents | None = None,
) -> dict | None:
    """Run one case to completion in a process of its own (resuming its training if it was
    interrupted: :func:`tomoseg.experiments.case.train_and_evaluate`) and record it.

    The process's messages go to ``cases/<id>/case.log``; its progress lines to ``on_event``.
    A case process stops at its next training batch once ``<out>/cancel`` exists.

    Returns:
        The case record written to ``cases/<id>/case.json`` (``done`` or ``failed``), or None
        when the case was cancelled or stopped by a signal (SIGTERM) before its run was
        complete (nothing recorded: a rerun resumes it). A case is ``done`` only when its
        process succeeded and its run's ``run.json`` says ``complete``.
    """
    folder = out / "cases" / case.id
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    record: dict = {
        "id": case.id,
        "size": case.size,
        "count": case.count,
        "repeat": case.repeat,
        "seed": case.seed,
    }
    cmd = case_command(case, data, folder, cfg_file, out / CANCEL_FILE)
    step = "train"
    log = folder / "case.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            _fate_shared(cmd), env=env, stdout=subprocess.PIPE, stderr=err, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = loads_json(line, "a case's progress event")
            except TomosegError:  # a line that is not an event (a library's own output)
                continue
            if not isinstance(event, dict):
                continue
            if "step" in event:
                step = str(event["step"])
            elif on_event is not None:
                on_event(case, event)
        code = proc.wait()
    if code in STOPPED or (code == 0 and not _trained(folder / "run")):
        return None  # stopped (cancelled, SIGTERM): unrecorded, the rerun resumes it
    if code != 0:
        record.update(status="failed", error=f"{step}: " + _last_error_line(log.read_text()))
        write_json(folder / "case.json", record)
        return record
    try:
        metrics = load_json(folder / "eval" / "metrics.json")
        rows = list(csv.DictReader((folder / "run" / "metrics.csv").open()))
    except (OSError, TomosegError) as exc:
        record.update(status="failed", error=f"results unreadable: {exc}")
        write_json(folder / "case.json", record)
        return record
    train_s = sum(float(r["seconds"]) for r in rows)
    record.update(
        status="done",
        accuracy=metrics["mean"]["accuracy"],
        iou=metrics["mean"]["iou"],
        bf1=metrics["mean"]["bf1"],
        class_of_interest=metrics["class_of_interest"],
        epochs=len(rows),
        train_seconds=train_s,
        seconds_per_epoch=train_s / max(len(rows), 1),
        wall_seconds=time.time() - t0,
    )
    write_json(folder / "case.json", record)
    prune_case(folder)
    return record


def prune_case(folder: Path) -> list[Path]:
    """Delete what a finished case no longer needs: its training checkpoints (``.ckpt``, kept
    for resuming an unfinished case) and the weights its run does not deliver (``best`` or
    ``last``, by the run's ``weights`` setting). Kept: the delivered ``.safetensors``,
    ``run.json``, ``config.yaml``, ``decision.json``, ``metrics.csv``, ``curves.png`` and the
    evaluation: what ``evaluate``, ``predict`` and the sweep's report use.

    Returns:
        The files deleted.
    """
    from tomoseg.runtime.run_record import read_run_record

    run = Path(folder) / "run"
    record = read_run_record(run, missing_ok=True) or {}
    delivered = (record.get("config") or {}).get("weights", "last")
    gone = [*run.glob("checkpoints/*.ckpt"), *run.glob("hpc_ckpt_*.ckpt")]
    gone += [run / f"{w}.safetensors" for w in ("best", "last") if w != delivered]
    deleted = []
    for f in gone:
        if f.is_file():
            f.unlink()
            deleted.append(f)
    if (run / "checkpoints").is_dir() and not any((run / "checkpoints").iterdir()):
        (run / "checkpoints").rmdir()
    return deleted


def load_record(out: Path, case: Case) -> dict | None:
    """The finished record of a case, or None if it has not finished."""
    f = out / "cases" / case.id / "case.json"
    if not f.is_file():
        return None
    try:
        record = load_json(f)
    except (OSError, TomosegError):  # unfinished or damaged: the case runs again
        return None
    return record if isinstance(record, dict) else None


def job_envs(jobs: int) -> list[dict[str, str]]:
    """One environment per parallel slot: a share of the CPU cores, or one GPU each."""
    import torch

    envs = []
    gpus = torch.cuda.device_count()
    cores = os.cpu_count() or 1
    for j in range(jobs):
        env = dict(os.environ)
        threads = max(1, cores // jobs)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(j % gpus)
        envs.append(env)
    return envs


def clamp_jobs(jobs: int, warn: Callable[[str], None]) -> int:
    """Clamp ``jobs`` to the GPUs (if any) or CPU cores available, with a warning."""
    import torch

    if jobs < 1:
        raise TomosegError(f"jobs must be at least 1, got {jobs}")
    limit = torch.cuda.device_count() or os.cpu_count() or 1
    if jobs > limit:
        warn(
            f"warning: jobs={jobs} is more than the {limit} {'GPUs' if torch.cuda.device_count() else 'CPU cores'} here; using {limit}"
        )
        return limit
    return jobs


# ----------------------------------------------------------------------------- the sweep


def check_sweep_data(data: SweepData, cfg: TrainConfig) -> DatasetSpec:
    """The classes of a sweep's data, with what every case's training and evaluation would
    refuse refused once, before any case runs.

    A dataset folder: its ``dataset.json`` and the truths of its ``test`` split. Images/masks:
    the training labels read as ``train`` reads them
    (:func:`~tomoseg.data.sources.load_training_samples`: pairing, ignore label, instance
    labels, bit depths; the classes inferred from the masks or given) and the test truths as
    ``evaluate`` reads them (:func:`~tomoseg.inference.evaluate.check_truth`). Without a ``val``
    split each case holds out the config's ``val_fraction`` of the training images (its
    ``run.json`` says which), as ``train`` does.

    Raises:
        TomosegError: what ``train`` or ``evaluate`` would raise for the data.
    """
    from tomoseg.data.sources import load_training_samples
    from tomoseg.inference.evaluate import check_truth

    if data.test is None:
        spec = load_dataset(data.train.root)  # type: ignore[arg-type]
        ignore = spec.ignore_label
    else:
        loaded = load_training_samples(
            data.train, ignore_label=cfg.ignore_label, val_fraction=cfg.val_fraction,
            seed=cfg.seed, need_val=False,
        )  # fmt: skip
        spec, ignore = loaded.spec, loaded.ignore_label
    test, split = data.scored()
    check_truth(test, split, len(spec.classes), ignore)
    return spec


def prepare_sweep(
    out: Path,
    data: Path | SweepData,
    cfg: TrainConfig,
    sizes: list[int],
    counts: list[int],
    repeats: int,
) -> Path:
    """Create or reopen a sweep folder; refuse one made with another base config or data.

    Args:
        data: a dataset folder, or a :class:`~tomoseg.experiments.sweep_data.SweepData`
            (checked by :func:`check_sweep_data`).

    Returns:
        The path of the case config file (the base config, written once).
    """
    data = SweepData.of(data)
    spec = check_sweep_data(data, cfg)
    warn_crop_larger(sizes, train_shapes(data), name="sizes")
    base = base_config_dict(cfg)
    sweep_file = out / SWEEP_FILE
    old = check_same_job(  # the one "same job" check (train, sweep, segment-stack)
        out,
        SWEEP_FILE,
        {"base config": base, "dataset": data.identity()},
        what="a sweep",
        remedy="use another out folder",
        extract=lambda r: {
            "base config": r.get("base_config"),
            "dataset": r.get("source") or r.get("data"),
        },
    )
    if old is not None:
        grid = old["grid"]
        grid["sizes"] = list(dict.fromkeys([*grid["sizes"], *sizes]))
        grid["counts"] = list(dict.fromkeys([*grid["counts"], *counts]))
        grid["repeats"] = max(grid["repeats"], repeats)
    else:
        grid = {"sizes": sizes, "counts": counts, "repeats": repeats}
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "data": data.label,
        **({} if data.test is None else {"source": data.identity()}),
        "classes": spec.classes,
        "class_of_interest": spec.class_of_interest,
        "base_config": base,
        "epochs": cfg.epochs,
        "max_minutes": cfg.max_minutes,
        "seed": cfg.seed,
        "grid": grid,
    }
    write_json(sweep_file, record)
    cfg_file = out / "base_config.yaml"
    import yaml

    write_text(cfg_file, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return cfg_file


def new_sweep_folder(out: Path) -> Path:
    """``out``, or ``out-2``, ``out-3``... : the first that holds no sweep."""
    if not (out / SWEEP_FILE).exists():
        return out
    for i in itertools.count(2):
        cand = out.with_name(f"{out.name}-{i}")
        if not (cand / SWEEP_FILE).exists():
            return cand
    raise AssertionError("unreachable")


def run_sweep(
    data: Path | SweepData,
    out: Path,
    cfg: TrainConfig,
    sizes: list[int],
    counts: list[int],
    repeats: int = 1,
    jobs: int = 1,
    retry_failed: bool = False,
    *,
    backend: str = "local",
    address: str | None = None,
    cpus_per_case: int = 1,
    gpus_per_case: float = 0,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[dict]:
    """Run (or resume) a sweep and write ``results.csv``, heatmaps and ``report.html``.

    Each case runs :func:`tomoseg.experiments.case.train_and_evaluate` in a process of its own
    (:func:`run_case`); a finished case keeps only the weights it delivers (:func:`prune_case`).

    Args:
        data: a dataset folder (each case scored on its ``test`` split), or a
            :class:`~tomoseg.experiments.sweep_data.SweepData` (images/masks and the test
            images/masks each case is scored on: ``SweepData.of(source, test_images,
            test_masks)``).
        backend: ``local`` (``jobs`` case processes at once here) or ``ray`` (each case a
            Ray Tune trial with ``cpus_per_case`` / ``gpus_per_case``, on the cluster at
            ``address`` or a Ray started here; see :mod:`tomoseg.experiments.ray_backend`).
        progress: receives the sweep's :class:`~tomoseg.utils.progress.ProgressEvent` s (job
            ``sweep``, unit ``case``): ``total`` the grid's cases, ``done`` counting the cases
            finished before (a resumed sweep), an ETA for the whole sweep; one ``advance`` per
            finished or failed case (its record as ``metrics``), ``message`` events for the plan,
            each case's start and the running cases' epochs (local backend).
        cancel: a token (:class:`threading.Event`); once set, no further case starts and the
            running ones stop at their next training batch, unrecorded (their training resumes
            on the rerun); then :class:`~tomoseg.utils.progress.Cancelled` is raised.

    Returns:
        The case records of the whole grid (finished and failed).

    Raises:
        TomosegError: bad options, another sweep in ``out``, no test split or test images,
            data that ``train`` or ``evaluate`` would refuse (:func:`check_sweep_data`).
        Cancelled: ``cancel`` was set.

    Warns:
        TomosegWarning: crop sizes larger than the smallest training image side (those cases
            train on crops cut to the image; :func:`~tomoseg.data.crops.warn_crop_larger`).
    """
    if backend not in ("local", "ray"):
        raise TomosegError(f"backend must be local or ray, got {backend!r}")
    job = job_progress("sweep", "case", None, progress, cancel)
    data = SweepData.of(data).resolved()
    if backend == "ray":
        from tomoseg.runtime.ray_session import require_ray

        require_ray()  # before anything is written
    else:
        jobs = clamp_jobs(jobs, job.message)
    cfg_file = prepare_sweep(out, data, cfg, sizes, counts, repeats)
    grid = load_json(out / SWEEP_FILE)["grid"]
    cases = plan_cases(grid["sizes"], grid["counts"], grid["repeats"], cfg.seed)
    todo = []
    for c in cases:
        rec = load_record(out, c)
        if rec is None or (retry_failed and rec.get("status") == "failed"):
            todo.append(c)
        elif rec.get("status") == "done":
            prune_case(out / "cases" / c.id)  # a sweep killed between record and pruning
    job.set_total(len(cases), done=len(cases) - len(todo))
    (out / CANCEL_FILE).unlink(missing_ok=True)  # a cancelled sweep's request is spent
    job.start()

    def on_done(case: Case, rec: dict) -> None:
        if rec["status"] == "done":
            coi = rec["class_of_interest"]
            line = f"  done  {case.id}: IoU {coi} {rec['iou'][coi]:.3f}, BF1 {rec['bf1'][coi]:.3f} ({rec['wall_seconds']:.0f} s)"
        else:
            line = f"  FAILED {case.id}: {rec['error']}"
        write_outputs(out, cases)
        try:
            job.advance(1, line, **rec)
        except Cancelled:
            pass  # the loop stops the running cases, then raises

    if backend == "ray":
        from tomoseg.experiments.ray_backend import SweepTrials, run_cases_ray

        at = f"Ray at {address}" if address else "a local Ray"
        job.message(
            f"sweep: {plural(len(cases), 'case')}, {len(cases) - len(todo)} already finished, "
            f"{len(todo)} to run on {at} ({cpus_per_case} CPU, {gpus_per_case:g} GPU per case)"
        )
        trials = SweepTrials(
            cases, data, out, cfg_file, retry_failed, on_done, run_case, load_record
        )
        run_cases_ray(
            trials,
            address=address,
            cpus_per_case=cpus_per_case,
            gpus_per_case=gpus_per_case,
            cancel=cancel,
        )
    else:
        job.message(
            f"sweep: {plural(len(cases), 'case')}, {len(cases) - len(todo)} already finished, "
            f"{len(todo)} to run, {jobs} at a time"
        )
        _run_local(todo, data, out, cfg_file, jobs, job, on_done)
    records = write_outputs(out, cases)
    if job.cancelled:
        (out / CANCEL_FILE).unlink(missing_ok=True)
        job.check()  # raises Cancelled
    job.end(f"sweep finished: {out}")
    return records


def _run_local(
    todo: list[Case],
    data: SweepData,
    out: Path,
    cfg_file: Path,
    jobs: int,
    job: JobProgress,
    on_done: Callable[[Case, dict], None],
) -> None:
    """Run the cases ``jobs`` at a time, each in a process of its own; every callback runs in
    this thread. Once ``job`` is cancelled, no case starts and the running ones are told to
    stop (the sweep's cancel file)."""
    import queue as _queue

    envs = job_envs(jobs)
    free = list(range(jobs))
    running: dict[Future, tuple[Case, int]] = {}
    lines: _queue.Queue[tuple[Case, dict]] = _queue.Queue()
    pending = list(todo)
    stopping = False
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            if job.cancelled and not stopping:
                stopping = True
                pending.clear()
                write_text(out / CANCEL_FILE, "cancelled\n")  # running cases stop at a batch
            while pending and free:
                slot = free.pop()
                case = pending.pop(0)
                job.message(f"  start {case.id}")
                fut = pool.submit(
                    run_case, case, data, out, cfg_file, envs[slot], lambda c, e: lines.put((c, e))
                )
                running[fut] = (case, slot)
            finished, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
            while not lines.empty():
                case, event = lines.get()
                if event.get("kind") in ("advance", "message") and event.get("message"):
                    job.message(f"  {case.id}: {event['message']}")
            for fut in finished:
                case, slot = running.pop(fut)
                free.append(slot)
                rec = fut.result()
                if rec is None:
                    job.message(f"  cancelled {case.id} (its rerun resumes it)")
                else:
                    on_done(case, rec)


# ----------------------------------------------------------------------------- results


def collect(out: Path, cases: list[Case]) -> list[dict]:
    """Records of every case of the grid; unfinished ones as ``status: pending``."""
    recs = []
    for c in cases:
        rec = load_record(out, c) or {
            "id": c.id,
            "size": c.size,
            "count": c.count,
            "repeat": c.repeat,
            "seed": c.seed,
            "status": "pending",
        }
        recs.append(rec)
    return recs


def results_csv(records: list[dict], classes: list[str], coi: str) -> str:
    """``results.csv`` text: one row per case."""
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "size",
            "count",
            "repeat",
            "seed",
            "status",
            "accuracy",
            *[f"iou_{c}" for c in classes],
            f"bf1_{coi}",
            "epochs",
            "train_seconds",
            "seconds_per_epoch",
            "error",
        ]
    )
    for r in records:
        done = r["status"] == "done"

        w.writerow([
            size_label(r["size"]), r["count"], r["repeat"], r["seed"], r["status"],
            cell(r.get("accuracy")) if done else "",
            *[cell(r["iou"].get(c)) if done else "" for c in classes],
            cell(r["bf1"].get(coi)) if done else "",
            r.get("epochs", ""), cell(r.get("train_seconds", "")), cell(r.get("seconds_per_epoch", "")),
            r.get("error", ""),
        ])  # fmt: skip
    return buf.getvalue()


def plot_heatmap(
    stats: list[CellStats], sizes: list[int], counts: list[int], key: str, title: str, path: Path
) -> None:
    """Heatmap over size (rows) x count (columns), mean (± std) in each cell; failed/pending
    marked (drawn by :func:`tomoseg.reporting.figures.plot_heatmap`)."""
    from tomoseg.reporting.figures import plot_heatmap as draw

    mean = np.full((len(sizes), len(counts)), np.nan)
    std = np.full_like(mean, np.nan)
    missing = [["pending"] * len(counts) for _ in sizes]
    for c in stats:
        i, j = sizes.index(c.size), counts.index(c.count)
        mean[i, j], std[i, j] = getattr(c, f"{key}_mean"), getattr(c, f"{key}_std")
        missing[i][j] = "failed" if c.failed else "pending"
    draw(mean, std, missing, [size_label(s) for s in sizes], [str(n) for n in counts], title, path)


def write_outputs(out: Path, cases: list[Case]) -> list[dict]:
    """Rebuild ``results.csv``, the heatmaps and ``report.html`` from the case records."""
    from tomoseg.experiments.report import write_report

    meta = load_json(out / SWEEP_FILE)
    classes, coi = meta["classes"], meta["class_of_interest"]
    grid = meta["grid"]
    records = collect(out, cases)
    write_text(out / "results.csv", results_csv(records, classes, coi))
    stats = cell_stats(records, grid["sizes"], grid["counts"], coi)
    # optional products: a failing plot costs neither results.csv nor the other products
    for what, make in (
        ("heatmap_iou.png", lambda: plot_heatmap(
            stats, grid["sizes"], grid["counts"], "iou",
            f"IoU {coi} (test, mean over images)", out / "heatmap_iou.png",
        )),
        ("heatmap_bf1.png", lambda: plot_heatmap(
            stats, grid["sizes"], grid["counts"], "bf1",
            f"BF1 {coi} at 2 px (test)", out / "heatmap_bf1.png",
        )),
        ("report.html", lambda: write_report(out, meta, records, stats)),
    ):  # fmt: skip
        try:
            make()
        except Exception as exc:  # any plotting failure is reported, not raised
            warnings.warn(
                f"{what} was not written: {first_line(exc)}", TomosegWarning, stacklevel=2
            )
    return records


# ----------------------------------------------------------------------------- dry run


def estimate_seconds(
    data: Path | SweepData, cfg: TrainConfig, sizes: list[int], counts: list[int], repeats: int
) -> SweepEstimate:
    """The sweep's time estimate, in seconds, from a few timed steps (no training; see
    :mod:`tomoseg.experiments.estimate` for the model and :attr:`SweepEstimate.basis` for
    what it was based on)."""
    return estimate_sweep(data, cfg, sizes, counts, repeats)
