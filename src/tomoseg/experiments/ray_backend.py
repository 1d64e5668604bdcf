"""``tomoseg sweep --backend ray``: each case of the grid is one Ray Tune trial.

The trial runs exactly what the local backend runs for a case (:func:`sweep.run_case`: the
case's process, :func:`tomoseg.experiments.case.train_and_evaluate`, recorded in
``cases/<id>/case.json``),
so both backends give the same ``results.csv`` for the same seeds. Ray only places the trials on
the cluster's CPUs / GPUs (``tune.with_resources``) and keeps the experiment's state in
``<sweep>/ray/`` (``RunConfig(storage_path=...)``): after the driver is killed, the same command
restores the experiment (``Tuner.restore``): finished trials are kept, unfinished ones rerun
(their training resumes from its last checkpoint). A trial that crashes outright (not a case
that fails, which is recorded as the local backend records it) becomes a failed case record.

The sweep folder must be on a file system shared by every node of the cluster.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tomoseg.errors import TomosegError
from tomoseg.experiments.case import CANCEL_FILE
from tomoseg.experiments.cells import Case
from tomoseg.io.writers import write_json
from tomoseg.utils.progress import CancelToken

RAY_DIR = "ray"


def experiment_name(cases: list[Case]) -> str:
    """One Tune experiment per grid: the same grid restores it, an extended grid starts anew."""
    ids = ",".join(sorted(c.id for c in cases))
    return "sweep-" + hashlib.sha256(ids.encode()).hexdigest()[:12]


def _trial(
    config: dict,
    data: Any,
    out: str,
    cfg_file: str,
    threads: int,
    retry_failed: bool,
    run_case: Callable,
    load_record: Callable,
) -> None:
    """One Tune trial: a finished case reports its record, any other one runs (or resumes)."""
    from ray import tune

    case = Case(**config["case"])
    rec = load_record(Path(out), case)
    if rec is None or (retry_failed and rec.get("status") == "failed"):
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        rec = run_case(case, data, Path(out), Path(cfg_file), env)
    # a cancelled case (None) is not recorded; the sweep's rerun starts a new experiment
    tune.report({"status": "cancelled" if rec is None else rec["status"], "case": case.id})


def _crash_record(out: Path, case: Case, error: Any) -> dict:
    """Record a trial that crashed outright (no case.json) as a failed case."""
    first = (str(error).strip().splitlines() or ["trial crashed"])[-1][:300]
    rec = {**asdict(case), "id": case.id, "status": "failed", "error": f"ray trial: {first}"}
    write_json(out / "cases" / case.id / "case.json", rec)
    return rec


@dataclass(frozen=True)
class SweepTrials:
    """What every trial of a sweep needs from the driver.

    Attributes:
        cases: every case of the grid (finished ones only report their record).
        data, out, cfg_file: the dataset folder (or
            :class:`~tomoseg.experiments.sweep_data.SweepData`), the sweep folder and its
            resolved config file.
        retry_failed: run failed cases again.
        on_done: called in the driver with each finished or failed case's record.
        run_case, load_record: :func:`tomoseg.experiments.sweep.run_case` (what a trial runs,
            as the local backend does) and ``load_record`` (passed in: the sweep imports this
            module, not the other way round).
    """

    cases: list[Case]
    data: Any
    out: Path
    cfg_file: Path
    retry_failed: bool
    on_done: Callable[[Case, dict], None]
    run_case: Callable[[Case, Path, Path, Path, dict], dict]
    load_record: Callable[[Path, Case], dict | None]


def run_cases_ray(
    trials: SweepTrials,
    *,
    address: str | None = None,
    cpus_per_case: int = 1,
    gpus_per_case: float = 0,
    timeout: float = 30.0,
    num_cpus: int | None = None,
    cancel: CancelToken | None = None,
) -> None:
    """Run the grid's cases as Ray Tune trials (or restore the killed experiment of this grid).

    Args:
        trials: the cases and what runs and records them.
        address: Ray cluster (None: start Ray here with ``num_cpus`` CPUs, no dashboard).
        cpus_per_case, gpus_per_case: resources of one trial (its ``OMP_NUM_THREADS`` is the
            CPU count; Ray sets ``CUDA_VISIBLE_DEVICES`` to its GPUs).
        cancel: once set, the sweep's cancel file is written (the running cases stop at their
            next training batch, unrecorded; trials not yet started stop at once) and the Tune
            experiment is dropped, so that the rerun starts a new one (the finished cases keep
            their ``case.json``).

    Raises:
        TomosegError: Ray missing or unreachable, or resources no node of the cluster has.
    """
    from tomoseg.runtime.ray_session import ray_session

    if cpus_per_case < 1:
        raise TomosegError(f"cpus_per_case must be at least 1, got {cpus_per_case}")
    if gpus_per_case < 0:
        raise TomosegError(f"gpus_per_case must be 0 or more, got {gpus_per_case}")
    with ray_session(address, num_cpus, timeout) as ray:
        have = ray.cluster_resources()
        for key, need, flag in (
            ("CPU", cpus_per_case, "cpus_per_case"),
            ("GPU", gpus_per_case, "gpus_per_case"),
        ):
            if need and have.get(key, 0) < need:
                raise TomosegError(
                    f"{flag}={need:g} but the Ray cluster has {have.get(key, 0):g} {key}s; "
                    "every trial would wait forever"
                )
        _fit(trials, cpus_per_case, gpus_per_case, cancel)


def _fit(trials: SweepTrials, cpus: int, gpus: float, cancel: CancelToken | None = None) -> None:
    from ray import tune

    cases, out, retry_failed = trials.cases, trials.out, trials.retry_failed

    try:
        from ray.tune import RunConfig
    except ImportError:  # Ray < 2.41
        from ray.train import RunConfig  # type: ignore[no-redef]

    storage = (out / RAY_DIR).resolve()
    name = experiment_name(cases)
    path = storage / name
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            data=trials.data,
            out=str(out.resolve()),
            cfg_file=str(trials.cfg_file.resolve()),
            threads=max(int(cpus), 1),
            retry_failed=retry_failed,
            run_case=trials.run_case,
            load_record=trials.load_record,
        ),
        {"cpu": cpus, "gpu": gpus},
    )
    if not retry_failed and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(
            str(path),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    else:
        if path.exists():
            shutil.rmtree(path)
        tuner = tune.Tuner(
            trainable,
            param_space={"case": tune.grid_search([asdict(c) for c in cases])},
            tune_config=tune.TuneConfig(reuse_actors=False),
            run_config=RunConfig(
                name=name,
                storage_path=str(storage),
                verbose=0,
                log_to_file=False,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
    # the driver reports cases as their records appear (Tune callbacks would be pickled with
    # the experiment and restored without this process's console)
    seen: dict[str, int | None] = {c.id: _stamp(out, c) for c in cases}
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(1.0):
            if cancel is not None and cancel.is_set() and not (out / CANCEL_FILE).exists():
                write_json(out / CANCEL_FILE, {"cancelled": True})  # running cases stop
            _report_new(out, cases, seen, trials.on_done, trials.load_record)

    watcher = threading.Thread(target=poll, name="tomoseg-sweep-watch", daemon=True)
    watcher.start()
    try:
        results = tuner.fit()
    finally:
        stop.set()
        watcher.join()
    _report_new(out, cases, seen, trials.on_done, trials.load_record)
    if cancel is not None and cancel.is_set():
        shutil.rmtree(path, ignore_errors=True)  # unfinished trials would not rerun on restore
        return
    for r in results:
        if r.error is None:
            continue
        case = Case(**r.config["case"])
        if trials.load_record(out, case) is None:
            trials.on_done(case, _crash_record(out, case, r.error))


def _stamp(out: Path, case: Case) -> int | None:
    f = out / "cases" / case.id / "case.json"
    try:
        return f.stat().st_mtime_ns
    except OSError:
        return None


def _report_new(
    out: Path,
    cases: list[Case],
    seen: dict,
    on_done: Callable[[Case, dict], None],
    load_record: Callable,
) -> None:
    for c in cases:
        st = _stamp(out, c)
        if st is not None and st != seen.get(c.id):
            rec = load_record(out, c)
            if rec is not None:
                seen[c.id] = st
                on_done(c, rec)
