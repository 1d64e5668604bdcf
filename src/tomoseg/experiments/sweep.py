"""The crop sweep: one network per (crop size, crop count, repeat) case, then a table, heatmaps"""

from __future__ import annotations

import csv
import io as _io
import itertools
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from tomoseg.config.schema import TrainConfig
from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.experiments.cells import (
    FULL,
    SWEEP_FILE,
    SWEPT,
    Case,
    CellStats,
    cell_stats,
    plan_cases,
    size_label,
)
from tomoseg.io.datasets import load_dataset, split_pairs
from tomoseg.io.jobs import check_same_job
from tomoseg.io.writers import write_json, write_text
from tomoseg.utils.format import cell, first_line


def base_config_dict(cfg: TrainConfig) -> dict:
    """The part of the config shared by every case (what must not change within a sweep)."""
    return {k: v for k, v in cfg.model_dump(mode="json").items() if k not in SWEPT}


# ----------------------------------------------------------------------------- running a case


def case_commands(
    case: Case, data: Path, folder: Path, cfg_file: Path, resume: bool
) -> list[list[str]]:
    """The two ordinary commands that make a case: train (or resume), then evaluate."""
    exe = [sys.executable, "-m", "tomoseg.cli"]
    train = [
        *exe,
        "train",
        "--data",
        str(data),
        "--out",
        str(folder / "run"),
        "--config",
        str(cfg_file),
    ]
    train += [
        "--crop-size",
        str(case.size),
        "--crops",
        str(case.count),
        "--seed",
        str(case.seed),
        "--quiet",
    ]
    train.append("--resume" if resume else "--overwrite")
    evaluate = [
        *exe,
        "evaluate",
        str(folder / "run"),
        "--data",
        str(data),
        "--out",
        str(folder / "eval"),
        "--overwrite",
    ]
    return [train, evaluate]


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


def run_case(case: Case, data: Path, out: Path, cfg_file: Path, env: dict[str, str]) -> dict:
    """Run one case to completion (resuming its training if it was interrupted) and record it.

    Returns:
        The case record written to ``cases/<id>/case.json``.
    """
    folder = out / "cases" / case.id
    folder.mkdir(parents=True, exist_ok=True)
    resume = (folder / "run" / "checkpoints" / "last.ckpt").is_file()
    t0 = time.time()
    record: dict = {
        "id": case.id,
        "size": case.size,
        "count": case.count,
        "repeat": case.repeat,
        "seed": case.seed,
    }
    steps = zip(
        ("train", "evaluate"), case_commands(case, data, folder, cfg_file, resume), strict=False
    )
    for step, cmd in steps:
        proc = subprocess.run(_fate_shared(cmd), env=env, capture_output=True, text=True)
        write_text(folder / f"{step}.log", proc.stdout + proc.stderr)
        if proc.returncode != 0:
            record.update(
                status="failed", error=f"{step}: " + _last_error_line(proc.stderr or proc.stdout)
            )
            write_json(folder / "case.json", record)
            return record
    try:
        metrics = json.loads((folder / "eval" / "metrics.json").read_text())
        rows = list(csv.DictReader((folder / "run" / "metrics.csv").open()))
    except (OSError, json.JSONDecodeError) as exc:
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
    return record


def load_record(out: Path, case: Case) -> dict | None:
    """The finished record of a case, or None if it has not finished."""
    f = out / "cases" / case.id / "case.json"
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        return None


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
    """Clamp ``--jobs`` to the GPUs (if any) or CPU cores available, with a warning."""
    import torch

    if jobs < 1:
        raise TomosegError(f"--jobs must be at least 1, got {jobs}")
    limit = torch.cuda.device_count() or os.cpu_count() or 1
    if jobs > limit:
        warn(
            f"warning: --jobs {jobs} is more than the {limit} {'GPUs' if torch.cuda.device_count() else 'CPU cores'} here; using {limit}"
        )
        return limit
    return jobs


# ----------------------------------------------------------------------------- the sweep


