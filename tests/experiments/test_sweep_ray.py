"""tomoseg sweep --backend ray: same results.csv as the local backend, resume after the driver
is killed, one-line errors (no Ray, unreachable address, resources the cluster lacks)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import make_dataset, wait_for

from tomoseg.config.schema import load_config
from tomoseg.experiments import sweep as sw

# lr 0.05 on whole images gives a non-trivial IoU after one epoch (crops of 16 do not)
BASE = {"width": 4, "depth": 3, "epochs": 1, "batch_size": 4, "tile_size": 64, "lr": 0.05}
BASE["precision"] = "32"
TIMING = ("train_seconds", "seconds_per_epoch")
GRID = ["--sizes", "16,full", "--counts", "8"]


def _case_processes(out) -> list[int]:
    """Process ids of the case processes of the sweep in ``out`` (Linux ``/proc``)."""
    pids = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (d / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "tomoseg.experiments.case" in cmd and str(out) in cmd:
            pids.append(int(d.name))
    return pids


def _table(out):
    rows = list(csv.DictReader((out / "results.csv").open()))
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def sweep_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    data = make_dataset(root / "d", shape=(48, 56))
    cfg_file = root / "base.yaml"
    cfg_file.write_text(yaml.safe_dump(BASE))
    return data, cfg_file


@pytest.fixture(scope="module")
def local_reference(sweep_data, tmp_path_factory):
    """The local backend's sweep, two cases at once with one thread each (as the Ray trials)."""
    data, cfg_file = sweep_data
    out = tmp_path_factory.mktemp("local") / "sw"
    mp = pytest.MonkeyPatch()
    mp.setattr(sw.os, "cpu_count", lambda: 2)  # --jobs 2 -> OMP_NUM_THREADS=1 per case
    try:
        sw.run_sweep(data, out, load_config(cfg_file), [16, 0], [8], 1, jobs=2)
    finally:
        mp.undo()
    return out


def test_backend_ray_without_ray_is_one_line(run_cli, sweep_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    data, cfg_file = sweep_data
    code, out, err = run_cli(
        "sweep", "--data", data, "--out", tmp_path / "sw", *GRID, "--config", cfg_file,
        "--backend", "ray",
    )  # fmt: skip
    assert code == 1 and err.strip() == (
        "error: --backend ray needs Ray, which is not installed: pip install 'tomoseg[cluster]'"
    )
    assert not (tmp_path / "sw").exists()


def test_bad_backend_options(run_cli, sweep_data, tmp_path):
    data, cfg_file = sweep_data
    args = ["sweep", "--data", data, "--out", tmp_path / "sw", *GRID, "--config", cfg_file]
    code, _, err = run_cli(*args, "--backend", "slurm")
    assert code == 1 and "--backend must be local or ray" in err
    code, _, err = run_cli(*args, "--address", "10.0.0.1:6379")
    assert code == 1 and "need --backend ray" in err


def test_unreachable_address_is_one_line_quickly(run_cli, sweep_data, tmp_path):
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, cfg_file = sweep_data
    t0 = time.time()
    code, out, err = run_cli(
        "sweep", "--data", data, "--out", tmp_path / "sw", *GRID, "--config", cfg_file,
        "--backend", "ray", "--address", f"127.0.0.1:{port}",
    )  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1
    # a refused connection fails at once: far below a hang, whatever the machine's load
    assert time.time() - t0 < 300
    assert lines[0].startswith(f"error: cannot reach the Ray cluster at 127.0.0.1:{port}")
    code, out, err = run_cli(
        "sweep", "--data", data, "--out", tmp_path / "sw", *GRID, "--config", cfg_file,
        "--backend", "ray", "--address", "no-port:x",
    )  # fmt: skip
    assert code == 1 and "--address no-port:x must be HOST:PORT" in err


@pytest.mark.slow
def test_ray_gives_the_local_results(sweep_data, local_reference, tmp_path):
    pytest.importorskip("ray")
    data, cfg_file = sweep_data
    out = tmp_path / "sw"
    recs = sw.run_sweep(data, out, load_config(cfg_file), [16, 0], [8], 1, backend="ray")
    assert [r["status"] for r in recs] == ["done", "done"]
    assert _table(out) == _table(local_reference)
    assert any(float(r["iou_fg"]) > 0 for r in _table(out))  # not a trivial all-background table
    assert len(list((out / "ray").glob("sweep-*/*/"))) == 2  # the trials' folders in the sweep


@pytest.mark.slow
def test_kill_driver_then_rerun_restores(sweep_data, local_reference, tmp_path):
    """SIGKILL the driver once a case is finished and the other is running; the same command
    restores the Tune experiment: the finished case is kept, the other reruns."""
    pytest.importorskip("ray")
    data, cfg_file = sweep_data
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "tomoseg.cli", "sweep", "--data", str(data), "--out", str(out)]
    # one trial at a time (2 CPUs each on a 2-CPU Ray): when the first case is finished the
    # other has just started, so the kill always interrupts it
    cmd += [*GRID, "--config", str(cfg_file), "--backend", "ray", "--cpus-per-case", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env
    )
    try:
        wait_for(lambda: bool(list(out.glob("cases/*/case.json"))), "a finished case", proc=proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the driver only
        proc.wait()
        # the running case's process dies with its Ray worker (fate-shared); Ray's agents that
        # the driver started outlive it: end them
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        wait_for(lambda: not _case_processes(out), "the case process to end with its driver")
    finished = {p.parent.name for p in out.glob("cases/*/case.json")}
    assert len(finished) == 1, finished
    first = out / "cases" / sorted(finished)[0] / "case.json"
    before = first.read_text()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-800:]
    assert "1 already finished" in res.stdout
    assert first.read_text() == before  # kept, not recomputed
    exps = list((out / "ray").glob("sweep-*"))
    assert len(exps) == 1 and len(list(exps[0].glob("*/"))) == 2  # restored, not a new one
    # (equality with the local backend is the other test's: here each trial has 2 threads, which
    # changes the floating-point sums, so only the states are compared)
    table = _table(out)
    assert [r["status"] for r in table] == ["done", "done"]
    assert [r["status"] for r in _table(local_reference)] == ["done", "done"]
    assert json.loads((out / "sweep.json").read_text())["grid"]["sizes"] == [16, 0]
