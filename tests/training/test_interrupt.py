"""A real ``tomoseg train`` process interrupted: Ctrl-C and SIGTERM say how far it got and exit
130 / 143, leaving a run that says it is incomplete; kill -9 during a checkpoint save loses
nothing; one writer per run folder; a copied run resumes from its own files; a sweep never
records a case stopped by SIGTERM as done. Each waits on events (run.json, files), never on
timings."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    EVENT_DEADLINE,
    TINY_TRAIN,
    make_dataset,
    mount_tmpfs,
    sigkill_when,
    wait_for,
)

from tomoseg.config.schema import load_config
from tomoseg.training.trainer import train

pytestmark = pytest.mark.slow  # each trains in processes of its own (~20-60 s)

#: long enough epochs (16 batches) that a signal sent after the first one lands mid-training
TINY = {**TINY_TRAIN, "crops": 64, "epochs": 3, "precision": "32"}


def _record(run: Path) -> dict:
    try:
        return json.loads((run / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _epochs_done(run: Path) -> int:
    return int(_record(run).get("epochs_done", 0))


def _train_cmd(data: Path, run: Path, cfg: Path) -> list[str]:
    base = [sys.executable, "-m", "tomoseg.cli", "train", "--data", str(data)]
    return [*base, "--out", str(run), "--config", str(cfg), "--quiet"]


@pytest.fixture
def setup(tmp_path) -> tuple[Path, Path]:
    data = make_dataset(tmp_path / "d", shape=(48, 56))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    return data, cfg


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_leaves_an_incomplete_run_that_resume_alone_finishes(
    setup, tmp_path, run_cli, sig, status
):
    data, cfg = setup
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _train_cmd(data, run, cfg), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wait_for(lambda: _epochs_done(run) >= 1, "epoch 1 recorded in run.json", proc=proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=EVENT_DEADLINE)
    errors = [ln for ln in err.decode().splitlines() if ln.startswith("error:")]
    assert proc.returncode == status and len(errors) == 1, err.decode()
    m = re.fullmatch(
        rf"error: interrupted after epoch (\d) of 3; resume with tomoseg train --resume {run}",
        errors[0],
    )
    assert m and 1 <= int(m.group(1)) < 3, errors[0]
    record = _record(run)
    assert record["complete"] is False and record["epochs_done"] == int(m.group(1))
    code, _, e = run_cli("predict", run, data / "test" / "images", "--out", tmp_path / "p")
    assert code == 1 and e.count("\n") == 1 and "is incomplete" in e, e
    code, _, e = run_cli("train", "--resume", run, "--quiet")  # nothing else retyped
    assert code == 0, e
    record = _record(run)
    assert record["complete"] is True and record["epochs_done"] == 3
    assert run_cli("predict", run, data / "test" / "images", "--out", tmp_path / "p")[0] == 0


#: ``tomoseg train`` whose checkpoint writes of the second epoch hang half-written once their
#: temporary file holds part of the checkpoint (the moment a kill or a full disk hits)
_HANGING_SAVE = """
import sys, time
from pathlib import Path
import torch
real = torch.save
def save(obj, f, *args, **kwargs):
    real(obj, f, *args, **kwargs)
    if isinstance(obj, dict) and obj.get("epoch") == 1:
        data = Path(f).read_bytes()
        Path(f).write_bytes(data[: len(data) // 2])
        Path(sys.argv[1]).write_text(str(f))
        time.sleep(3600)
torch.save = save
from tomoseg.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_kill_during_a_checkpoint_save_keeps_the_previous_one(setup, tmp_path):
    data, cfg = setup
    run, marker = tmp_path / "run", tmp_path / "saving"
    cmd = [sys.executable, "-c", _HANGING_SAVE, str(marker), *_train_cmd(data, run, cfg)[3:]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sigkill_when(proc, marker.exists, "a checkpoint save of epoch 2 half-written")
    tmp = Path(marker.read_text())
    assert tmp.parent == run / "checkpoints" and tmp.is_file()  # beside it, not in $TMPDIR
    assert tmp.name.startswith(".tmp-") and tmp.name.endswith(".ckpt") and len(tmp.name) <= 36
    ck = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["epoch"] == 0  # the first epoch's, whole
    train(None, run, None, resume=True)  # the data and config the run recorded
    assert not list(run.rglob(".tmp-*"))  # the half-written file is gone
    record = _record(run)
    assert record["complete"] is True and record["epochs_done"] == 3
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2


def test_two_trainings_into_one_folder_one_is_refused(setup, tmp_path):
    data, cfg = setup
    run = tmp_path / "run"
    first = subprocess.Popen(
        _train_cmd(data, run, cfg), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    lock = run / ".tomoseg.lock"
    wait_for(
        lambda: lock.is_file() and lock.read_text().startswith(f"{first.pid} "),
        "the first training holding the run folder",
        proc=first,
    )
    # paused, the first holds the folder however long the second takes to start (a tiny
    # training may otherwise end, and free the folder, before the second one looks)
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(_train_cmd(data, run, cfg), capture_output=True, text=True)
    finally:
        first.send_signal(signal.SIGINT)  # delivered when it goes on
        first.send_signal(signal.SIGCONT)
    errors = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
    assert second.returncode == 1 and len(errors) == 1, second.stderr
    assert f"is being written by process {first.pid} on " in errors[0], errors[0]
    first.communicate(timeout=EVENT_DEADLINE)
    # the first one was never disturbed by the second: interrupted by us, or (when the
    # pause came after its last epoch) finished
    assert (first.returncode, _record(run)["complete"]) in ((130, False), (0, True))


def test_a_copied_run_resumes_from_its_own_files(tmp_path):
    data = make_dataset(tmp_path / "d", shape=(48, 56))
    cfg = load_config(None, TINY)
    original, stop = tmp_path / "original", threading.Event()

    def stop_after_first(event):
        if event.kind == "advance" and event.done == 1:
            stop.set()

    with pytest.raises(Exception, match="train cancelled after 1/3 epochs"):
        train(data, original, cfg, progress=stop_after_first, cancel=stop)
    copy = Path(shutil.copytree(original, tmp_path / "copy"))
    (copy / "best.safetensors").unlink()  # as a kill between a checkpoint and its export
    for f in original.rglob("*.ckpt"):  # the original's checkpoints must not be read
        f.write_bytes(b"not the copy's")
    train(None, copy, None, resume=True)
    assert _record(copy)["complete"] is True and (copy / "best.safetensors").is_file()
    assert (original / "checkpoints" / "last.ckpt").read_bytes() == b"not the copy's"


def test_a_sweep_case_stopped_by_sigterm_is_not_done(tmp_path):
    from tomoseg.experiments import sweep as sw
    from tomoseg.experiments.cells import Case

    data = make_dataset(tmp_path / "d", shape=(48, 56))
    out = tmp_path / "sweep"
    cfg_file = tmp_path / "base.yaml"
    cfg_file.write_text(yaml.safe_dump({**TINY, "crops": 64}))
    case = Case(size=32, count=64, repeat=0, seed=0)
    lock = out / "cases" / case.id / "run" / ".tomoseg.lock"

    def stop_at_first_epoch(_case, event):
        if event.get("kind") == "advance" and event.get("done") == 1:
            os.kill(int(lock.read_text().split()[0]), signal.SIGTERM)  # the case's process

    env = dict(os.environ)
    assert sw.run_case(case, data, out, cfg_file, env, stop_at_first_epoch) is None
    assert not (out / "cases" / case.id / "case.json").exists()
    assert _record(out / "cases" / case.id / "run")["complete"] is False
    rec = sw.run_case(case, data, out, cfg_file, env)  # the rerun resumes it
    assert rec is not None and rec["status"] == "done" and rec["epochs"] == 3


def test_a_full_disk_during_training_keeps_the_last_checkpoint(setup, tmp_path, run_cli):
    """The run folder on a real file system that fills up after epoch 1 (the process is paused
    while a filler takes the free space): one ``error:`` line, epoch 1's checkpoint still
    loads, and once space is freed ``train --resume RUN`` alone finishes the run."""
    data, cfg = setup
    disk = tmp_path / "disk"
    disk.mkdir()
    why = mount_tmpfs(disk, "64m")
    if why:
        pytest.skip(why)
    try:
        run = disk / "run"
        proc = subprocess.Popen(
            _train_cmd(data, run, cfg), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_for(lambda: _epochs_done(run) >= 1, "epoch 1 recorded in run.json", proc=proc)
        proc.send_signal(signal.SIGSTOP)
        done = _epochs_done(run)
        before = (run / "checkpoints" / "last.ckpt").read_bytes()
        filler = disk / "filler"
        with open(filler, "wb") as f:  # take every free byte
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=EVENT_DEADLINE)
        text = err.decode()
        errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
        assert proc.returncode not in (0, None) and len(errors) == 1, text
        assert "Traceback" not in text and ("disk full" in errors[0] or "space" in errors[0])
        if _epochs_done(run) == done:  # the failed save left the previous checkpoint whole
            assert (run / "checkpoints" / "last.ckpt").read_bytes() == before
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["epoch"] >= done - 1
        filler.unlink()
        code, _, e = run_cli("train", "--resume", run, "--quiet")
        assert code == 0, e
        assert _record(run)["complete"] is True and _epochs_done(run) == 3
        assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