def prepare_sweep(
    out: Path, data: Path, cfg: TrainConfig, sizes: list[int], counts: list[int], repeats: int
) -> Path:
    """Create or reopen a sweep folder; refuse one made with another base config or dataset.

    Returns:
        The path of the case config file (the base config, written once).
    """
    spec = load_dataset(data)
    split_pairs(data, "test")  # a sweep evaluates every case on the test split
    # no val split: each case holds out the base config's val_fraction of train (run.json)
    base = base_config_dict(cfg)
    sweep_file = out / SWEEP_FILE
    old = check_same_job(  # the one "same job" check (train, sweep, segment-stack)
        out,
        SWEEP_FILE,
        {"base config": base, "dataset": str(Path(data).resolve())},
        what="a sweep",
        remedy="use another --out or --new",
        extract=lambda r: {"base config": r.get("base_config"), "dataset": r.get("data")},
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
        "data": str(Path(data).resolve()),
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
    data: Path,
    out: Path,
    cfg: TrainConfig,
    sizes: list[int],
    counts: list[int],
    repeats: int = 1,
    jobs: int = 1,
    retry_failed: bool = False,
    console=None,
    backend: str = "local",
    address: str | None = None,
    cpus_per_case: int = 1,
    gpus_per_case: float = 0,
) -> list[dict]:
    """Run (or resume) a sweep and write ``results.csv``, heatmaps and ``report.html``.

    Args:
        backend: ``local`` (``jobs`` case subprocesses at once here) or ``ray`` (each case a
            Ray Tune trial with ``cpus_per_case`` / ``gpus_per_case``, on the cluster at
            ``address`` or a Ray started here; see :mod:`tomoseg.experiments.ray_backend`).

    Returns:
        The case records of the whole grid (finished and failed).
    """
    say = console.print if console is not None else (lambda *a, **k: None)
    if backend not in ("local", "ray"):
        raise TomosegError(f"--backend must be local or ray, got {backend!r}")
    if backend == "ray":
        from tomoseg.runtime.ray_session import require_ray

        require_ray()  # before anything is written
    else:
        jobs = clamp_jobs(jobs, say)
    cfg_file = prepare_sweep(out, data, cfg, sizes, counts, repeats)
    grid = json.loads((out / SWEEP_FILE).read_text())["grid"]
    cases = plan_cases(grid["sizes"], grid["counts"], grid["repeats"], cfg.seed)
    todo = []
    for c in cases:
        rec = load_record(out, c)
        if rec is None or (retry_failed and rec.get("status") == "failed"):
            todo.append(c)

    def on_done(case: Case, rec: dict) -> None:
        if rec["status"] == "done":
            coi = rec["class_of_interest"]
            say(
                f"  done  {case.id}: IoU {coi} {rec['iou'][coi]:.3f}, BF1 {rec['bf1'][coi]:.3f} ({rec['wall_seconds']:.0f} s)"
            )
        else:
            say(f"  FAILED {case.id}: {rec['error']}")
        write_outputs(out, cases)

    if backend == "ray":
        from tomoseg.experiments.ray_backend import run_cases_ray

        at = f"Ray at {address}" if address else "a local Ray"
        say(
            f"sweep: {len(cases)} cases, {len(cases) - len(todo)} already finished, {len(todo)} to run on {at} ({cpus_per_case} CPU, {gpus_per_case:g} GPU per case)"
        )
        run_cases_ray(
            cases,
            data,
            out,
            cfg_file,
            retry_failed,
            on_done,
            run_case,
            load_record,
            address,
            cpus_per_case,
            gpus_per_case,
        )
        return write_outputs(out, cases)
    say(
        f"sweep: {len(cases)} cases, {len(cases) - len(todo)} already finished, {len(todo)} to run, {jobs} at a time"
    )
    envs = job_envs(jobs)
    free = list(range(jobs))
    running: dict[Future, tuple[Case, int]] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        queue = list(todo)
        while queue or running:
            while queue and free:
                slot = free.pop()
                case = queue.pop(0)
                say(f"  start {case.id}")
                running[pool.submit(run_case, case, data, out, cfg_file, envs[slot])] = (case, slot)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                case, slot = running.pop(fut)
                free.append(slot)
                on_done(case, fut.result())
    records = write_outputs(out, cases)
    return records


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

    meta = json.loads((out / SWEEP_FILE).read_text())
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
    data: Path, cfg: TrainConfig, sizes: list[int], counts: list[int], repeats: int
) -> tuple[float, dict]:
    """Estimate the sweep's total time from a timing probe of its fastest and slowest case.

    The probe trains one short epoch (``tomoseg train`` in a temporary folder) at the smallest
    and at the largest crop size, measures seconds per crop and seconds of validation, and
    interpolates seconds per crop linearly in crop area for the sizes between.

    Returns:
        ``(total seconds, {case id: seconds})`` for one pass over ``--jobs 1``.
    """
    import tempfile

    from tomoseg.data.samples import load_split
    from tomoseg.training.trainer import train

    shapes = [s.image.shape for s in load_split(data, "train")]
    full_area = float(np.mean([h * w for h, w in shapes]))

    def area(s: int) -> float:
        return full_area if s == FULL else float(min(s * s, full_area))

    probe_sizes = sorted({min(sizes, key=area), max(sizes, key=area)}, key=area)
    per_crop, val_s = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for s in probe_sizes:
            n = max(2 * cfg.batch_size, 16)
            pcfg = cfg.model_copy(
                update={"crop_size": s, "crops": n, "epochs": 2, "max_minutes": None}
            )
            run = train(data, Path(tmp) / f"probe{s}", pcfg, progress=False)
            row = list(csv.DictReader((run / "metrics.csv").open()))[-1]
            per_crop[s] = float(row["train_seconds"]) / n
            val_s.append(float(row["seconds"]) - float(row["train_seconds"]))
    t_start = time.perf_counter()  # each case starts two processes (train, evaluate)
    subprocess.run(
        [sys.executable, "-c", "import tomoseg.training.trainer, tomoseg.inference.predictor"],
        check=False,
    )
    startup = 2 * (time.perf_counter() - t_start)
    a0, a1 = area(probe_sizes[0]), area(probe_sizes[-1])
    t0, t1 = per_crop[probe_sizes[0]], per_crop[probe_sizes[-1]]
    val = float(np.mean(val_s))
    plan = {}
    for c in plan_cases(sizes, counts, repeats, cfg.seed):
        a = area(c.size)
        t = t0 if a1 == a0 else t0 + (t1 - t0) * (a - a0) / (a1 - a0)
        plan[c.id] = startup + cfg.epochs * (c.count * t + val)
        if cfg.max_minutes:
            plan[c.id] = min(plan[c.id], cfg.max_minutes * 60)
    return float(sum(plan.values())), plan
